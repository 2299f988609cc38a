"""ISBI 2012 EM segmentation challenge metrics, each swept over binarisation thresholds.

Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation algorithms
for connectomics", Front. Neuroanat. 9:142, and the challenge's Fiji evaluation scripts.

Inputs: a probability map of the cell class (1 = cell interior, values in [0, 1]) and a
binary label (1 or 255 = cell interior, 0 = membrane), each (H, W) or (slices, H, W); pass
one slice for per-slice scores. A threshold t makes the predicted cells ``p > t`` (as the
Fiji scripts do).

| metric        | per slice and threshold                     | slices | thresholds |
| ------------- | ------------------------------------------- | ------ | ---------- |
| pixel error   | 1 - F1 of the cell class                    | pooled | min        |
| Rand error    | 1 - foreground-restricted Rand F-score      | pooled | min        |
| V_rand        | Rand F-score after border thinning          | mean   | max        |
| V_info        | information F-score after border thinning   | mean   | max        |
| warping error | (split + merge pixels) / pixels, see below  | pooled | min        |

"Pooled" sums the counts (pixels, pixel pairs) of all slices before the ratio is taken;
"mean" averages the per-slice scores. Each metric is reported with the threshold that gives
its best value (the first of the given thresholds on ties).

Segments, all 4-connected:
- Ground truth: the 4-connected components of the label's cell class. Ground-truth membrane
  pixels are left out of the Rand and information scores ("foreground-restricted").
- Prediction: the 4-connected components of ``p > t``. A predicted-membrane pixel inside a
  ground-truth cell is a segment of its own (a singleton), so a thick predicted membrane
  splits the cells it eats into (V_rand_split drops); it is not one big segment.
- After border thinning (V_rand, V_info): the predicted membrane is first thinned to lines
  one pixel wide by a watershed of the binary map seeded with the predicted cells (flooding
  4-connected, as the challenge's Fiji script; see ``thin_boundaries``); the line pixels
  are singletons as above.

Scores, from the contingency table over the N ground-truth cell pixels of a slice: n_ij is
the number of pixels in ground-truth segment i and predicted segment j, p_ij = n_ij / N,
t_i = sum_j p_ij (ground truth) and s_j = sum_i p_ij (prediction); each singleton is a
column of its own with one pixel.

    V_rand_split = sum_ij p_ij^2 / sum_i t_i^2     (same truth segment -> same prediction)
    V_rand_merge = sum_ij p_ij^2 / sum_j s_j^2     (same prediction -> same truth segment)
    V_rand       = 2 sum_ij p_ij^2 / (sum_i t_i^2 + sum_j s_j^2)

    V_info_split = I(S; T) / H(S)
    V_info_merge = I(S; T) / H(T)
    V_info       = 2 I(S; T) / (H(S) + H(T))

with S the prediction, T the ground truth, H the entropy of the marginals (s_j, t_i),
I(S; T) = H(S) + H(T) - H(S, T) (natural logarithms; the ratios do not depend on the base).
A ratio whose denominator is 0 is 1 (nothing to split, nothing to merge; a slice without
ground-truth cells scores 1). The Rand error is 1 - the same Rand F-score, computed on the
predicted components without thinning and with the pixel-pair sums pooled over slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from unet.errors import MetricInputError
from unet.metrics.warping import _topological_errors

_FOUR = ndimage.generate_binary_structure(2, 1)

# The Fiji scripts sweep 0.0..1.0 in steps of 0.1. 1.0 is left out: with p > t it always
# gives an empty prediction, which the warping error (splits and merges only) scores as
# perfect.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(k / 10 for k in range(10))  # 0.0 .. 0.9
PIXEL_THRESHOLDS: tuple[float, ...] = tuple(k / 100 for k in range(100))  # 0.00 .. 0.99


class Sweep(NamedTuple):
    """A metric over thresholds: its best value, where, and the whole curve."""

    value: float  # the best value: the minimum of an error, the maximum of a score
    threshold: float  # the threshold that gives it
    per_threshold: np.ndarray  # (T,) the value at each threshold, in the order given


class SplitMerge(NamedTuple):
    """Split score, merge score and their F-score (all 1 for identical segmentations)."""

    split: float
    merge: float
    f_score: float


# ---------------------------------------------------------------------------------------
# input checks


def _as_stack(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    """(slices, H, W) float64 probabilities and bool cells, or MetricInputError."""
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
    cells = _binary_cells(labels)
    shape = (-1, *prob.shape[-2:])
    return prob.reshape(shape), cells.reshape(shape)


def _binary_cells(labels: np.ndarray) -> np.ndarray:
    """Cell interior (bool) of a label with values {0, 1} or {0, 255}."""
    if labels.dtype == bool:
        return labels
    if labels.dtype == np.uint8:  # the usual case: a histogram is faster than sorting
        values = np.flatnonzero(np.bincount(labels.reshape(-1), minlength=256))
    else:
        values = np.unique(labels)
    for high in (1, 255):
        if set(values.tolist()) <= {0, high}:
            return labels == high
    shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (" ..." if values.size > 6 else "")
    raise MetricInputError(
        f"labels have {values.size} distinct values ({shown}); expected a binary label: "
        "0 = membrane, 1 or 255 = cell interior (score instance masks, one id per cell, "
        "with unet.metrics.score_cell_frames)"
    )


def _check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.size == 0 or np.isnan(values).any() or values.min() < 0 or values.max() > 1:
        raise MetricInputError(
            f"thresholds {list(thresholds)!r} are not usable; expected a non-empty sequence of "
            "numbers in [0, 1]"
        )
    return values


def _check_segments(truth, predicted) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------------------------
# contingency tables and scores


class _Table(NamedTuple):
    """Sparse contingency table over the ground-truth cell pixels of one slice."""

    overlaps: np.ndarray  # n_ij > 0 for predicted segments j > 0 (float64)
    truth_sizes: np.ndarray  # sum_j n_ij, singletons included
    predicted_sizes: np.ndarray  # sum_i n_ij for predicted segments j > 0
    singletons: int  # predicted-membrane pixels inside ground-truth cells
    total: int  # N, the number of ground-truth cell pixels


def _table(truth: np.ndarray, predicted: np.ndarray) -> _Table:
    """Contingency table of ``truth`` (ids > 0) and ``predicted`` ids, both 1D over N pixels."""
    total = truth.size
    single = predicted == 0
    t, p = truth[~single], predicted[~single]
    if t.size == 0:
        empty = np.zeros(0)
        return _Table(empty, _nonzero_counts(truth), empty, int(single.sum()), total)
    columns = int(p.max()) + 1
    key = t.astype(np.int64) * columns + p
    if (int(t.max()) + 1) * columns <= 8 * key.size + 4096:  # dense counts fit: no sort
        overlaps = np.bincount(key)
        overlaps = overlaps[overlaps > 0]
    else:
        overlaps = np.unique(key, return_counts=True)[1]
    return _Table(
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


def _rand_sums(table: _Table) -> tuple[float, float, float]:
    """(sum_ij n_ij^2, sum_i a_i^2, sum_j b_j^2) in pixel counts, singletons included."""
    n0 = table.singletons
    return (
        float(table.overlaps @ table.overlaps) + n0,
        float(table.truth_sizes @ table.truth_sizes),
        float(table.predicted_sizes @ table.predicted_sizes) + n0,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 1.0


def _rand_from_sums(joint: float, truth: float, predicted: float) -> SplitMerge:
    # The N^2 normalisation of p_ij cancels in every ratio.
    return SplitMerge(
        split=_ratio(joint, truth),
        merge=_ratio(joint, predicted),
        f_score=_ratio(2 * joint, truth + predicted),
    )


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-(p @ np.log(p)))


def _info(table: _Table) -> SplitMerge:
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


def _foreground_table(truth: np.ndarray, predicted: np.ndarray) -> _Table:
    inside = truth > 0
    return _table(truth[inside], predicted[inside])


def rand_scores(truth_segments: np.ndarray, predicted_segments: np.ndarray) -> SplitMerge:
    """Foreground-restricted Rand split, merge and F-score of two segmentations of a slice.

    Args:
        truth_segments: (H, W) ground-truth segment ids; 0 (membrane) is left out.
        predicted_segments: (H, W) predicted segment ids; 0 pixels are singletons.
    """
    truth, predicted = _check_segments(truth_segments, predicted_segments)
    return _rand_from_sums(*_rand_sums(_foreground_table(truth, predicted)))


def info_scores(truth_segments: np.ndarray, predicted_segments: np.ndarray) -> SplitMerge:
    """Foreground-restricted information split, merge and F-score (V_info) of a slice.

    Args:
        truth_segments: (H, W) ground-truth segment ids; 0 (membrane) is left out.
        predicted_segments: (H, W) predicted segment ids; 0 pixels are singletons.
    """
    truth, predicted = _check_segments(truth_segments, predicted_segments)
    return _info(_foreground_table(truth, predicted))


# ---------------------------------------------------------------------------------------
# border thinning


def _thin(cells: np.ndarray, segments: np.ndarray, count: int) -> np.ndarray:
    """Flood the membrane from the cells' ``segments`` in layers; 0 on the lines."""
    if count == 0 or cells.all():
        return segments  # nothing to flood from, or nothing to flood
    h, w = cells.shape
    # Layer d: the membrane pixels at city-block distance d from the nearest cell, the
    # distance a 4-connected flood travels. Half-layers: checkerboard colour, 4-neighbours
    # never share it, so every pixel of a half-layer can be decided at once.
    distance = ndimage.distance_transform_cdt(~cells, metric="taxicab")
    ys, xs = np.nonzero(~cells)
    half_layer = 2 * distance[ys, xs] + (ys + xs) % 2
    order = np.argsort(half_layer, kind="stable")
    flooded = np.pad(segments.astype(np.int32), 1)  # 0 = not flooded (yet), or line
    flat = flooded.reshape(-1)
    four = np.array([-(w + 2), w + 2, -1, 1])  # up, down, left, right in the padded image
    index = ((ys + 1) * (w + 2) + xs + 1)[order]
    starts = np.flatnonzero(np.diff(half_layer[order])) + 1
    unset = np.iinfo(np.int32).max
    for pixels in np.split(index, starts):
        around = flat[pixels[:, None] + four]  # (n, 4) labels of the earlier neighbours
        high = around.max(axis=1)
        low = np.where(around > 0, around, unset).min(axis=1)
        flat[pixels] = np.where(low == high, high, 0)  # one flood reaches it, or a line
    return flooded[1:-1, 1:-1]


