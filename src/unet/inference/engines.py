"""Inference engines: what runs the network on a batch of tiles (PyTorch, ONNX Runtime or
OpenVINO), behind one interface.

The tiler, the test-time augmentation and the post-processing call ``net(x)`` on tiles
(B, C, h, w) and read ``net.config``; :func:`engine_network` returns a network that answers
both, so nothing else changes with the engine:

    net = engine_network(load_network("last.ckpt"), "openvino")
    prob = predict_image(net, image, Tiler())

Measured on a 2-core AMD EPYC with ``avx512_bf16`` (torch 2.13, 2 threads), the 16-channel
``isbi_cpu`` net on one 508x508 tile: PyTorch fp32 182 ms, bf16 autocast 112 ms; ONNX Runtime
fp32 105 ms; OpenVINO fp32 109 ms, bf16 34 ms (probabilities then differ by up to 0.3).

Each non-PyTorch engine runs an ONNX graph of fixed shape, traced once per (network weights,
tile batch shape) and cached on disk under ``UNET_CACHE_DIR`` (default
``~/.cache/unet/engines``) as ``<sha256 of the weights>/<B>x<C>x<h>x<w>.onnx``: the last tile
of an axis can be smaller, and gets its own file. Fixed shapes let both runtimes plan memory
and kernels once. ``auto`` measures the engines on the first tile batch, keeps the fastest
whose probabilities equal PyTorch fp32 within :data:`TOLERANCE`, and remembers the choice in
``auto.json`` (keyed by CPU model, weights and tile shape).

Exported weights (``ckpt_path=model.zip|model.onnx``) run on the other engines where they
include ONNX weights: ONNX Runtime runs them as loaded, OpenVINO reads the same ONNX model,
and ``auto`` keeps the faster whose probabilities equal ONNX Runtime's. TorchScript alone
runs in PyTorch only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unet.errors import UserError
from unet.inference.formats.loading import ExportedNet, log_probabilities
from unet.inference.image import autocast_dtype, net_device
from unet.inference.machine import cpu_model
from unet.inference.precision import cpu_has_native_bf16
from unet.model.fingerprint import network_hash

ENGINES = ("torch", "onnxruntime", "openvino", "auto")
TOLERANCE = 1e-4  # largest difference in probability from PyTorch fp32 that ``auto`` accepts
# the package each engine needs, and the extra that installs it
PACKAGES = {"onnxruntime": ("onnxruntime", "export"), "openvino": ("openvino", "engines")}
OPENVINO_PRECISIONS = {None: "f32", torch.bfloat16: "bf16"}
# OpenVINO keeps its speed per FLOP on large tiles, where PyTorch's and ONNX Runtime's CPU
# convolutions lose theirs, and larger tiles of a valid net compute less context twice (a
# 2,048 x 2,048 image through the isbi_cpu net: 593 GFLOP in 508 tiles, 466 in 1,020
# tiles). Measured end to end on that image, 2-core AMD EPYC with avx512_bf16, OpenVINO
# fp32: 4.04 s in 508 tiles, 2.91 in 700, 3.03 in 1,020, 2.49 in 1,276, 3.64 in one tile of
# 2,236 (PyTorch: 5.4-5.8 s in 508-860 tiles; ONNX Runtime 4.1 s in 508, 5.1 in 1,276).
# Larger tiles also cost more to compile.
OPENVINO_MAX_TILE = 1276


class EngineError(UserError, ValueError):
    """An inference engine that cannot run here (unknown, not installed, wrong precision)."""


def cache_root() -> Path:
    """The engines' cache folder: ``UNET_CACHE_DIR``, else ``~/.cache/unet/engines``."""
    if folder := os.environ.get("UNET_CACHE_DIR"):
        return Path(folder)
    return Path.home() / ".cache" / "unet" / "engines"


def require_package(engine: str) -> None:
    """An EngineError in one line unless the package of ``engine`` imports."""
    if engine not in PACKAGES:
        return
    package, extra = PACKAGES[engine]
    try:
        importlib.import_module(package)
    except ImportError:
        raise EngineError(
            f"engine={engine}: the package {package} is not installed; install it with "
            f"pip install '.[{extra}]', or use engine=torch"
        ) from None


