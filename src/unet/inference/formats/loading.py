"""Exported weights back as a network for the tiler: ``predict.py ckpt_path=model.zip``.

A bioimage.io package (zip, or its ``rdf.yaml``), an ONNX file or a TorchScript file
written by :mod:`unet.export` loads as a :class:`unet.inference.checkpoint.TrainedModel` whose
``net`` is an :class:`ExportedNet`, so prediction runs it through the same
standardisation, tiler and test-time augmentation as a checkpoint: users check what they
ship. Its ``record`` (:mod:`unet.model.record`, from the export's record) is what prediction
defaults to, as for the checkpoint it was exported from.

Exported weights end with a softmax, while the tiler stitches logits and applies the
softmax itself. ``ExportedNet`` returns log-probabilities: they differ from the logits by a
per-pixel constant, which a softmax removes, and the tiler's stitching weights sum to 1,
so the stitched result is the same.

Every exported model is checked as it loads: its stored weights finite, and its output for
a probe input finite and of the size its architecture record says (an edited record's
padding would tile wrongly): :func:`verify_exported`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from unet.inference.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    TrainedModel,
    load_trained,
)
from unet.inference.formats.record import (
    KEY,
    config_from_record,
    postprocess_from_record,
    validation_from_record,
)
from unet.io.pixel_size import KEY as PIXEL_SIZE
from unet.io.pixel_size import from_record
from unet.model.fingerprint import nonfinite_weights, output_problem, probability_probe_mismatch
from unet.model.network import NetConfig

PACKAGE_FILES = ("rdf.yaml", "bioimageio.yaml")
UNSOUND = "the file is damaged -- export it again from a sound checkpoint"


def log_probabilities(prob: torch.Tensor) -> torch.Tensor:
    """log of class probabilities (B, K, H, W), float32."""
    # clamped: log(0) would be -inf, and -inf x a stitching weight of 0 is NaN
    return prob.float().clamp_min(torch.finfo(torch.float32).tiny).log()


class ExportedNet(nn.Module):
    """Exported weights (TorchScript module or ONNX Runtime session) as a network.

    ``forward`` maps standardised images (B, C, H, W) to log class probabilities
    (B, K, H', W'). ``config`` is the architecture the weights were exported from. ONNX
    Runtime runs on the CPU whatever the input's device. ``source`` is the ONNX model the
    session runs (its path or bytes), which other engines read (``unet.inference.engines``);
    ``load_onnx`` is set for a package's TorchScript weights where the package also holds
    ONNX weights: it loads those (checked as they load) for the other engines.
    """

    def __init__(
        self, config: NetConfig, module: nn.Module | None = None, session=None, source=None
    ):
        super().__init__()
        self.config, self.module, self.session, self.source = config, module, session, source
        self.load_onnx: Callable[[], ExportedNet] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.module is not None:
            prob = self.module(x)
        else:
            from unet.inference.formats.onnx import run_session

            prob = torch.from_numpy(run_session(self.session, x.detach().float().cpu().numpy()))
        return log_probabilities(prob).to(x.device)


def exported_kind(path: Path) -> str | None:
    """``package``, ``onnx`` or ``torchscript`` for an exported file; None otherwise."""
    if path.name in PACKAGE_FILES or (path.is_dir() and (path / PACKAGE_FILES[0]).is_file()):
        return "package"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n in PACKAGE_FILES for n in names):
            return "package"
        if any("/code/" in n for n in names):  # TorchScript archives hold their code
            return "torchscript"
    return None


def verify_exported(net: ExportedNet, weights: list, record: dict, path: Path) -> None:
    """Refuse exported ``weights`` (named tensors) that are not all finite, a network whose
    output for a probe input is not finite or not of its record's size, or one that does
    not reproduce the record's probe (exports written before probes have none); one line
    naming ``path`` and the cause."""
    if damaged := nonfinite_weights(weights, "stored weights"):
        raise CheckpointError(f"{path}: {damaged}; {UNSOUND}")
    if problem := output_problem(net):
        raise CheckpointError(f"{path}: {problem}; {UNSOUND}")
    probe = record.get("probe")
    if probe and (mismatch := probability_probe_mismatch(net, probe)):
        raise CheckpointError(
            f"{path}: the exported weights do not fit their record ({mismatch}); the file "
            "was edited or damaged: export it again"
        )


def trained_model(net: ExportedNet, record: dict, path: Path) -> TrainedModel:
    """The checked exported network as a TrainedModel with its record's settings."""
    return TrainedModel(
        net=net.eval(),
        config=net.config,
        postprocess=postprocess_from_record(record, path),
        chosen_on=dict(record.get("postprocess_chosen_on") or {}),
        path=path,
        record=validation_from_record(record, path),
        pixel_size=from_record(record.get(PIXEL_SIZE)),
    )