def thin_boundaries(cells: np.ndarray) -> np.ndarray:
    """Segments of a binary prediction after thinning its membrane to one-pixel lines.

    A watershed of the binary map seeded with the 4-connected components of ``cells``,
    flooding the membrane 4-connected (as the challenge's Fiji script does), in layers:
    layer d holds the membrane pixels at city-block distance d from the nearest cell. A
    pixel joins the flood of its already-flooded 4-neighbours if they all come from the
    same cell, and becomes a line pixel (0) if they come from two or more (or if they are
    all lines). Within a layer, pixels with an even row + column go first; ties between
    floods are broken by this order. So each segment is 4-connected, no two touching
    pixels belong to different segments, and lines are one pixel wide except where three
    floods meet. With no cells, everything stays 0. It gives the same segments as
    ``skimage.segmentation.watershed(~cells, markers, connectivity=1, watershed_line=True)``
    up to how ties are broken, and is several times faster.

    Args:
        cells: (H, W) binary prediction, 1 = cell interior.

    Returns:
        (H, W) int32 segment ids, 0 = line.
    """
    cells = np.asarray(cells)
    if cells.ndim != 2:
        raise MetricInputError(f"found an array of shape {cells.shape}; expected (height, width)")
    cells = _binary_cells(cells)
    segments, count = ndimage.label(cells, _FOUR)
    return _thin(cells, segments, count)


