"""Cell Tracking Challenge segmentation measure (SEG) and object-level diagnostics.

Maška et al. 2014 (Bioinformatics 30:1609) and Ulman et al. 2017 (Nat. Methods 14:1141):
for each ground-truth object R, its match is the predicted object S that covers more than
half of it, |R ∩ S| > 0.5 |R| (there is at most one), and its score is the Jaccard index
|R ∩ S| / |R ∪ S|, or 0 if it has no match. SEG is the mean score over all ground-truth
objects of all frames (pooled over frames, not a mean of per-frame means).

Diagnostics, counts pooled over frames:
- misses: ground-truth objects with no match.
- merges: predicted objects that are the match of two or more ground-truth objects.
- splits: ground-truth objects that two or more predicted objects lie mostly inside
  (S lies mostly inside R when |R ∩ S| > 0.5 |S|): over-segmented cells.
- false positives: predicted objects that are neither a match nor mostly inside a
  ground-truth object.
- cell IoU: |P ∩ G| / |P ∪ G| of the foregrounds (id > 0), pixels pooled over frames.

Ground truth that labels only some cells (Cell Tracking Challenge ``man_seg`` frames can)
leaves SEG unbiased, but predictions of unlabelled cells count as false positives and
lower the cell IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from unet.errors import MetricInputError


class ObjectMatches(NamedTuple):
    """How the objects of one predicted frame match those of its ground truth."""

    truth_ids: np.ndarray  # (K,) the ground-truth object ids, ascending
    jaccard: np.ndarray  # (K,) Jaccard index of each, 0 where it has no match
    matched_ids: np.ndarray  # (K,) the id of the predicted object matching each, 0 if none
    predicted_objects: int
    splits: int
    merges: int
    false_positives: int
    intersection: int  # foreground pixels in both
    union: int  # foreground pixels in either

    @property
    def misses(self) -> int:
        return int(np.count_nonzero(self.matched_ids == 0))


def _check_frame(predicted, truth, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    where = "" if frame is None else f"frame {frame}: "
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.ndim != 2 or predicted.shape != truth.shape or predicted.size == 0:
        raise MetricInputError(
            f"{where}the prediction has shape {predicted.shape} and the ground truth "
            f"{truth.shape}; expected two instance-label images of the same (height, width)"
        )
    for name, image in (("prediction", predicted), ("ground truth", truth)):
        if not np.issubdtype(image.dtype, np.integer):
            raise MetricInputError(
                f"{where}the {name} has dtype {image.dtype}; expected an instance-label image "
                "of integer ids (0 = background, 1, 2, ... = objects). Label the connected "
                "components of a binary mask first, e.g. scipy.ndimage.label(mask)."
            )
        if image.size and image.min() < 0:
            raise MetricInputError(
                f"{where}the {name} has negative ids (down to {image.min()}); expected "
                "0 = background and positive object ids"
            )
    return predicted, truth


def _dense_ids(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, dense): the sorted ids with 0 first, and the image as indices into them."""
    ids, dense = np.unique(image.reshape(-1), return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
        dense = dense + 1
    return ids, dense


def _match(predicted: np.ndarray, truth: np.ndarray) -> ObjectMatches:
    truth_ids, t = _dense_ids(truth)
    predicted_ids, p = _dense_ids(predicted)
    truth_sizes = np.bincount(t, minlength=truth_ids.size)
    predicted_sizes = np.bincount(p, minlength=predicted_ids.size)

    both = (t > 0) & (p > 0)
    columns = predicted_ids.size
    pairs, overlap = np.unique(t[both].astype(np.int64) * columns + p[both], return_counts=True)
    i, j = pairs // columns, pairs % columns  # dense ground-truth and predicted indices

    # Cell Tracking Challenge rule: S matches R when |R ∩ S| > 0.5 |R|.
    is_match = 2 * overlap > truth_sizes[i]
    matched = np.zeros(truth_ids.size, np.int64)
    matched[i[is_match]] = j[is_match]
    jaccard = np.zeros(truth_ids.size)
    jaccard[i[is_match]] = overlap[is_match] / (
        truth_sizes[i[is_match]] + predicted_sizes[j[is_match]] - overlap[is_match]
    )
    inside = 2 * overlap > predicted_sizes[j]  # S lies mostly inside R
    fragments = np.bincount(i[inside], minlength=truth_ids.size)
    matches_per_prediction = np.bincount(j[is_match], minlength=columns)
    explained = np.zeros(columns, bool)
    explained[j[is_match | inside]] = True

    return ObjectMatches(
        truth_ids=truth_ids[1:],
        jaccard=jaccard[1:],
        matched_ids=predicted_ids[matched[1:]],  # predicted_ids[0] is 0: no match
        predicted_objects=columns - 1,
        splits=int(np.count_nonzero(fragments[1:] >= 2)),
        merges=int(np.count_nonzero(matches_per_prediction[1:] >= 2)),
        false_positives=int(np.count_nonzero(~explained[1:])),
        intersection=int(np.count_nonzero(both)),
        union=int(np.count_nonzero((t > 0) | (p > 0))),
    )


def match_objects(predicted: np.ndarray, truth: np.ndarray) -> ObjectMatches:
    """Match the objects of one frame by the Cell Tracking Challenge rule.

    Args:
        predicted: (H, W) predicted instance ids, 0 = background.
        truth: (H, W) ground-truth instance ids (``man_seg``, uint16), 0 = background.
    """
    return _match(*_check_frame(predicted, truth))


def _frames(images, what: str) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images]
        if images.ndim == 3:
            return list(images)
        raise MetricInputError(
            f"{what}: found an array of shape {images.shape}; expected one frame "
            "(height, width), a stack (frames, height, width) or a list of frames"
        )
    return list(images)


