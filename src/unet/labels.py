"""The binary label convention shared by the readers, the training data and the metrics.

A binary label has two values: 0 = membrane (ISBI 2012) or background (cell data), and 1
or 255 = cell interior. Either value may be missing from a given image. Class index 1 (the
network's second output) is the cell interior everywhere in this project.
"""

from __future__ import annotations

import numpy as np

from unet.errors import UserError

CELL_CLASS = 1  # the class index of the cell interior in class maps and probabilities
CELL_VALUES = (1, 255)  # the values a binary label may use for the cell interior


def binary_cells(
    labels: np.ndarray, where: str = "labels", error: type[UserError] = UserError
) -> np.ndarray:
    """The cell interior (bool, same shape) of a label with values {0, 1} or {0, 255}.

    Args:
        labels: a binary label of any shape; bool is taken as it is.
        where: what to name in the error message (a file path, or "labels").
        error: the error type to raise for any other values (a :class:`UserError`).

    Raises:
        error: the label has values other than {0, 1} or {0, 255}; the message names
            ``where``, the values found and the convention expected.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if labels.dtype == np.uint8:  # the usual case: a histogram is faster than sorting
        values = np.flatnonzero(np.bincount(labels.reshape(-1), minlength=256))
    else:
        values = np.unique(labels)
    for high in CELL_VALUES:
        if set(values.tolist()) <= {0, high}:
            return labels == high
    shown = ", ".join(f"{v:g}" for v in values[:10].tolist()) + (" ..." if values.size > 10 else "")
    raise error(
        f"{where}: found {values.size} distinct values ({shown}); expected a binary label "
        "image: 0 = membrane/background, 1 or 255 = cell interior (instance masks, one id "
        "per cell, are read by the Cell Tracking Challenge data and scored with "
        "unet.metrics.score_cell_frames)"
    )


def foreground_probability(probabilities: np.ndarray, instance_class: int | None = None):
    """The probability map that post-processing turns into objects, from (K, H, W) (or
    (B, K, H, W)) class probabilities: class ``instance_class`` if given; else the cell
    class for two classes (the paper's data sets, unchanged) and, for K > 2, any class but
    background: 1 - p(class 0)."""
    if instance_class is not None:
        return probabilities[..., instance_class, :, :]
    if probabilities.shape[-3] == 2:
        return probabilities[..., CELL_CLASS, :, :]
    return 1.0 - probabilities[..., 0, :, :]


def foreground(classes: np.ndarray) -> np.ndarray:
    """The foreground (any class >= 1) of a class map, as uint8 {0, 1}: the binary label
    that the cell-class metrics score; for two classes, the cell class itself."""
    return (np.asarray(classes) > 0).astype(np.uint8)
