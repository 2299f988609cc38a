"""Per-class IoU and Dice of a K-class prediction (argmax of the class probabilities).

The counts are one K x K confusion matrix (rows: true class, columns: predicted class),
pooled over the scored pixels (weight > 0) of every image before any ratio is taken, as
:mod:`unet.metrics.pixels` pools its cell-class counts. A class that is neither in the
truth nor predicted has IoU and Dice 1 (nothing to get wrong); the means average over
all K classes, background included.
"""

from __future__ import annotations

import numpy as np

from unet.errors import MetricInputError


class ClassCounts:
    """A K x K confusion matrix, added up image by image.

    Args:
        num_classes: K, the number of classes (>= 2).
    """

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every pixel added so far."""
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, probabilities, classes, valid=None) -> None:
        """Count one image.

        Args:
            probabilities: (K, H, W) class probabilities (or logits: only the argmax counts).
            classes: (H, W) true class indices in [0, K).
            valid: (H, W) bool, the pixels to count (None: all).
        """
        probabilities, classes = np.asarray(probabilities), np.asarray(classes)
        k = self.num_classes
        if probabilities.ndim != 3 or probabilities.shape != (k, *classes.shape):
            raise MetricInputError(
                f"found probabilities of shape {probabilities.shape} and classes of shape "
                f"{classes.shape}; expected ({k}, H, W) and (H, W)"
            )
        predicted = probabilities.argmax(axis=0)
        if valid is not None:
            predicted, classes = predicted[valid], classes[valid]
        if classes.size and (classes.min() < 0 or classes.max() >= k):
            raise MetricInputError(
                f"true classes range from {classes.min()} to {classes.max()}; expected 0..{k - 1}"
            )
        pairs = classes.astype(np.int64).ravel() * k + predicted.ravel()
        self.matrix += np.bincount(pairs, minlength=k * k).reshape(k, k)

    def scores(self) -> dict[str, float]:
        """``iou_class<k>``, ``dice_class<k>`` for every class k, ``mean_iou`` and ``mean_dice``."""
        true_pos = np.diag(self.matrix).astype(np.float64)
        false_pos = self.matrix.sum(axis=0) - true_pos  # predicted k, truly another class
        false_neg = self.matrix.sum(axis=1) - true_pos
        union = true_pos + false_pos + false_neg
        iou = np.where(union > 0, true_pos / np.maximum(union, 1), 1.0)
        dice = np.where(union > 0, 2 * true_pos / np.maximum(union + true_pos, 1), 1.0)
        scores = {f"iou_class{k}": float(v) for k, v in enumerate(iou)}
        scores |= {f"dice_class{k}": float(v) for k, v in enumerate(dice)}
        return scores | {"mean_iou": float(iou.mean()), "mean_dice": float(dice.mean())}


def class_scores(probabilities, classes, valid=None) -> dict[str, float]:
    """:meth:`ClassCounts.scores` of one image or of lists of images (pooled)."""
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 3:
        probabilities, classes = [probabilities], [classes]
        valid = None if valid is None else [valid]
    counts = ClassCounts(len(probabilities[0]))
    for k, (p, c) in enumerate(zip(probabilities, classes, strict=True)):
        counts.add(p, c, None if valid is None else valid[k])
    return counts.scores()
