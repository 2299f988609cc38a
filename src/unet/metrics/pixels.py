"""Pixel scores of a cell probability map: the ISBI 2012 pixel error, F1, IoU and Dice.

One rule, used by training's per-epoch validation, its final validation and ``eval.py``
alike (they all add their probability maps to a :class:`PixelCounts`):

- a pixel is a predicted cell at threshold t when ``p > t`` (p = the probability of the
  cell class), for t in 0.00, 0.01, ..., 0.99 (``PIXEL_THRESHOLDS``);
- the counts (true and false positives and negatives of the cell class) are pooled over
  all pixels of all images before any ratio is taken;
- pixels whose ``valid`` mask is False (weight 0: cells the annotation leaves out) are not
  counted; without a mask every pixel counts;
- the pixel error is 1 - the maximal F1 of the cell class over the thresholds; F1, IoU and
  Dice "at 0.5" binarise at ``p > 0.5``;
- scores of the cell class cannot be computed when the scored labels hold no cell pixel
  at all (every threshold would score an empty prediction as perfect): then every score is
  NaN, "missing", never 0 error (a checkpoint callback never takes NaN as best).

Relation to the ISBI 2012 challenge's Fiji script (``PixelError`` of Fiji's Trainable
Segmentation, called with thresholds 0.0 to 1.0 in steps of 0.1): it also binarises at
``p > t``, pools the pixels of the stack and takes 1 - the maximal F-score of the cell
class. Our thresholds hold its 0.0, 0.1, ..., 0.9 (its 1.0 gives an empty prediction,
F1 0, never the best), so on the same map our pixel error is at most the script's, lower
only where a threshold between its steps is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from unet.metrics.inputs import as_stack
from unet.metrics.thresholds import PIXEL_THRESHOLDS, Sweep, best, check_thresholds


class Confusion(NamedTuple):
    """Pixel counts of the cell class at one threshold (or one per threshold, as arrays)."""

    true_pos: np.ndarray
    false_pos: np.ndarray
    false_neg: np.ndarray
    true_neg: np.ndarray

    @property
    def f1(self) -> np.ndarray:
        """F1 (Dice) of the cell class: 2 TP / (2 TP + FP + FN)."""
        return _ratio(2 * self.true_pos, 2 * self.true_pos + self.false_pos + self.false_neg)

    @property
    def iou(self) -> np.ndarray:
        """IoU (Jaccard) of the cell class: TP / (TP + FP + FN)."""
        return _ratio(self.true_pos, self.true_pos + self.false_pos + self.false_neg)

    @property
    def dice(self) -> np.ndarray:
        """F1 averaged over both classes (cell and membrane/background)."""
        background = _ratio(2 * self.true_neg, 2 * self.true_neg + self.false_pos + self.false_neg)
        return (self.f1 + background) / 2


def _ratio(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.asarray(numerator), np.asarray(denominator)
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0)


class PixelCounts:
    """Confusion counts of the cell class at every threshold, added up image by image.

    Each pixel is counted once, in the bin of "how many thresholds lie below its
    probability", so adding an image costs one sorted search per pixel whatever the number
    of thresholds.

    Args:
        thresholds: the binarisation thresholds (cells are ``p > t``), in [0, 1].
    """

    def __init__(self, thresholds: Sequence[float] = PIXEL_THRESHOLDS):
        self.thresholds = check_thresholds(thresholds)
        self._order = np.argsort(self.thresholds, kind="stable")
        self._ascending = self.thresholds[self._order]
        self.reset()

    def reset(self) -> None:
        """Forget every pixel added so far."""
        bins = len(self.thresholds) + 1
        self._on_cells = np.zeros(bins, np.int64)  # (T + 1,) cell pixels per bin
        self._on_membrane = np.zeros(bins, np.int64)  # (T + 1,) membrane pixels per bin

    def add(self, probabilities, labels, valid=None) -> None:
        """Count one image (H, W) or a stack (slices, H, W).

        Args:
            probabilities: probability of the cell class, in [0, 1].
            labels: the same shape, 0 = membrane/background, 1 or 255 = cell interior.
            valid: the same shape, bool: the pixels to count (None: all).
        """
        self.add_checked(*as_stack(probabilities, labels, valid))

    def add_checked(self, prob: np.ndarray, cells: np.ndarray, valid: np.ndarray) -> None:
        """``add`` for arrays already checked by :func:`unet.metrics.inputs.as_stack`."""
        bins = len(self._on_cells)
        for p, c, v in zip(prob, cells, valid, strict=True):
            p, c = (p.reshape(-1), c.reshape(-1)) if v.all() else (p[v], c[v])  # (N,) scored
            # k = the number of thresholds below p: the pixel is a cell at the k lowest
            k = np.searchsorted(self._ascending, p, side="left")
            self._on_cells += np.bincount(k[c], minlength=bins)
            self._on_membrane += np.bincount(k[~c], minlength=bins)

    def confusion(self) -> Confusion:
        """(T,) counts per threshold, in the order the thresholds were given."""
        cells, membrane = self._on_cells.sum(), self._on_membrane.sum()
        # at the j-th lowest threshold, the cells are the pixels of bins j + 1, j + 2, ...
        true_pos = cells - np.cumsum(self._on_cells)[:-1]
        false_pos = membrane - np.cumsum(self._on_membrane)[:-1]
        ascending = Confusion(true_pos, false_pos, cells - true_pos, membrane - false_pos)
        return Confusion(*(_unsort(c, self._order) for c in ascending))

    @property
    def has_cells(self) -> bool:
        """Whether the scored labels hold a cell pixel: without one no score is defined."""
        return bool(self._on_cells.sum() > 0)

    def pixel_error(self) -> Sweep:
        """1 - the maximal F1 of the cell class over the thresholds, and where it is
        (NaN everywhere when the labels hold no cell pixel)."""
        if not self.has_cells:
            missing = np.full(len(self.thresholds), np.nan)
            return Sweep(float("nan"), float("nan"), missing)
        return best(1.0 - self.confusion().f1, self.thresholds, minimize=True)

    def scores(self, at: float = 0.5) -> dict[str, float]:
        """``pixel_error`` and ``pixel_error_threshold``; and, if ``at`` is one of the
        thresholds, ``pixel_error_t05`` (1 - F1), ``iou`` and ``dice`` at that threshold."""
        sweep = self.pixel_error()
        scores = {"pixel_error": sweep.value, "pixel_error_threshold": sweep.threshold}
        where = np.flatnonzero(self.thresholds == at)
        if where.size:
            one = Confusion(*(c[where[0]] for c in self.confusion()))
            scores |= {
                "pixel_error_t05": float(1.0 - one.f1),
                "iou": float(one.iou),
                "dice": float(one.dice),
            }
            if not self.has_cells:  # nothing to score: missing, not perfect
                scores |= dict.fromkeys(("pixel_error_t05", "iou", "dice"), float("nan"))
        return scores


def _unsort(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


def pixel_error(
    probabilities, labels, thresholds: Sequence[float] = PIXEL_THRESHOLDS, valid=None
) -> Sweep:
    """1 - the maximal F1 of the cell class over thresholds; counts pooled over slices.

    Args:
        probabilities: (H, W) or (slices, H, W) probability of the cell class.
        labels: same shape, 0 = membrane, 1 or 255 = cell interior.
        thresholds: cells are ``p > t``; default 0.00, 0.01, ..., 0.99.
        valid: same shape, bool: the pixels to score (None: all).
    """
    counts = PixelCounts(thresholds)
    counts.add(probabilities, labels, valid)
    return counts.pixel_error()


def pixel_scores(probabilities, labels, valid=None) -> dict[str, float]:
    """The pixel scores that training logs every validation epoch (:meth:`PixelCounts.scores`)
    for one image or a stack; the same numbers for the same probabilities."""
    counts = PixelCounts()
    counts.add(probabilities, labels, valid)
    return counts.scores()
