"""TorchScript weights: the format Fiji (deepImageJ), ilastik and QuPath run.

The network is traced (``torch.jit.trace``) at one valid, non-square size. Tracing records
the shapes as operations on the input's size, so the traced graph works at every valid
size; :mod:`unet.inference.formats.check` confirms that at three sizes. PyTorch marks TorchScript as
deprecated in favour of ``torch.export``, but the zoo's Java and C++ consumers load
TorchScript files only; the file is tested with the pinned torch (docs/export.md).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from unet.inference.formats.check import require_match, sizes_to_check
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import KEY

EXTRA_FILE = f"{KEY}.json"  # the record, inside the TorchScript archive


def trace(model: ProbabilityUNet) -> torch.jit.ScriptModule:
    """The traced model (probabilities out), at a valid non-square size."""
    h, w = sizes_to_check(model)[-1]
    with warnings.catch_warnings():
        # UNet.forward's input-size check (a Python int computation) is not part of the
        # graph; the tracer warns about it. The size rule is in the record instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        x = torch.zeros(1, model.config.in_channels, h, w)
        return torch.jit.trace(model, x, check_trace=False)


def write_torchscript(model: ProbabilityUNet, path: str | Path, record: dict) -> float:
    """Trace ``model``, check it against PyTorch, save it to ``path`` with ``record``;
    returns the largest difference from PyTorch."""
    traced = trace(model)
    difference = require_match("TorchScript", lambda x: traced(torch.from_numpy(x)).numpy(), model)
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(record)})
    return difference


def read_torchscript(
    source, map_location: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict]:
    """(module, record) of a TorchScript file or file-like object written here.

    The record is ``{}`` for a TorchScript file written elsewhere.
    """
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(source, map_location=map_location, _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")