def check_engine(engine: str, precision: str | int, device: torch.device) -> None:
    """One-line EngineErrors for an engine or precision that cannot run on ``device``.

    bf16 is refused on a CPU without native bf16 arithmetic (``avx512_bf16`` or AMX): PyTorch
    would emulate it about 20x slower than fp32 (``unet.inference.precision``).
    """
    if engine not in ENGINES:
        raise EngineError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    dtype = autocast_dtype(precision)
    if engine != "torch" and device.type != "cpu":
        raise EngineError(
            f"engine={engine} runs on the CPU; the network is on {device}: use engine=torch "
            "there, or device=cpu"
        )
    if dtype is not None and device.type == "cpu" and not cpu_has_native_bf16():
        raise EngineError(
            f"precision={precision}: this CPU ({cpu_model()}) has no native bf16 "
            "(avx512_bf16 or AMX); emulated bf16 runs about 20x slower: use precision=32"
        )
    if dtype is not None and engine in ("onnxruntime", "auto"):
        raise EngineError(
            f"engine={engine} with precision={precision}: ONNX Runtime and the automatic "
            "choice run fp32 only; use precision=32, or engine=torch or engine=openvino for bf16"
        )
    require_package(engine if engine != "auto" else "onnxruntime")


def engine_tiler(tiler, engine: str, config, validated_tile: int | None):
    """``tiler`` (a :class:`Tiler` or the request's tiler settings) with a null tile size
    filled for ``engine`` and the network's ``config``: OpenVINO (or ``auto`` where
    OpenVINO is installed: it then wins on large tiles) on a ``valid`` net without
    instance norm gets the largest square tile within the memory budget up to
    :data:`OPENVINO_MAX_TILE`, one per batch unless the batch size is given (the stitched
    result of such a net does not depend on the tiles, and OpenVINO gains nothing from
    batches on a CPU). PyTorch, ONNX Runtime, instance-norm nets (each tile is normalised
    by its own statistics, so the result depends on the tile) and ``same`` nets (their
    tiled result agrees across tile sizes to about 1e-5, but the gain was measured on
    valid nets only) keep the tile the model was validated with. A given tile size is
    kept."""
    if tiler.tile_size is not None:
        return tiler
    exact = config.padding == "valid" and not getattr(config, "instance_norm", False)
    large = engine == "openvino" or (engine == "auto" and installed("openvino"))
    if large and exact:
        batch = 1 if tiler.batch_size is None else tiler.batch_size
        return replace(tiler, max_tile=OPENVINO_MAX_TILE, batch_size=batch)
    return replace(tiler, tile_size=validated_tile)


def engine_network(net: nn.Module, engine: str = "torch", precision: str | int = 32) -> nn.Module:
    """``net`` run by ``engine`` (``torch``: ``net`` itself, whose precision is the caller's
    autocast), after :func:`check_engine`. The network must be on its device already."""
    check_engine(engine, precision, net_device(net))
    if engine == "torch":
        return net
    if isinstance(net, ExportedNet):
        return exported_network(net, engine, autocast_dtype(precision))
    return EngineNet(net, engine, autocast_dtype(precision))


def exported_network(net: ExportedNet, engine: str, dtype: torch.dtype | None) -> nn.Module:
    """Exported weights on ``engine`` (not ``torch``): ONNX weights (an .onnx file, or a
    package's beside its TorchScript) run in ONNX Runtime as loaded, in OpenVINO (which
    reads ONNX), or as ``auto`` chooses; TorchScript alone runs in PyTorch only (a traced
    ScriptModule cannot be traced into ONNX again)."""
    if net.session is None and net.load_onnx is not None:
        net = net.load_onnx()
    if net.session is None:
        raise EngineError(
            f"engine={engine}: these exported weights are TorchScript only, which runs in "
            "PyTorch alone; use engine=torch, export ONNX weights (format=onnx, or a package "
            f"with onnx=true), or predict from the checkpoint with engine={engine}"
        )
    if engine == "onnxruntime":
        return net
    return ExportedEngineNet(net, engine, dtype)


