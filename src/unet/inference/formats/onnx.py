"""ONNX weights, with dynamic batch, height and width (the channels are the network's).

Exported with PyTorch's TorchScript-based ONNX exporter (``dynamo=False``): the newer
``torch.export``-based one needs ``onnxscript`` and symbolic shapes that express "188 + 16k",
which this net's centre crops do not need in the traced graph. The record (architecture,
post-processing) is stored as ONNX metadata under the key ``unet``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from unet.inference.formats.check import require_match, sizes_to_check
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import KEY

OPSET = 17  # ONNX opset of the exported graph (tested with ONNX Runtime 1.32)
INPUT, OUTPUT = "input", "output"
AXES = {0: "batch", 2: "height", 3: "width"}


def write_onnx(model: ProbabilityUNet, path: str | Path, record: dict) -> float:
    """Export ``model`` to ``path`` (opset :data:`OPSET`), check it against PyTorch with ONNX
    Runtime; returns the largest difference from PyTorch."""
    import onnx

    h, w = sizes_to_check(model)[-1]
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and the tracer's note on UNet.forward's
        # Python size check (not part of the graph)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, model.config.in_channels, h, w),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: AXES, OUTPUT: AXES},
        )
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = KEY, json.dumps(record)
    onnx.save(graph, str(path))
    session = onnx_session(str(path))
    return require_match("ONNX", lambda x: session.run(None, {INPUT: x})[0], model)


def onnx_session(source: str | bytes):
    """An ONNX Runtime CPU session for a file path or the file's bytes."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"]
    )


def session_record(session) -> dict:
    """The record stored in an ONNX model's metadata (``{}`` if there is none)."""
    stored = session.get_modelmeta().custom_metadata_map.get(KEY)
    return json.loads(stored) if stored else {}


def run_session(session, x: np.ndarray) -> np.ndarray:
    """The session's output for a float32 (B, C, H, W) array."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def onnx_weights(source: str | bytes) -> list[tuple[str, torch.Tensor]]:
    """The stored tensors (initializers: weights, batch-norm statistics) of an ONNX model
    file path or the file's bytes, named."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    return [
        (t.name, torch.from_numpy(numpy_helper.to_array(t).copy())) for t in graph.graph.initializer
    ]