# ---------------------------------------------------------------------------------------
# threshold sweeps


def _best(values: np.ndarray, thresholds: np.ndarray, minimize: bool) -> Sweep:
    index = int(np.argmin(values) if minimize else np.argmax(values))
    return Sweep(float(values[index]), float(thresholds[index]), values)


def _pixel_f1(prob: np.ndarray, cells: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T,) F1 of the cell class at each threshold, counts pooled over slices."""
    order = np.argsort(thresholds)
    ascending = thresholds[order]
    bins = len(thresholds) + 1
    on_cells = np.zeros(bins, np.int64)
    on_membrane = np.zeros(bins, np.int64)
    for p, c in zip(prob, cells, strict=True):
        # k = number of thresholds below p: the pixel is a predicted cell at the k lowest.
        k = np.searchsorted(ascending, p.reshape(-1), side="left")
        c = c.reshape(-1)
        on_cells += np.bincount(k[c], minlength=bins)
        on_membrane += np.bincount(k[~c], minlength=bins)
    true_pos = on_cells.sum() - np.cumsum(on_cells)[:-1]  # cell pixels with k > index
    false_pos = on_membrane.sum() - np.cumsum(on_membrane)[:-1]
    false_neg = on_cells.sum() - true_pos
    denominator = 2 * true_pos + false_pos + false_neg
    f1 = np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1), 1.0)
    result = np.empty(len(thresholds))
    result[order] = f1
    return result


def _slice_curves(
    prob: np.ndarray, cells: np.ndarray, thresholds: np.ndarray, metrics: frozenset[str]
) -> np.ndarray:
    """(12, T) per-threshold numbers of one slice, rows as ``_ROWS``."""
    curves = np.zeros((len(_ROWS), len(thresholds)))
    truth, _ = ndimage.label(cells, _FOUR)
    inside = truth > 0
    truth_ids = truth[inside]
    for k, t in enumerate(thresholds):
        predicted = prob > t
        segments, count = ndimage.label(predicted, _FOUR)
        if "rand" in metrics:
            curves[0:3, k] = _rand_sums(_table(truth_ids, segments[inside]))
        if "thinned" in metrics:
            table = _table(truth_ids, _thin(predicted, segments, count)[inside])
            curves[3:6, k] = _rand_from_sums(*_rand_sums(table))
            curves[6:9, k] = _info(table)
        if "warping" in metrics:
            errors = _topological_errors(cells, predicted)
            curves[9:12, k] = (
                errors.splits,
                errors.merges,
                errors.total - errors.splits - errors.merges,
            )
    return curves


# Rows of ``_slice_curves``: pixel-pair sums (pooled over slices), scores after thinning
# (averaged over slices), and warping error pixel counts (pooled over slices).
_ROWS = (
    "rand_joint",  # sum n_ij^2
    "rand_truth",  # sum a_i^2
    "rand_predicted",  # sum b_j^2
    "v_rand_split",
    "v_rand_merge",
    "v_rand",
    "v_info_split",
    "v_info_merge",
    "v_info",
    "warping_splits",
    "warping_merges",
    "warping_other",
)


def _sweep_segments(
    prob: np.ndarray, cells: np.ndarray, thresholds: np.ndarray, metrics: set[str], workers: int
) -> dict[str, np.ndarray]:
    """Per-threshold curves of the segment metrics ("rand", "thinned", "warping"), each
    aggregated over slices as the module docstring says."""
    jobs = [(p, c, thresholds, frozenset(metrics)) for p, c in zip(prob, cells, strict=True)]
    if workers > 1 and len(jobs) > 1:
        # The heavy calls (labelling, watershed, array arithmetic) release the GIL.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            per_slice = list(pool.map(lambda job: _slice_curves(*job), jobs))
    else:
        per_slice = [_slice_curves(*job) for job in jobs]
    stacked = dict(zip(_ROWS, np.stack(per_slice, axis=1), strict=True))  # name -> (D, T)
    curves = {}
    if "rand" in metrics:
        joint, truth, predicted = (stacked[name].sum(axis=0) for name in _ROWS[:3])
        curves["rand_f_score"] = np.array(
            [_rand_from_sums(*sums).f_score for sums in zip(joint, truth, predicted, strict=True)]
        )
    if "thinned" in metrics:
        for name in _ROWS[3:9]:
            curves[name] = stacked[name].mean(axis=0)
    if "warping" in metrics:
        for name in _ROWS[9:]:
            curves[name] = stacked[name].sum(axis=0).astype(np.int64)
        splits_and_merges = curves["warping_splits"] + curves["warping_merges"]
        curves["warping_error"] = splits_and_merges / prob.size
    return curves


def pixel_error(probabilities, labels, thresholds: Sequence[float] = PIXEL_THRESHOLDS) -> Sweep:
    """1 - the maximal F1 of the cell class over thresholds; counts pooled over slices.

    Args:
        probabilities: (H, W) or (slices, H, W) probability of the cell class.
        labels: same shape, 0 = membrane, 1 or 255 = cell interior.
        thresholds: cells are ``p > t``; default 0.00, 0.01, ..., 0.99.
    """
    prob, cells = _as_stack(probabilities, labels)
    values = _check_thresholds(thresholds)
    return _best(1.0 - _pixel_f1(prob, cells, values), values, minimize=True)


def rand_error(
    probabilities, labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, workers: int = 1
) -> Sweep:
    """1 - the maximal foreground-restricted Rand F-score (no thinning); pooled over slices.

    Pixel pairs are counted per slice (segments never span slices) and summed over slices
    before the F-score is taken. Args as in ``score_isbi_stack``.
    """
    prob, cells = _as_stack(probabilities, labels)
    values = _check_thresholds(thresholds)
    f_score = _sweep_segments(prob, cells, values, {"rand"}, workers)["rand_f_score"]
    return _best(1.0 - f_score, values, minimize=True)


def v_scores(
    probabilities, labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, workers: int = 1
) -> dict[str, Sweep]:
    """V_rand and V_info after border thinning, mean over slices, maximum over thresholds.

    Args as in ``score_isbi_stack``.

    Returns:
        Sweeps named ``v_rand`` and ``v_info``, and ``v_rand_split``, ``v_rand_merge``,
        ``v_info_split``, ``v_info_merge``: each of the latter is the split or merge score
        at the threshold that maximises its F-score (not its own maximum).
    """
    prob, cells = _as_stack(probabilities, labels)
    values = _check_thresholds(thresholds)
    return _v_sweeps(_sweep_segments(prob, cells, values, {"thinned"}, workers), values)


def _v_sweeps(curves: dict[str, np.ndarray], thresholds: np.ndarray) -> dict[str, Sweep]:
    sweeps = {}
    for score in ("v_rand", "v_info"):
        best = _best(curves[score], thresholds, minimize=False)
        sweeps[score] = best
        index = int(np.argmax(curves[score]))
        for part in ("split", "merge"):
            curve = curves[f"{score}_{part}"]
            sweeps[f"{score}_{part}"] = Sweep(float(curve[index]), best.threshold, curve)
    return sweeps


def warping_error(
    probabilities, labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, workers: int = 1
) -> Sweep:
    """Minimum over thresholds of (split + merge pixels) / pixels after warping the labels.

    Each slice's label is warped toward the binary prediction by simple-pixel flips
    (``unet.metrics.warping``); the remaining split and merge pixels of all slices are
    summed and divided by the number of pixels of the stack (the ISBI 2012 "splits and
    mergers" warping error). Like the challenge's, it does not see cells that are missing
    altogether (a cell that shrinks away is neither a split nor a merge), so an empty
    prediction scores 0: read it with the pixel and Rand errors. Args as in
    ``score_isbi_stack``.
    """
    prob, cells = _as_stack(probabilities, labels)
    values = _check_thresholds(thresholds)
    curve = _sweep_segments(prob, cells, values, {"warping"}, workers)["warping_error"]
    return _best(curve, values, minimize=True)


def score_isbi_stack(
    probabilities,
    labels,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    pixel_thresholds: Sequence[float] = PIXEL_THRESHOLDS,
    workers: int = 1,
) -> dict[str, float]:
    """All ISBI 2012 metrics of a probability map against binary labels, in one pass.

    Args:
        probabilities: (H, W) or (slices, H, W) probability of the cell class, in [0, 1].
        labels: same shape, 0 = membrane, 1 or 255 = cell interior.
        thresholds: for the Rand error, V_rand, V_info and the warping error (cells are
            ``p > t``); default 0.0, 0.1, ..., 0.9.
        pixel_thresholds: for the pixel error; default 0.00, 0.01, ..., 0.99.
        workers: threads that score slices in parallel (the results do not depend on it).

    Returns:
        ``pixel_error``, ``rand_error``, ``v_rand``, ``v_info``, ``warping_error``, each with
        ``<name>_threshold`` (where it is best); ``v_rand_split``, ``v_rand_merge``,
        ``v_info_split``, ``v_info_merge`` at their F-score's best threshold; at the warping
        error's best threshold, the pixel counts ``warping_splits``, ``warping_merges`` and
        ``warping_other`` (topological errors that are neither: cells or one-pixel
        membrane holes added or removed); and ``slices``.
    """
    prob, cells = _as_stack(probabilities, labels)
    values = _check_thresholds(thresholds)
    pixel_values = _check_thresholds(pixel_thresholds)
    pixel = _best(1.0 - _pixel_f1(prob, cells, pixel_values), pixel_values, minimize=True)
    curves = _sweep_segments(prob, cells, values, {"rand", "thinned", "warping"}, workers)
    rand = _best(1.0 - curves["rand_f_score"], values, minimize=True)
    warp = _best(curves["warping_error"], values, minimize=True)
    at_warp = int(np.argmin(curves["warping_error"]))

    scores: dict[str, float] = {
        "pixel_error": pixel.value,
        "pixel_error_threshold": pixel.threshold,
        "rand_error": rand.value,
        "rand_error_threshold": rand.threshold,
    }
    for name, sweep in _v_sweeps(curves, values).items():
        scores[name] = sweep.value
        if name in ("v_rand", "v_info"):
            scores[f"{name}_threshold"] = sweep.threshold
    scores |= {
        "warping_error": warp.value,
        "warping_error_threshold": warp.threshold,
        "warping_splits": int(curves["warping_splits"][at_warp]),
        "warping_merges": int(curves["warping_merges"][at_warp]),
        "warping_other": int(curves["warping_other"][at_warp]),
        "slices": prob.shape[0],
    }
    return scores
