"""What the Fine-tune widget does, without Qt: corrected layers -> a ``data=folder`` data set
-> ``unet.training.task.train`` from a checkpoint (``model.init_from``) with the own-data recipe
(``experiment=folder_cpu``).

Each (image, labels) pair is written as ``images/<name>.tif`` and ``masks/<name>.tif``
(instance masks, one id per cell: ``data.mask_type=instance``); a stack gives one pair per
frame. With several pairs, a fifth are held out for validation (``data.val=0.2``); a single
image is cut into a top part to train on and a bottom quarter to validate on. Everything
``data=folder`` checks (sizes, classes, empty masks) is checked before training, and the
architecture is the checkpoint's, so the new checkpoint loads like any trained one.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from unet.errors import UserError
from unet.inference.checkpoint import load_trained
from unet.model.shapes import smallest_input_covering
from unet.napari.layers import Frames, check_same_shape, frames_of

OUTPUT_WINDOW = 128  # training tiles' output side (px): small tiles, quick CPU epochs
VALIDATION_PART = 0.25  # of a single image, held out at its bottom


class FinetuneError(UserError, ValueError):
    """Fine-tuning that cannot start (no checkpoint, no configs, no pairs)."""


def configs_dir() -> Path:
    """The repository's ``configs/`` (fine-tuning composes ``experiment=folder_cpu``)."""
    import unet

    folder = Path(unet.__file__).resolve().parents[2] / "configs"
    if not (folder / "train.yaml").is_file():
        raise FinetuneError(
            f"{folder}: no train.yaml; fine-tuning uses the repository's configs/: install "
            'unet from its repository with pip install -e ".[napari]"'
        )
    return folder


def pair_frames(pairs, channels: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image (H, W) or (C, H, W), labels (H, W)) of every frame of ``pairs``
    ((image layer, labels layer) tuples), after checking that each labels layer covers its
    image."""
    frames = []
    for image, labels in pairs:
        found: Frames = frames_of(image.name, image.data, image.rgb, channels)
        check_same_shape(image.name, found, labels.name, np.shape(labels.data))
        masks = np.asarray(labels.data).reshape(-1, *found.shape[-2:])
        for index in range(len(found)):
            stem = safe_name(image.name) + (f"_{index:03d}" if found.stacked else "")
            frames.append((stem, found.frame(index), masks[index]))
    return frames


def safe_name(name: str) -> str:
    """A layer name as a file stem (letters, digits, - and _)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "layer"


def write_folder(frames: list, root: Path) -> list[str] | float:
    """``root/images`` and ``root/masks`` of ``frames``; returns ``data.val``: a list of
    held-out stems (one frame: its bottom part), else the fraction 0.2."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if len(frames) == 1:
        stem, image, mask = frames[0]
        cut = round(image.shape[-2] * (1 - VALIDATION_PART))
        frames = [
            (f"{stem}_train", image[..., :cut, :], mask[:cut]),
            (f"{stem}_val", image[..., cut:, :], mask[cut:]),
        ]
    for stem, image, mask in frames:
        tifffile.imwrite(root / "images" / f"{stem}.tif", image)
        tifffile.imwrite(root / "masks" / f"{stem}.tif", mask.astype(np.uint32))
    return [frames[1][0]] if len(frames) == 2 and frames[1][0].endswith("_val") else 0.2


@dataclass(frozen=True)
class Recipe:
    """How long to fine-tune: epochs and training tiles per epoch."""

    epochs: int = 10
    tiles_per_epoch: int = 20


def overrides(checkpoint: Path, root: Path, val, recipe: Recipe, report: str) -> list[str]:
    """The command line of ``src/train.py`` for this fine-tuning (own-data recipe, the
    checkpoint's architecture, the widget's report callback)."""
    config = load_trained(checkpoint).config
    tile = smallest_input_covering(OUTPUT_WINDOW, config.depth, config.padding)
    val_text = val if isinstance(val, float) else "[" + ",".join(val) + "]"
    net = [f"model.net.{k}={v}" for k, v in config.to_dict().items()]
    return [
        "experiment=folder_cpu",
        f"data.data_dir={root}",
        "data.mask_type=instance",
        f"data.val={val_text}",
        f"data.in_channels={config.in_channels}",
        f"data.num_classes={config.num_classes}",
        f"data.tile_size={tile}",
        f"data.samples_per_epoch={recipe.tiles_per_epoch}",
        "data.num_workers=0",
        *net,
        f"model.init_from={checkpoint}",
        f"trainer.max_epochs={recipe.epochs}",
        "trainer.max_time=null",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "+callbacks.widget_report._target_=unet.napari.report.WidgetReport",
        f"+callbacks.widget_report.key={report}",
    ]


def compose(arguments: list[str], output_dir: Path):
    """The training config of ``arguments`` (as ``src/train.py`` composes it), writing into
    ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(str(configs_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=arguments, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so that ${hydra:...} resolves
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(output_dir / "cache")
        del cfg.hydra
    return cfg


_runs = itertools.count()


def new_run_dir(parent: Path) -> Path:
    """A fresh ``parent/finetune-NNN`` folder (training refuses one with checkpoints)."""
    for _ in range(10_000):
        run = parent / f"finetune-{next(_runs):03d}"
        if not run.exists():
            return run
    raise FinetuneError(f"{parent}: no free finetune-NNN folder name; choose another folder")


@dataclass
class Progress:
    """What the training callback reports, and the flag that stops it."""

    on_epoch: Callable[[int, int, float | None], None]  # (epoch done, of, validation value)
    cancel: threading.Event


def finetune(checkpoint: Path, frames: list, parent: Path, recipe: Recipe, progress: Progress):
    """Train from ``checkpoint`` on ``frames`` in a new run folder under ``parent``; returns
    (the best new checkpoint or None if stopped before the first epoch ended, metrics)."""
    from unet.napari.report import REPORTS
    from unet.training.task import train

    if not frames:
        raise FinetuneError("no (image, labels) pair chosen; add one")
    run = new_run_dir(Path(parent))
    val = write_folder(frames, run / "data")
    key = f"run{id(progress)}"  # not all digits: Hydra would make it an int
    REPORTS[key] = progress
    try:
        cfg = compose(overrides(checkpoint, run / "data", val, recipe, key), run)
        metrics = train(cfg)
    finally:
        REPORTS.pop(key, None)
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    return (best[-1] if best else None), metrics