def export_onnx(network: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Trace ``network`` for inputs of exactly ``shape`` (B, C, h, w) into the ONNX file
    ``path`` (written under another name first, so that no half file is ever cached)."""
    from unet.inference.formats.onnx import INPUT, OPSET, OUTPUT

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.onnx")
    # a bf16 prediction calls the engine inside autocast: traced there, the graph would be
    # bf16 (OpenVINO then refuses instance norm, and an fp32 run would reuse the file)
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        # the legacy exporter's deprecation notice, and the tracer's note on UNet.forward's
        # Python size check (not part of the graph)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            network,
            (torch.zeros(shape),),
            str(partial),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
        )
    os.replace(partial, path)


def onnx_runner(path: Path):
    """ONNX Runtime (CPU) on the ONNX file: float32 (B, C, h, w) -> (B, K, h', w')."""
    from unet.inference.formats.onnx import onnx_session, run_session

    session = onnx_session(str(path))
    return lambda x: run_session(session, x)


def openvino_runner(path: Path, dtype: torch.dtype | None, shape: tuple[int, ...]):
    """OpenVINO (CPU) on the ONNX file for inputs of ``shape`` (a graph of free size is
    fixed to it: OpenVINO plans fixed shapes once), at fp32 or bf16 inference precision;
    its compiled blobs are cached beside the file, so that the next process compiles
    faster."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    if model.is_dynamic():
        model.reshape(list(shape))
    compiled = core.compile_model(
        model,
        device_name="CPU",
        config={
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[dtype],
            "CACHE_DIR": str(path.parent / "openvino"),
        },
    )
    return lambda x: compiled(np.ascontiguousarray(x, dtype=np.float32))[0]


class EngineNet(nn.Module):
    """A network whose forward pass runs in ONNX Runtime or OpenVINO.

    ``forward`` maps tiles (B, C, h, w) to what ``network`` returns (B, K, h', w'), float32,
    on the input's device; ``config`` is the network's architecture record, so the tiler
    plans tiles as for the network itself. ``network`` stays a submodule: the tiler's memory
    budget reads the device of its parameters.

    Args:
        network: the PyTorch network (a ``UNet``, or an exported TorchScript model).
        engine: ``onnxruntime``, ``openvino`` or ``auto``.
        dtype: None (fp32) or ``torch.bfloat16`` (OpenVINO only).
        cache: the cache folder (default :func:`cache_root`).
    """

    def __init__(
        self,
        network: nn.Module,
        engine: str,
        dtype: torch.dtype | None = None,
        cache: Path | None = None,
    ):
        super().__init__()
        self.network, self.engine, self.dtype = network, engine, dtype
        self.config = network.config
        self.folder = Path(cache or cache_root()) / self.weights_key()
        self.runners: dict[tuple[int, ...], object] = {}
        self.chosen: str | None = None  # what ``auto`` chose

    reference = "torch"  # what ``auto`` compares the engines with

    def weights_key(self) -> str:
        """The name of this network's cache folder: the hash of its weights, and the
        version of the traced files (v2: traced with autocast off)."""
        return f"{network_hash(self.network)}-v2"

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """Class probabilities of a runner's output (B, K, h, w): a softmax of logits."""
        return probabilities(out)

    def output(self, out: np.ndarray) -> torch.Tensor:
        """What ``forward`` returns for a runner's output: the logits, float32."""
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def onnx_file(self, shape: tuple[int, ...]) -> Path:
        """The cached ONNX file for inputs of ``shape``, traced if it is not there yet."""
        path = self.folder / f"{'x'.join(map(str, shape))}.onnx"
        if not path.is_file():
            export_onnx(self.network, shape, path)
        return path

    def runner(self, engine: str, shape: tuple[int, ...]):
        """A callable running ``engine`` on float32 arrays of ``shape`` (built once)."""
        key = (engine, *shape)
        if key not in self.runners:
            if engine == "torch":
                self.runners[key] = lambda x: self.network(torch.from_numpy(x)).float().numpy()
            elif engine == "onnxruntime":
                self.runners[key] = onnx_runner(self.onnx_file(shape))
            else:
                self.runners[key] = openvino_runner(self.onnx_file(shape), self.dtype, shape)
        return self.runners[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        array = x.detach().float().cpu().numpy()
        engine = self.engine
        if engine == "auto":
            engine = self.chosen or choose_engine(self, array)
            self.chosen = engine
        return self.output(self.runner(engine, shape)(array)).to(x.device)


class ExportedEngineNet(EngineNet):
    """Exported ONNX weights (an :class:`ExportedNet` with an ONNX Runtime session) run by
    OpenVINO, or by the faster of ONNX Runtime and OpenVINO whose probabilities equal ONNX
    Runtime's (the weights' own runtime) within :data:`TOLERANCE` (``auto``). ``forward``
    returns log class probabilities, as ``ExportedNet`` does.

    The ONNX model is copied once into the cache folder, named by the SHA-256 of its bytes,
    and fixed to each tile batch shape as OpenVINO compiles it.
    """

    reference = "onnxruntime"

    def weights_key(self) -> str:
        source = self.network.source
        self.model = Path(source).read_bytes() if isinstance(source, str | Path) else source
        return f"onnx-{hashlib.sha256(self.model).hexdigest()}"

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)  # the exported graph ends with a softmax

    def output(self, out: np.ndarray) -> torch.Tensor:
        return log_probabilities(torch.from_numpy(np.asarray(out, dtype=np.float32)))

    def onnx_file(self, shape: tuple[int, ...]) -> Path:
        path = self.folder / "model.onnx"  # one file of free size for every tile shape
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"model.{os.getpid()}.partial.onnx")
            partial.write_bytes(self.model)
            os.replace(partial, path)
        return path

    def runner(self, engine: str, shape: tuple[int, ...]):
        if engine == "onnxruntime":  # the session the weights were loaded and checked in
            from unet.inference.formats.onnx import run_session

            return lambda x: run_session(self.network.session, x)
        return super().runner(engine, shape)