def score_cell_frames(
    predictions: Sequence[np.ndarray] | np.ndarray, ground_truths: Sequence[np.ndarray] | np.ndarray
) -> dict[str, float]:
    """SEG, cell IoU and object counts over frames (everything pooled over frames).

    Args:
        predictions: predicted instance-label frames, each (H, W), 0 = background; a list
            (frames may differ in size), a (frames, H, W) stack or one frame.
        ground_truths: the ground-truth instance masks of the same frames, in the same order.

    Returns:
        ``seg``, ``cell_iou``, and the counts ``frames``, ``truth_objects``,
        ``predicted_objects``, ``matched``, ``misses``, ``splits``, ``merges``,
        ``false_positives`` (see the module docstring).
    """
    predicted, truth = _frames(predictions, "predictions"), _frames(ground_truths, "ground truth")
    if len(predicted) != len(truth):
        raise MetricInputError(
            f"found {len(predicted)} predicted frames and {len(truth)} ground-truth frames; "
            "expected one prediction per ground-truth frame"
        )
    matches = [
        _match(*_check_frame(p, t, k))
        for k, (p, t) in enumerate(zip(predicted, truth, strict=True))
    ]
    jaccard = np.concatenate([m.jaccard for m in matches]) if matches else np.zeros(0)
    if jaccard.size == 0:
        raise MetricInputError(
            f"found no ground-truth objects in {len(truth)} frames; expected at least one "
            "object (id > 0): SEG is a mean over ground-truth objects"
        )
    union = sum(m.union for m in matches)
    return {
        "seg": float(jaccard.mean()),
        "cell_iou": sum(m.intersection for m in matches) / union if union else 1.0,
        "frames": len(matches),
        "truth_objects": int(jaccard.size),
        "predicted_objects": sum(m.predicted_objects for m in matches),
        "matched": int(sum(np.count_nonzero(m.matched_ids) for m in matches)),
        "misses": sum(m.misses for m in matches),
        "splits": sum(m.splits for m in matches),
        "merges": sum(m.merges for m in matches),
        "false_positives": sum(m.false_positives for m in matches),
    }
