"""Check a composed config before any data is read or any object is built.

Hydra composes whatever it is given: ``trainer.max_epochs=abc`` becomes the string
``"abc"``, which fails (if at all) deep inside Lightning after the data has been loaded.
:func:`check_config` compares every setting a user is likely to change with what it must
be, and raises :class:`ConfigError` (a :class:`unet.errors.UserError`: one line, exit code
2) naming the key, the value found and what is expected. Keys a config does not have are
skipped, so one table serves training, evaluation and prediction.

:func:`build` instantiates one part of the config and turns a constructor's refusal (a
``ValueError``/``TypeError`` such as an unknown key, or Lightning's misconfiguration
error) into the same kind of one-line error naming the config key; anything else, such
as a failing import, propagates unchanged. It also resolves ``trainer.precision=auto`` (the
default of ``trainer=cpu`` and ``trainer=gpu``), which Lightning's Trainer refuses, into the
precision this machine trains in (:func:`unet.inference.precision.resolve_precision`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from unet.config.values import (
    boolean,
    device,
    devices,
    either,
    fraction_or_count,
    integer,
    list_of,
    mapping_of_ints,
    max_time,
    number,
    one_of,
    string,
)
from unet.data.readers import INPUT_AXES, NONFINITE_CHOICES
from unet.errors import UserError
from unet.inference.precision import resolve_precision


class ConfigError(UserError, ValueError):
    """A setting of the wrong type or out of range; the message names the key."""


LIGHTNING_PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
    "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16,
)  # fmt: skip


EXPORT_FORMATS = ("bioimageio", "onnx", "torchscript")


@dataclass(frozen=True)
class Setting:
    """A config key, the test its value must pass and, in words, what that means."""

    key: str
    ok: Callable[[Any], bool]
    expected: str
    nullable: bool = False


SETTINGS = [
    Setting("seed", integer(0), "a non-negative integer"),
    Setting("ckpt_path", string, '"last" or a checkpoint file path', nullable=True),
    Setting("train", boolean, "true or false"),
    Setting("validate", boolean, "true or false"),
    # the Lightning Trainer
    Setting("trainer.max_epochs", integer(-1), "an integer >= -1 (-1: no limit)", nullable=True),
    Setting("trainer.min_epochs", integer(0), "an integer >= 0", nullable=True),
    Setting("trainer.max_steps", integer(-1), "an integer >= -1 (-1: no limit)"),
    Setting("trainer.max_time", max_time, 'a duration "DD:HH:MM:SS"', nullable=True),
    Setting(
        "trainer.accelerator",
        one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
        "one of auto, cpu, gpu, cuda, mps, tpu",
    ),
    Setting("trainer.devices", devices, 'a device count >= 1, -1, "auto" or a list of ids'),
    Setting("trainer.num_nodes", integer(1), "an integer >= 1"),
    Setting(
        "trainer.precision",
        one_of(*LIGHTNING_PRECISIONS, "auto"),
        "one of auto, 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true",
    ),
    Setting("trainer.check_val_every_n_epoch", integer(1), "an integer >= 1", nullable=True),
    Setting("trainer.log_every_n_steps", integer(1), "an integer >= 1", nullable=True),
    Setting("trainer.gradient_clip_val", number(0), "a number >= 0", nullable=True),
    Setting("trainer.accumulate_grad_batches", integer(1), "an integer >= 1"),
    Setting(
        "trainer.limit_train_batches",
        fraction_or_count,
        "a count or a fraction in [0, 1]",
        nullable=True,
    ),
    Setting(
        "trainer.limit_val_batches",
        fraction_or_count,
        "a count or a fraction in [0, 1]",
        nullable=True,
    ),
    Setting("trainer.overfit_batches", fraction_or_count, "a count or a fraction in [0, 1]"),
    Setting("trainer.fast_dev_run", either(boolean, integer(0)), "true, false or a count"),
    Setting(
        "trainer.deterministic",
        either(boolean, one_of("warn")),
        'true, false or "warn"',
        nullable=True,
    ),
    Setting("trainer.enable_progress_bar", boolean, "true or false", nullable=True),
    Setting("trainer.enable_checkpointing", boolean, "true or false", nullable=True),
    Setting("trainer.detect_anomaly", boolean, "true or false"),
    # the data
    Setting("data.data_dir", string, "a folder path"),
    Setting("data.cache_dir", string, "a folder path (null: no cache)", nullable=True),
    Setting("data.tile_size", integer(1), "an integer tile side in pixels, e.g. 572"),
    Setting(
        "data.val_slices",
        either(integer(1), list_of(integer(0))),
        "a count >= 1 of final slices, or a list of slice indices",
    ),
    Setting(
        "data.val_frames",
        either(integer(1), list_of(string)),
        "a count >= 1 per sequence, or a list of frame ids like ['01/054']",
    ),
    Setting("data.sequences", list_of(string), 'a list of sequence names, e.g. ["01", "02"]'),
    Setting("data.samples_per_epoch", integer(1), "an integer >= 1"),
    Setting("data.batch_size", integer(1), "an integer >= 1"),
    Setting("data.num_workers", integer(0), "an integer >= 0"),
    Setting("data.w0", number(0), "a number >= 0 (paper: 10)"),
    Setting("data.sigma", number(1e-6), "a number > 0 (paper: 5)"),
    Setting("data.border_size", lambda v: integer(1)(v) and v % 2 == 1, "an odd integer >= 1"),
    Setting(
        "data.unannotated_margin", number(0), "a number >= 0 (null: no markers)", nullable=True
    ),
    Setting("data.crop", integer(1), "an integer >= 1", nullable=True),
    Setting("data.images", string, "a folder name or path"),
    Setting("data.masks", string, "a folder name or path"),
    Setting("data.mask_suffix", lambda v: isinstance(v, str), 'a string, e.g. "_mask" or ""'),
    Setting("data.val_images", string, "a folder name or path", nullable=True),
    Setting("data.val_masks", string, "a folder name or path", nullable=True),
    Setting(
        "data.val",
        either(number(0, 1, open_high=True), list_of(string)),
        "a fraction in (0, 1) or a list of image name stems",
    ),
    Setting("data.mask_type", one_of("semantic", "instance"), "semantic or instance"),
    Setting("data.num_classes", integer(2), "an integer >= 2"),
    Setting("data.in_channels", integer(1), "an integer >= 1 (1 gray, 3 RGB)"),
    Setting(
        "data.value_map",
        mapping_of_ints,
        "a map of mask values to classes, e.g. {0: 0, 255: 1}",
        nullable=True,
    ),
    Setting("data.unlabelled", integer(), "an integer mask value", nullable=True),
    Setting("data.summary", boolean, "true or false"),
    Setting("data.seed", integer(0), "a non-negative integer"),
    Setting("data.nonfinite", one_of(*NONFINITE_CHOICES), "refuse, median or zero"),
    Setting("data.augmentation.elastic_std", number(0), "a number >= 0 (paper: 10 px)"),
    Setting("data.augmentation.elastic_grid", integer(2), "an integer >= 2 (paper: 3)"),
    Setting("data.augmentation.rotation", number(0, 180), "an angle in [0, 180] degrees"),
    Setting("data.augmentation.flip", boolean, "true or false"),
    Setting("data.augmentation.shift", number(0), "a number >= 0"),
    Setting("data.augmentation.brightness", number(0), "a number >= 0"),
    Setting("data.augmentation.contrast", number(0, 1, open_high=True), "a number in [0, 1)"),
    Setting("data.augmentation.gamma", number(0, 1, open_high=True), "a number in [0, 1)"),
    # the model
    Setting("model.net.in_channels", integer(1), "an integer >= 1"),
    Setting("model.net.num_classes", integer(2), "an integer >= 2"),
    Setting("model.net.depth", integer(1), "an integer >= 1 (paper: 4)"),
    Setting("model.net.base_channels", integer(1), "an integer >= 1 (paper: 64)"),
    Setting("model.net.padding", one_of("valid", "same"), "valid or same"),
    Setting("model.net.dropout", number(0, 1, open_high=True), "a number in [0, 1)"),
    Setting("model.net.batch_norm", boolean, "true or false"),
    Setting("model.net.instance_norm", boolean, "true or false"),
    Setting("model.net.up_mode", one_of("transpose", "bilinear"), "transpose or bilinear"),
    Setting("model.init_from", string, "a checkpoint file path", nullable=True),
    Setting("model.freeze_encoder_epochs", integer(0), "an integer >= 0 (0: none)"),
    Setting("model.channels_last", either(boolean, one_of("auto")), "true, false or auto"),
    Setting("model.optimizer.lr", number(0), "a number >= 0, e.g. 0.001"),
    Setting("model.optimizer.momentum", number(0, 1), "a number in [0, 1]"),
    Setting("model.optimizer.weight_decay", number(0), "a number >= 0"),
    Setting("model.scheduler_interval", one_of("epoch", "step"), "epoch or step"),
    Setting("model.scheduler.T_max", integer(1), "an integer >= 1"),
    Setting("model.scheduler.eta_min", number(0), "a number >= 0"),
    Setting("callbacks.early_stopping.patience", integer(0), "an integer >= 0"),
    Setting("callbacks.validation_images.every_n_epochs", integer(1), "an integer >= 1"),
    Setting("callbacks.precise_bn.tiles", integer(0), "an integer >= 0 (0: off)"),
    Setting(
        "callbacks.last_checkpoint.every_n_train_steps",
        integer(1),
        "an integer >= 1, or null (not by steps)",
        nullable=True,
    ),
    Setting(
        "callbacks.last_checkpoint.every_minutes",
        lambda v: number(0)(v) and v > 0,
        "a number of minutes > 0, or null (not by time)",
        nullable=True,
    ),
    Setting(
        "callbacks.epoch_log.console", one_of("auto", "always", "never"), "auto, always or never"
    ),
    # prediction and evaluation
    Setting("input", string, "an image, a TIFF stack or a folder of frames"),
    Setting("output", string, "a path (predict: a folder; export: a .zip, .onnx or .pt file)"),
    Setting("overwrite", boolean, "true or false"),
    Setting("device", device, "auto, cpu, cuda or cuda:<n>"),
    # null (predict, eval): what the model was validated with (unet.model.record)
    Setting(
        "precision",
        one_of(32, "32", "32-true", "bf16", "bf16-mixed", "bf16-true"),
        "32 or bf16",
        nullable=True,
    ),
    Setting("tta", one_of("none", "flips8", "paper7"), "none, flips8 or paper7", nullable=True),
    # what runs the network on the tiles (unet.inference.engines)
    Setting(
        "engine",
        one_of("torch", "onnxruntime", "openvino", "auto"),
        "torch, onnxruntime, openvino or auto",
    ),
    Setting("postprocess.threshold", number(0, 1), "a number in (0, 1)", nullable=True),
    Setting("postprocess.min_area", integer(0), "an integer >= 0", nullable=True),
    Setting("postprocess.fill_holes", boolean, "true or false", nullable=True),
    Setting(
        "postprocess.regrow",
        one_of("none", "probability", "distance"),
        "none, probability or distance",
        nullable=True,
    ),
    Setting("postprocess.grow_threshold", number(0, 1), "a number in [0, 1]", nullable=True),
    Setting("postprocess.border_min_area", integer(0), "an integer >= 0", nullable=True),
    Setting("choose", boolean, "true or false"),
    Setting("choose_postprocess", boolean, "true or false"),
    Setting("labels", boolean, "true or false"),
    Setting("instance_class", integer(1), "a foreground class index >= 1", nullable=True),
    Setting("challenge_naming", boolean, "true or false"),
    Setting("overlays", boolean, "true or false"),
    Setting("measurements", boolean, "true or false"),
    Setting("rois", boolean, "true or false"),
    Setting(
        "pixel_size",
        lambda v: list_of(number(1e-12))(v) and len(v) == 2,
        "null or [y, x] in micrometers, e.g. [0.5, 0.5]",
        nullable=True,
    ),
    Setting("nonfinite", one_of(*NONFINITE_CHOICES), "refuse, median or zero"),
    Setting("input_axes", one_of(*INPUT_AXES), "auto or zyx"),
    Setting("progress", boolean, "true or false"),
    Setting("trust_checkpoint", boolean, "true or false"),
    Setting("tiler.tile_size", integer(1), "a valid input size, e.g. 572", nullable=True),
    Setting("tiler.overlap", integer(0), "an integer >= 0", nullable=True),
    Setting("tiler.batch_size", integer(1), "an integer >= 1", nullable=True),
    Setting("tiler.memory_gb", number(1e-9), "a number of GB > 0", nullable=True),
    Setting("zarr.level", integer(0), "an integer >= 0 (0: full resolution)"),
    Setting("zarr.chunk", integer(16), "an integer >= 16 (px)"),
    Setting(
        "zarr.probability_dtype",
        one_of("float16", "float32", "uint8"),
        "float16, float32 or uint8",
    ),
    Setting("split", one_of("val", "train"), "val or train"),
    # export (configs/export.yaml)
    Setting("format", one_of(*EXPORT_FORMATS), "bioimageio, onnx or torchscript"),
    Setting(
        "training_data",
        one_of("isbi", "hela", "u373", "own"),
        "isbi, hela, u373 or own",
        nullable=True,
    ),
    Setting("training_data_name", string, "a name for the training data", nullable=True),
    Setting(
        "training_data_description",
        string,
        "a description of the training data",
        nullable=True,
    ),
    Setting("image", string, "an image file, a TIFF stack or a folder of frames", nullable=True),
    Setting("onnx", boolean, "true or false"),
    Setting("any_size", boolean, "true or false"),
    Setting(
        "name",
        lambda v: string(v) and len(v) >= 5,
        "a model name of 5 or more characters",
        nullable=True,
    ),
    Setting("authors", list_of(string), 'a list of names, e.g. ["Ada Lovelace"]', nullable=True),
    Setting("license", string, "an SPDX license id, e.g. MIT or CC-BY-4.0"),
    Setting("predictions", string, "a TIFF stack or a folder of label images", nullable=True),
]


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return repr(value)


def check_config(cfg: DictConfig, settings: list[Setting] = SETTINGS) -> None:
    """Raise :class:`ConfigError` for the first setting that is missing, of the wrong type or
    out of range; keys the config does not have are skipped."""
    missing = [k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")]
    if missing:
        shown = ", ".join(f"{k}=..." for k in sorted(missing))
        raise ConfigError(f"missing required setting(s): pass {shown} on the command line")
    for setting in settings:
        try:
            value = OmegaConf.select(cfg, setting.key, default="__absent__")
        except InterpolationResolutionError as err:
            raise ConfigError(f"{setting.key}: cannot be resolved ({err})") from None
        if isinstance(value, str) and value == "__absent__":
            continue
        if value is None and setting.nullable:
            continue
        if value is None or not setting.ok(value):
            raise ConfigError(f"{setting.key}={_show(value)}: expected {setting.expected}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def build(cfg: DictConfig, key: str, **kwargs) -> Any:
    """``instantiate(cfg.<key>, **kwargs)``; a constructor's refusal becomes a ConfigError.
    For ``key="trainer"``, ``precision: auto`` is resolved for this machine unless
    ``kwargs`` gives a precision.

    Errors that are already user errors pass through as they are; errors of other kinds
    (an import that fails, a bug) propagate unchanged, with their traceback.
    """
    return build_node(OmegaConf.select(cfg, key), key, **kwargs)


def build_node(node: DictConfig | dict | None, key: str, **kwargs) -> Any:
    """:func:`build` of the node ``key`` itself (a config node, or the plain dict of a
    request: errors then name its keys as the config does)."""
    # imported here: prediction checks its settings too and must not import Lightning
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(node, dict):
        node = OmegaConf.create({key: node})[key]  # full keys as in the config: trainer.x
    if key == "trainer" and isinstance(node, DictConfig) and "precision" not in kwargs:
        # every route that builds the Trainer from a config: bf16-mixed where native
        if str(node.get("precision")) == "auto":
            kwargs["precision"] = resolve_precision("auto", node.get("accelerator", "auto"))
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if not isinstance(cause, TypeError | ValueError | MisconfigurationException):
            raise
        where = re.search(r"full_key: (\S+)", str(err))
        raise ConfigError(f"{where.group(1) if where else key}: {_one_line(cause)}") from None
    except MisconfigurationException as err:
        raise ConfigError(f"{key}: {_one_line(err)}") from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"{key}: {_one_line(err)}") from None
