"""Trained checkpoints without Lightning: the network and the settings stored beside it.

A checkpoint written by training (:class:`unet.training.module.SegmentationModule`) holds, besides
Lightning's own entries,

- ``state_dict``: the weights, under ``net.``;
- ``net_config``: the architecture (:class:`unet.model.network.NetConfig` as a dict);
- ``pixel_size``: the training data's pixel size (``unet.io.pixel_size``; None if unknown);
- ``postprocess``: the post-processing settings chosen on the validation split at the end
  of training (:class:`unet.inference.postprocess.PostProcessing` as a dict), with
  ``postprocess_chosen_on``: the split, the score it maximised, and that score;
- ``model_record``: how that validation predicted (:class:`unet.model.record.ModelRecord`
  as a dict: test-time augmentation, precision, standardisation, tiles, pixel size), the
  defaults of prediction, evaluation and export.

Everything loads with ``torch.load(weights_only=True)``: plain values and tensors only.
Imports torch and NumPy-level modules only (no Lightning, no torchmetrics), so that
prediction and export can use it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from unet.errors import UserError
from unet.inference.postprocess import PostProcessing, PostProcessingError
from unet.inference.shipped import names_hint
from unet.io.atomic import atomic_file
from unet.io.pixel_size import KEY as PIXEL_SIZE
from unet.io.pixel_size import PixelSize, from_record
from unet.model.fingerprint import DAMAGED, nonfinite_weights, output_problem, probe_mismatch
from unet.model.network import NetConfig, UNet
from unet.model.record import ModelRecord, ModelRecordError, stored_record


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the expected network."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def read_checkpoint(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's contents (tensors and plain values only: ``weights_only=True``)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path} is not a file{names_hint()}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for files that are not checkpoints
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a checkpoint dict, found {type(checkpoint).__name__}"
        )
    return checkpoint


@dataclass
class TrainedModel:
    """A trained network with what training stored beside it.

    Attributes:
        net: the network, in ``eval()`` mode, on the CPU (or ``map_location``).
        config: its architecture.
        postprocess: the settings chosen on the validation split, or None if the checkpoint
            has none (training stopped before its final validation, or an older checkpoint):
            then the plain defaults apply (:class:`PostProcessing`).
        chosen_on: how ``postprocess`` was chosen (split, score name and value).
        path: the checkpoint file.
        record: how the model was validated, or None for a checkpoint written before
            records were stored (:func:`unet.model.record.record_or_default`).
        pixel_size: the training data's pixel size, or None where unknown.
    """

    net: UNet
    config: NetConfig
    postprocess: PostProcessing | None = None
    chosen_on: dict = field(default_factory=dict)
    path: Path | None = None
    record: ModelRecord | None = None
    pixel_size: PixelSize | None = None


def net_config_of(checkpoint: dict, path: Path) -> NetConfig:
    """The architecture record of a checkpoint; an error if it has none or a broken one."""
    stored = checkpoint.get("net_config")
    if not isinstance(stored, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path}: expected a checkpoint written by unet's training (with 'net_config' and "
            "'state_dict'), found none"
        )
    return parse_net_config(stored, path)


def parse_net_config(stored: dict, path: Path) -> NetConfig:
    """``stored`` (an architecture record) as a NetConfig; a CheckpointError naming ``path``
    if its entries are unusable. Checkpoints and exported models share it."""
    try:
        return NetConfig.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its architecture record cannot be used: {err}") from None


def net_state(checkpoint: dict) -> dict:
    """The network's tensors of a checkpoint (``net.`` prefix removed)."""
    return {
        k.removeprefix("net."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("net.")
    }


UNPROBED = (
    "holds no probe (the logits training stores to tie the architecture record to the "
    "weights), so its record cannot be checked (padding valid/same changes no weight "
    "shape); use a checkpoint written by unet's training, or pass trust_checkpoint=true "
    "if you know its record is right"
)


def verified_net(checkpoint: dict, path: Path, trust: bool = False, label: str = "") -> UNet:
    """The network of ``checkpoint``, rebuilt and checked: every weight and batch-norm
    buffer finite, the stored probe reproduced (NaN counts as a mismatch) and the output
    for a probe input finite and of the recorded size. A checkpoint without a probe is
    refused unless ``trust``. Errors name ``label`` (default: the file) and the cause.

    Raises:
        CheckpointError: any of these fails.
    """
    where = label or str(path)
    config = net_config_of(checkpoint, path)
    state = net_state(checkpoint)
    named = ((f"net.{k}", v) for k, v in state.items())  # as the file names them
    if damaged := nonfinite_weights(named, "weights and batch-norm statistics"):
        raise CheckpointError(f"{where}: {damaged}; {DAMAGED}")
    net = UNet.from_config(config)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise CheckpointError(
            f"{where}: weights do not fit the network {config}: {' '.join(first)}"
        ) from None
    probe = checkpoint.get("net_probe")
    if not probe and not trust:
        raise CheckpointError(f"{where}: {UNPROBED}")
    if mismatch := probe_mismatch(net, probe):
        raise CheckpointError(
            f"{where}: its stored architecture {config} does not fit its weights ({mismatch}); "
            "the checkpoint was edited or damaged: use the one training wrote"
        )
    if problem := output_problem(net):
        raise CheckpointError(f"{where}: {problem}; {DAMAGED}")
    return net


def load_trained(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> TrainedModel:
    """Rebuild the trained U-Net of a checkpoint, with its stored settings, after checking
    it (:func:`verified_net`; ``trust``: accept a checkpoint without a probe)."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path, map_location)
    config = net_config_of(checkpoint, path)
    net = verified_net(checkpoint, path, trust)
    postprocess = None
    if checkpoint.get("postprocess") is not None:
        try:
            postprocess = PostProcessing.from_dict(checkpoint["postprocess"])
        except PostProcessingError as err:
            raise CheckpointError(f"{path}: stored post-processing settings: {err}") from None
    return TrainedModel(
        net=net.to(map_location).eval(),
        config=config,
        postprocess=postprocess,
        chosen_on=dict(checkpoint.get("postprocess_chosen_on") or {}),
        path=path,
        record=record_of(checkpoint, path),
        pixel_size=from_record(checkpoint.get(PIXEL_SIZE)),
    )


def record_of(checkpoint: dict, path: Path) -> ModelRecord | None:
    """The model record of a checkpoint (:func:`unet.model.record.stored_record`)."""
    chosen_on = checkpoint.get("postprocess_chosen_on") or {}
    try:
        return stored_record(checkpoint.get("model_record"), chosen_on, path)
    except ModelRecordError as err:
        raise CheckpointError(str(err)) from None


def load_network(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> UNet:
    """The trained U-Net of a checkpoint (in ``eval()`` mode), checked as in
    :func:`load_trained`."""
    return load_trained(ckpt_path, map_location, trust).net


def store_postprocessing(
    ckpt_path: str | Path, postprocess: PostProcessing, chosen_on: dict
) -> None:
    """Write validated post-processing settings into a checkpoint file, in place.

    The new file is written beside the old one and renamed over it, so an interruption
    leaves the old checkpoint whole.
    """
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    checkpoint["postprocess"] = postprocess.to_dict()
    checkpoint["postprocess_chosen_on"] = dict(chosen_on)
    with atomic_file(path, replace=True) as partial:
        torch.save(checkpoint, partial)


def store_validation(
    ckpt_path: str | Path,
    record: ModelRecord,
    postprocess: PostProcessing | None = None,
    chosen_on: dict | None = None,
) -> None:
    """Write the model record (and validated post-processing, if given) into a checkpoint
    file, in place and atomically (as :func:`store_postprocessing`)."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    checkpoint["model_record"] = record.to_dict()
    if postprocess is not None:
        checkpoint["postprocess"] = postprocess.to_dict()
        checkpoint["postprocess_chosen_on"] = dict(chosen_on or {})
    with atomic_file(path, replace=True) as partial:
        torch.save(checkpoint, partial)


HEAD = "head."  # the final 1x1 conv (unet.model.network.UNet.head): one output per class


def init_from_checkpoint(net: UNet, ckpt_path: str | Path) -> list[str]:
    """Start ``net`` from a trained model's weights (fine-tuning): all of them, or all but
    the head when the class counts differ. Returns the names of the tensors left as they
    were (the head's, or none).

    The checkpoint is checked first (:func:`verified_net`: finite weights, its probe).

    Raises:
        CheckpointError: a damaged checkpoint, or any other tensor is missing or has
            another shape (another depth, width, input channels, batch norm, ...); the
            message names the layers.
    """
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    stored = net_config_of(checkpoint, path)
    # without a probe the record's padding cannot be checked, but model.net, not the
    # record, decides the architecture here: only the weights must be sound
    verified_net(checkpoint, path, trust=True, label=f"model.init_from={path}")
    state = net_state(checkpoint)
    own = net.state_dict()
    skip = (
        [k for k in own if k.startswith(HEAD)]
        if stored.num_classes != net.config.num_classes
        else []
    )
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in model.net"
        for k, v in own.items()
        if k in state and k not in skip and state[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and k not in skip]
    extra = [k for k in state if k not in own]
    if mismatched or missing or extra:
        theirs, ours = stored.to_dict(), net.config.to_dict()
        differ = ", ".join(
            f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in ours if theirs[k] != ours[k]
        )
        layers = mismatched[:3] + [f"{k}: only in model.net" for k in missing[:2]]
        layers += [f"{k}: only in the checkpoint" for k in extra[:2]]
        raise CheckpointError(
            f"model.init_from={path}: its network does not fit model.net "
            f"({differ or 'same settings'}); layers that differ: {'; '.join(layers)}. "
            "Fine-tuning keeps the architecture and may change only the class count (the head)"
        )
    net.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return skip
