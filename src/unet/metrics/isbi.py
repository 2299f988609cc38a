"""ISBI 2012 EM segmentation challenge metrics, each swept over binarisation thresholds.

Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation algorithms
for connectomics", Front. Neuroanat. 9:142, and the challenge's Fiji evaluation scripts.

Inputs: a probability map of the cell class (1 = cell interior, values in [0, 1]) and a
binary label (1 or 255 = cell interior, 0 = membrane), each (H, W) or (slices, H, W); pass
one slice for per-slice scores. A threshold t makes the predicted cells ``p > t`` (as the
Fiji scripts do). The pixel error lives in ``unet.metrics.pixels`` (shared with training's
per-epoch validation); ``score_isbi_stack`` reports it with the others.

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

Scores: the Rand and information split, merge and F-scores of the contingency table over
the ground-truth cell pixels of a slice (formulas in ``unet.metrics.contingency``); a slice
without ground-truth cells scores 1. The Rand error is 1 - the same Rand F-score, computed on the
predicted components without thinning and with the pixel-pair sums pooled over slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from unet.metrics.contingency import info, rand_from_sums, rand_sums, table
from unet.metrics.inputs import as_stack
from unet.metrics.pixels import PixelCounts
from unet.metrics.thinning import FOUR, thin
from unet.metrics.thresholds import (
    DEFAULT_THRESHOLDS,
    PIXEL_THRESHOLDS,
    Sweep,
    best,
    check_thresholds,
)
from unet.metrics.warping import _topological_errors


def _slice_curves(
    prob: np.ndarray, cells: np.ndarray, thresholds: np.ndarray, metrics: frozenset[str]
) -> np.ndarray:
    """(12, T) per-threshold numbers of one slice, rows as ``_ROWS``."""
    curves = np.zeros((len(_ROWS), len(thresholds)))
    truth, _ = ndimage.label(cells, FOUR)
    inside = truth > 0
    truth_ids = truth[inside]
    for k, t in enumerate(thresholds):
        predicted = prob > t
        segments, count = ndimage.label(predicted, FOUR)
        if "rand" in metrics:
            curves[0:3, k] = rand_sums(table(truth_ids, segments[inside]))
        if "thinned" in metrics:
            counts = table(truth_ids, thin(predicted, segments, count)[inside])
            curves[3:6, k] = rand_from_sums(*rand_sums(counts))
            curves[6:9, k] = info(counts)
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
            [rand_from_sums(*sums).f_score for sums in zip(joint, truth, predicted, strict=True)]
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


def rand_error(
    probabilities, labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, workers: int = 1
) -> Sweep:
    """1 - the maximal foreground-restricted Rand F-score (no thinning); pooled over slices.

    Pixel pairs are counted per slice (segments never span slices) and summed over slices
    before the F-score is taken. Args as in ``score_isbi_stack``.
    """
    prob, cells, _ = as_stack(probabilities, labels)
    values = check_thresholds(thresholds)
    f_score = _sweep_segments(prob, cells, values, {"rand"}, workers)["rand_f_score"]
    return best(1.0 - f_score, values, minimize=True)


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
    prob, cells, _ = as_stack(probabilities, labels)
    values = check_thresholds(thresholds)
    return _v_sweeps(_sweep_segments(prob, cells, values, {"thinned"}, workers), values)


def _v_sweeps(curves: dict[str, np.ndarray], thresholds: np.ndarray) -> dict[str, Sweep]:
    sweeps = {}
    for score in ("v_rand", "v_info"):
        top = best(curves[score], thresholds, minimize=False)
        sweeps[score] = top
        index = int(np.argmax(curves[score]))
        for part in ("split", "merge"):
            curve = curves[f"{score}_{part}"]
            sweeps[f"{score}_{part}"] = Sweep(float(curve[index]), top.threshold, curve)
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
    prob, cells, _ = as_stack(probabilities, labels)
    values = check_thresholds(thresholds)
    curve = _sweep_segments(prob, cells, values, {"warping"}, workers)["warping_error"]
    return best(curve, values, minimize=True)


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
    prob, cells, _ = as_stack(probabilities, labels)
    values = check_thresholds(thresholds)
    pixel_counts = PixelCounts(pixel_thresholds)
    pixel_counts.add_checked(prob, cells, np.ones(prob.shape, bool))
    pixel = pixel_counts.pixel_error()
    curves = _sweep_segments(prob, cells, values, {"rand", "thinned", "warping"}, workers)
    rand = best(1.0 - curves["rand_f_score"], values, minimize=True)
    warping = best(curves["warping_error"], values, minimize=True)
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
        "warping_error": warping.value,
        "warping_error_threshold": warping.threshold,
        "warping_splits": int(curves["warping_splits"][at_warp]),
        "warping_merges": int(curves["warping_merges"][at_warp]),
        "warping_other": int(curves["warping_other"][at_warp]),
        "slices": prob.shape[0],
    }
    return scores
