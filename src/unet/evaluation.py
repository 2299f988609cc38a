"""Score a trained checkpoint, or predictions already written, on a dataset split."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from unet.data.readers import DataError, read_tiff
from unet.errors import UserError
from unet.metrics import score_cell_frames, score_isbi_stack
from unet.module import SegmentationModule, load_network
from unet.tiler import Tiler
from unet.training import scalars, write_json
from unet.validation import build, check_config


def score_checkpoint(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, float]:
    """Predict the split's whole images with the checkpoint and compute every metric.

    Datasets with instance masks (Cell Tracking Challenge) also get SEG: predicted cells are
    the 4-connected components of ``p > 0.5``, matched to the ground-truth objects.
    """
    # tile by tile within a memory budget: any image size fits, the result is the same
    module = SegmentationModule(net=load_network(cfg.ckpt_path), optimizer=None, tiler=Tiler())
    module.challenge_metrics = True
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    loader = datamodule.whole_image_dataloader(cfg.split)
    metrics = scalars(trainer.validate(module, dataloaders=loader, verbose=False)[0])
    truth = getattr(datamodule, "instances", {}).get(cfg.split)
    if truth:
        probabilities = [p[0].numpy() for p in trainer.predict(module, dataloaders=loader)]
        predicted = [ndimage.label(p > 0.5)[0] for p in probabilities]
        cells = score_cell_frames(predicted, truth)
        metrics |= {f"val/{k}": float(v) for k, v in cells.items()}
    return metrics


def score_label_folder(
    folder: Path, datamodule: L.LightningDataModule, split: str
) -> dict[str, float]:
    """Score a folder of predicted instance-label images (e.g. ``src/predict.py``'s
    ``labels/``), one per frame of the split in sorted name order, with SEG and object counts."""
    truth = getattr(datamodule, "instances", {}).get(split)
    if not truth:
        raise DataError(
            f"{folder}: a folder of label images needs a dataset with instance masks "
            "(data=hela or data=u373)"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if len(files) != len(truth):
        raise DataError(
            f"{folder}: found {len(files)} TIFF label images, expected {len(truth)} "
            f"(one per frame of the {split!r} split: {', '.join(datamodule.frame_ids[split])})"
        )
    predicted = []
    for file, expected in zip(files, truth, strict=True):
        labels = read_tiff(file)
        if labels.shape != expected.shape or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{file}: expected an integer label image of shape {expected.shape}, "
                f"found {labels.dtype} of shape {labels.shape}"
            )
        predicted.append(labels)
    return {f"val/{k}": float(v) for k, v in score_cell_frames(predicted, truth).items()}


def score_prediction_file(
    path: str | Path, datamodule: L.LightningDataModule, split: str
) -> dict[str, float]:
    """Score written predictions: a folder of label images (cell datasets: SEG), or a TIFF
    stack of cell probabilities (1 = cell interior), one slice per image of the split in
    order (the ISBI challenge metrics)."""
    path = Path(path)
    if path.is_dir():
        return score_label_folder(path, datamodule, split)
    probabilities = read_tiff(path).astype(np.float32)
    low, high = (float(f(probabilities)) if probabilities.size else 0.0 for f in (np.min, np.max))
    if low < 0 or high > 1:  # e.g. 0..255 images or logits: every threshold would be wrong
        raise DataError(
            f"{path}: expected cell probabilities in [0, 1], found values in [{low:g}, {high:g}]"
        )
    if probabilities.ndim == 2:
        probabilities = probabilities[None]
    dataset = datamodule.whole_sets[split]
    labels = np.stack(dataset.classes)
    if probabilities.shape != labels.shape:
        raise DataError(
            f"{path}: prediction stack has shape {probabilities.shape}, expected {labels.shape} "
            f"(one probability map per image of the {split!r} split)"
        )
    scores = score_isbi_stack(probabilities, labels)
    return {f"val/{k}": float(v) for k, v in scores.items()}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.ckpt_path`` (or the stack ``cfg.predictions``) on ``cfg.split``.

    Writes ``<output_dir>/metrics.json`` and prints a table.
    """
    check_config(cfg)  # types and ranges of every setting, before anything is read
    if not cfg.get("ckpt_path") and not cfg.get("predictions"):
        raise UserError("nothing to score: pass ckpt_path=<checkpoint> or predictions=<tif stack>")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    datamodule.setup("validate")
    if cfg.get("predictions"):
        metrics = score_prediction_file(cfg.predictions, datamodule, cfg.split)
        source = str(cfg.predictions)
    else:
        metrics = score_checkpoint(cfg, datamodule)
        source = str(cfg.ckpt_path)
    metrics = metrics | {"source": source, "split": cfg.split}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)

    table = Table(title=f"{cfg.split} split, {Path(source).name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return metrics
