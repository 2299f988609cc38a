"""Contingency tables of two segmentations of a slice, and the Rand and information scores.

From the table over the N ground-truth cell pixels of a slice: n_ij is the number of pixels
in ground-truth segment i and predicted segment j, p_ij = n_ij / N, t_i = sum_j p_ij
(ground truth) and s_j = sum_i p_ij (prediction). A predicted segment id 0 (membrane inside
a ground-truth cell) is a singleton: each such pixel is a column of its own with one pixel.

    V_rand_split = sum_ij p_ij^2 / sum_i t_i^2     (same truth segment -> same prediction)
    V_rand_merge = sum_ij p_ij^2 / sum_j s_j^2     (same prediction -> same truth segment)
    V_rand       = 2 sum_ij p_ij^2 / (sum_i t_i^2 + sum_j s_j^2)

    V_info_split = I(S; T) / H(S)
    V_info_merge = I(S; T) / H(T)
    V_info       = 2 I(S; T) / (H(S) + H(T))

with S the prediction, T the ground truth, H the entropy of the marginals (s_j, t_i),
I(S; T) = H(S) + H(T) - H(S, T) (natural logarithms; the ratios do not depend on the base).
A ratio whose denominator is 0 is 1 (nothing to split, nothing to merge).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from unet.metrics.inputs import check_segments


class SplitMerge(NamedTuple):
    """Split score, merge score and their F-score (all 1 for identical segmentations)."""

    split: float
    merge: float
    f_score: float


class Table(NamedTuple):
    """Sparse contingency table over the ground-truth cell pixels of one slice."""

    overlaps: np.ndarray  # n_ij > 0 for predicted segments j > 0 (float64)
    truth_sizes: np.ndarray  # sum_j n_ij, singletons included
    predicted_sizes: np.ndarray  # sum_i n_ij for predicted segments j > 0
    singletons: int  # predicted-membrane pixels inside ground-truth cells
    total: int  # N, the number of ground-truth cell pixels


def table(truth: np.ndarray, predicted: np.ndarray) -> Table:
    """Contingency table of ``truth`` (ids > 0) and ``predicted`` ids, both 1D over N pixels."""
    total = truth.size
    single = predicted == 0
    t, p = truth[~single], predicted[~single]
    if t.size == 0:
        empty = np.zeros(0)
        return Table(empty, _nonzero_counts(truth), empty, int(single.sum()), total)
    columns = int(p.max()) + 1
    key = t.astype(np.int64) * columns + p
    if (int(t.max()) + 1) * columns <= 8 * key.size + 4096:  # dense counts fit: no sort
        overlaps = np.bincount(key)
        overlaps = overlaps[overlaps > 0]
    else:
        overlaps = np.unique(key, return_counts=True)[1]
    return Table(
        overlaps.astype(np.float64),
        _nonzero_counts(truth),
        _nonzero_counts(p),
        int(single.sum()),
        total,
    )


def _nonzero_counts(ids: np.ndarray) -> np.ndarray:
    """Sizes of the segments with ids >= 1 (float64)."""
    counts = np.bincount(ids, minlength=1).astype(np.float64)
    counts[0] = 0
    return counts[counts > 0]


def rand_sums(table: Table) -> tuple[float, float, float]:
    """(sum_ij n_ij^2, sum_i a_i^2, sum_j b_j^2) in pixel counts, singletons included."""
    n0 = table.singletons
    return (
        float(table.overlaps @ table.overlaps) + n0,
        float(table.truth_sizes @ table.truth_sizes),
        float(table.predicted_sizes @ table.predicted_sizes) + n0,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 1.0


def rand_from_sums(joint: float, truth: float, predicted: float) -> SplitMerge:
    # The N^2 normalisation of p_ij cancels in every ratio.
    return SplitMerge(
        split=_ratio(joint, truth),
        merge=_ratio(joint, predicted),
        f_score=_ratio(2 * joint, truth + predicted),
    )


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-(p @ np.log(p)))


def info(table: Table) -> SplitMerge:
    n = table.total
    if n == 0:
        return SplitMerge(1.0, 1.0, 1.0)
    # Each singleton has probability 1/n: together they add n0 * (1/n) * log(n).
    singletons = table.singletons / n * np.log(n)
    h_truth = _entropy(table.truth_sizes, n)
    h_predicted = _entropy(table.predicted_sizes, n) + singletons
    h_joint = _entropy(table.overlaps, n) + singletons
    mutual = min(max(h_truth + h_predicted - h_joint, 0.0), h_truth, h_predicted)
    return SplitMerge(
        split=_ratio(mutual, h_predicted),
        merge=_ratio(mutual, h_truth),
        f_score=_ratio(2 * mutual, h_truth + h_predicted),
    )


def _foreground_table(truth: np.ndarray, predicted: np.ndarray) -> Table:
    inside = truth > 0
    return table(truth[inside], predicted[inside])


def rand_scores(truth_segments: np.ndarray, predicted_segments: np.ndarray) -> SplitMerge:
    """Foreground-restricted Rand split, merge and F-score of two segmentations of a slice.

    Args:
        truth_segments: (H, W) ground-truth segment ids; 0 (membrane) is left out.
        predicted_segments: (H, W) predicted segment ids; 0 pixels are singletons.
    """
    truth, predicted = check_segments(truth_segments, predicted_segments)
    return rand_from_sums(*rand_sums(_foreground_table(truth, predicted)))


def info_scores(truth_segments: np.ndarray, predicted_segments: np.ndarray) -> SplitMerge:
    """Foreground-restricted information split, merge and F-score (V_info) of a slice.

    Args:
        truth_segments: (H, W) ground-truth segment ids; 0 (membrane) is left out.
        predicted_segments: (H, W) predicted segment ids; 0 pixels are singletons.
    """
    truth, predicted = check_segments(truth_segments, predicted_segments)
    return info(_foreground_table(truth, predicted))
