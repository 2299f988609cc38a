"""Input checks of the ISBI metrics: probability maps, binary labels and segmentations.

Each failure is a ``MetricInputError`` that says what was found and what was expected.
"""

from __future__ import annotations

import numpy as np

from unet.errors import MetricInputError
from unet.labels import binary_cells


def as_stack(probabilities, labels, valid=None) -> tuple[np.ndarray, ...]:
    """(slices, H, W) float64 probabilities, bool cells and bool valid pixels.

    Args:
        probabilities: (H, W) or (slices, H, W) probability of the cell class, in [0, 1].
        labels: the same shape, a binary label (0 = membrane, 1 or 255 = cell interior).
        valid: the same shape, bool: the pixels to score (None: all).
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if probabilities.shape != labels.shape:
        raise MetricInputError(
            f"probabilities have shape {probabilities.shape} but labels have shape "
            f"{labels.shape}; expected the same shape, (height, width) or "
            "(slices, height, width)"
        )
    if probabilities.ndim not in (2, 3) or probabilities.size == 0:
        raise MetricInputError(
            f"found arrays of shape {probabilities.shape}; expected (height, width) or "
            "(slices, height, width), with at least one pixel"
        )
    shape = (-1, *probabilities.shape[-2:])
    prob = check_probabilities(probabilities).reshape(shape)
    cells = binary_cells(labels, "labels", MetricInputError).reshape(shape)
    if valid is None:
        return prob, cells, np.ones(prob.shape, bool)
    valid = np.asarray(valid)
    if valid.shape != labels.shape or valid.dtype != bool:
        raise MetricInputError(
            f"the valid-pixel mask has shape {valid.shape} and dtype {valid.dtype}; expected "
            f"bool of the labels' shape {labels.shape}"
        )
    return prob, cells, valid.reshape(shape)


def check_probabilities(probabilities) -> np.ndarray:
    """The probabilities as float64, or MetricInputError unless numbers in [0, 1]."""
    probabilities = np.asarray(probabilities)
    if not (probabilities.dtype == bool or np.issubdtype(probabilities.dtype, np.number)):
        raise MetricInputError(
            f"probabilities have dtype {probabilities.dtype}; expected numbers in [0, 1]"
        )
    prob = probabilities.astype(np.float64)
    nans = int(np.count_nonzero(np.isnan(prob)))
    if nans:
        raise MetricInputError(
            f"probabilities contain {nans} NaN values; expected probabilities in [0, 1]"
        )
    low, high = prob.min(), prob.max()
    if low < 0 or high > 1:
        raise MetricInputError(
            f"probabilities range from {low:g} to {high:g}; expected probabilities of the cell "
            "class in [0, 1] (1 = cell interior). Apply a sigmoid or softmax to network "
            "outputs; divide 8-bit images by 255."
        )
    return prob


def check_segments(truth, predicted) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) int64 segmentations (non-negative ids), or MetricInputError."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.ndim != 2 or truth.shape != predicted.shape:
        raise MetricInputError(
            f"found segmentations of shape {truth.shape} (truth) and {predicted.shape} "
            "(prediction); expected two label images of the same (height, width)"
        )
    for name, image in (("truth", truth), ("prediction", predicted)):
        if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer)) or (
            image.size and image.min() < 0
        ):
            raise MetricInputError(
                f"the {name} segmentation has dtype {image.dtype}"
                f"{' and negative values' if image.size and image.min() < 0 else ''}; "
                "expected non-negative integer segment ids"
            )
    return truth.astype(np.int64), predicted.astype(np.int64)
