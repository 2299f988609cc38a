"""Score predictions already written (``eval.py predictions=...``): a folder of
instance-label images (cell data sets: SEG and object counts) or a TIFF stack of cell
probabilities (ISBI: the challenge metrics), one per image of a split in order."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np

from unet.data.readers import DataError, read_tiff
from unet.metrics import score_cell_frames, score_isbi_stack


def score_label_folder(
    folder: Path, datamodule: L.LightningDataModule, split: str
) -> dict[str, float]:
    """Score a folder of predicted instance-label images (e.g. ``src/predict.py``'s
    ``labels/``), one per frame of the split in sorted name order, with SEG and object counts."""
    truth = datamodule.instances.get(split)
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