def installed(engine: str) -> bool:
    """Whether the package of ``engine`` imports (PyTorch always does)."""
    try:
        require_package(engine)
    except EngineError:
        return False
    return True


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of (B, K, h, w) logits."""
    return torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=1).numpy()


def measure(run, x: np.ndarray, repeats: int = 2) -> tuple[np.ndarray, float]:
    """(output, best seconds of ``repeats`` runs) of ``run(x)``, after one warm-up run."""
    out = run(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - start)
    return out, best


def choose_engine(net: EngineNet, x: np.ndarray) -> str:
    """The fastest installed engine whose probabilities for the tiles ``x`` equal those of
    ``net.reference`` (PyTorch fp32; ONNX Runtime for exported weights) within
    :data:`TOLERANCE`, measured on ``x`` once per (CPU model, weights, tile
    batch shape) and remembered in ``auto.json`` of the cache folder."""
    key = f"{cpu_model()} | {net.folder.name} | {'x'.join(map(str, x.shape))}"
    record = net.folder.parent / "auto.json"
    stored = read_choices(record)
    if key in stored and installed(stored[key]["engine"]):
        return stored[key]["engine"]
    reference, seconds = measure(net.runner(net.reference, x.shape), x)
    reference = net.probabilities(reference)
    timings, differences = {net.reference: seconds}, {net.reference: 0.0}
    for engine in ("onnxruntime", "openvino"):
        if engine != net.reference and installed(engine):
            out, timings[engine] = measure(net.runner(engine, x.shape), x)
            differences[engine] = float(np.abs(net.probabilities(out) - reference).max())
    exact = [e for e in timings if differences[e] <= TOLERANCE]
    chosen = min(exact, key=timings.get)
    shown = ", ".join(f"{e} {1000 * t:.0f} ms" for e, t in timings.items())
    print(f"engine=auto: {chosen} for tiles {'x'.join(map(str, x.shape))} ({shown})")
    stored[key] = {"engine": chosen, "seconds": timings, "max_difference": differences}
    write_choices(record, stored)
    return chosen


def read_choices(path: Path) -> dict:
    """The choices of ``auto`` stored in ``path`` ({} if none or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_choices(path: Path, choices: dict) -> None:
    """Store the choices of ``auto`` (written under another name first, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(choices, indent=1))
    os.replace(partial, path)