def load_onnx(source, path: Path) -> TrainedModel:
    """An ONNX model with the unet record and one (B, C, H, W) input, C = the recorded
    network's ``in_channels``."""
    from unet.inference.formats.onnx import onnx_session, onnx_weights, session_record

    try:
        session = onnx_session(source)
    except Exception as err:  # onnxruntime raises its own types for unreadable files
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: not a readable ONNX model ({first})") from None
    record = session_record(session)
    config = config_from_record(record, path)
    inputs = session.get_inputs()
    channels = config.in_channels
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != channels:
        shown = ", ".join(str(tuple(i.shape)).replace("'", "") for i in inputs)
        raise CheckpointError(
            f"{path}: expected an ONNX model with one input of shape (B, {channels}, H, W) "
            f"(its record's in_channels = {channels}), found input shape(s) {shown}"
        )
    net = ExportedNet(config, session=session, source=source)
    verify_exported(net, onnx_weights(source), record, path)
    return trained_model(net, record, path)


def inner_network(module: nn.Module) -> nn.Module:
    """The bare network inside any-size TorchScript weights
    (:mod:`unet.inference.formats.any_size`),
    probabilities out: the tiler places tiles of valid sizes itself, as for a checkpoint."""
    # the traced submodule ``net`` returns logits; ExportedNet expects probabilities
    return nn.Sequential(module.net, nn.Softmax(dim=1))


def load_torchscript(source, path: Path) -> TrainedModel:
    """A TorchScript file written by :mod:`unet.inference.formats.torchscript` (with its record)."""
    from unet.inference.formats.torchscript import read_torchscript

    try:
        module, record = read_torchscript(source)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: not a readable TorchScript model ({first})") from None
    weights = list(module.state_dict().items())
    if "any_size" in record:
        module = inner_network(module)
    net = ExportedNet(config_from_record(record, path), module=module)
    verify_exported(net, weights, record, path)
    return trained_model(net, record, path)


def package_description(path: Path):
    """The validated bioimage.io ``ModelDescr`` of a package; a CheckpointError naming the
    file and the first validation problem (not bioimageio.spec's report of all of them)."""
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    try:
        descr = load_description(path, perform_io_checks=True)
    except Exception as err:  # unreadable YAML, a broken zip: bioimageio.spec raises many types
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: not a readable bioimage.io package ({first})") from None
    if isinstance(descr, ModelDescr):
        return descr
    errors = descr.validation_summary.errors
    if errors:
        where = ".".join(map(str, errors[0].loc))
        first = f"{where}: {' '.join(str(errors[0].msg).split())}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    else:
        first, more = f"type {getattr(descr, 'type', '?')}, format {descr.format_version}", ""
    name = str(path) if path.name in PACKAGE_FILES else f"{path} (its rdf.yaml)"
    raise CheckpointError(
        f"{name}: not a valid "
        f"bioimage.io model 0.5 description: {first}{more}; expected a package written by "
        "src/export.py: export it again"
    )


def load_package(path: Path) -> TrainedModel:
    """A bioimage.io package: its TorchScript weights (ONNX if it has none; both where
    the other engines need them), validated with bioimageio.spec (file hashes included)."""
    descr = package_description(path)
    record = getattr(descr.config, KEY, None) or {}
    if descr.weights.torchscript is not None:
        data = descr.weights.torchscript.get_reader().read()
        trained = load_torchscript(io.BytesIO(data), path)
        onnx = descr.weights.onnx
        # for engine=onnxruntime|openvino|auto; any-size ONNX weights pad whole images and
        # cannot run tile by tile, so those packages stay on PyTorch
        if onnx is not None and "any_size" not in record:
            trained.net.load_onnx = lambda: load_onnx(onnx.get_reader().read(), path).net
    elif descr.weights.onnx is not None and "any_size" in record:
        raise CheckpointError(
            f"{path}: any-size ONNX weights cannot run tile by tile; expected TorchScript "
            "weights in the package (export it again)"
        )
    elif descr.weights.onnx is not None:
        trained = load_onnx(descr.weights.onnx.get_reader().read(), path)
    else:
        raise CheckpointError(f"{path}: expected TorchScript or ONNX weights, found neither")
    trained.postprocess = postprocess_from_record(record, path)
    trained.chosen_on = dict(record.get("postprocess_chosen_on") or {})
    trained.record = validation_from_record(record, path)
    trained.pixel_size = from_record(record.get(PIXEL_SIZE))
    return trained


def load_for_prediction(path: str | Path, trust: bool = False) -> TrainedModel:
    """A checkpoint, a bioimage.io package, an ONNX or a TorchScript file, for prediction,
    checked as it loads (``trust``: accept a checkpoint without a probe,
    :func:`unet.inference.checkpoint.load_trained`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path} does not exist")
    kind = exported_kind(path)
    if kind == "package":
        return load_package(path / PACKAGE_FILES[0] if path.is_dir() else path)
    if kind == "onnx":
        return load_onnx(str(path), path)
    if kind == "torchscript":
        return load_torchscript(str(path), path)
    return load_trained(path, trust=trust)
