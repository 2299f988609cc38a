"""Scoring a predicted split (unet.evaluation.task) on hand-made images."""

from __future__ import annotations

import numpy as np
import pytest

from unet.evaluation.task import SplitPredictions, heldout_score, score_split, subset


def discs_split(copies: int = 2) -> SplitPredictions:
    """Images of two touching discs whose separating line the 'network' saw only faintly
    (p = 0.55 there): plain components of p > 0.5 merge them."""
    yy, xx = np.mgrid[:64, :96]
    a = (yy - 32) ** 2 + (xx - 30) ** 2 <= 18**2
    b = ((yy - 32) ** 2 + (xx - 64) ** 2 <= 18**2) & ~a
    truth = np.where(a, 1, np.where(b, 2, 0)).astype(np.int32)
    line = np.zeros(a.shape, bool)
    line[:, 1:] |= b[:, 1:] & a[:, :-1]
    probability = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    probability[line] = 0.55
    n = copies
    return SplitPredictions(
        [probability] * n, [(truth > 0).astype(np.uint8)] * n, [np.ones(a.shape)] * n, [truth] * n
    )


def test_chosen_post_processing_beats_plain_components_and_is_checked_on_held_out_images():
    split = discs_split()
    plain, _, _ = score_split(split)
    chosen, settings, how = score_split(split, choose=True)
    assert plain["val/seg"] == plain["val/seg_plain"] and plain["val/seg"] < 0.55
    assert chosen["val/seg"] > 0.95 and how["score"] == "seg"
    assert chosen["val/seg_plain"] == plain["val/seg"]  # the untuned figure stays reported
    # identical halves: what one half chooses works as well on the other
    assert chosen["val/seg_heldout"] == pytest.approx(chosen["val/seg"])
    assert settings.threshold > 0.55


def test_held_out_score_needs_two_images_and_subsets_keep_their_order():
    split = discs_split(copies=3)
    assert heldout_score(subset(split, [0])) == {}
    part = subset(split, [2, 0])
    assert len(part.probabilities) == 2 and part.instances[0] is split.instances[2]


def membranes_split(copies: int = 2) -> SplitPredictions:
    """ISBI-like images (no instance masks): nine cells separated by one-pixel membranes,
    one of them drawn faintly by the 'network' (p = 0.45 where the membrane is)."""
    cells = np.ones((64, 64), np.uint8)
    cells[[21, 42], :] = 0
    cells[:, [21, 42]] = 0
    probability = np.where(cells > 0, 0.95, 0.05).astype(np.float32)
    probability[21, :21] = 0.45
    n = copies
    return SplitPredictions([probability] * n, [cells] * n, [np.ones(cells.shape)] * n, None)


def test_isbi_held_out_scores_give_the_labels_rand_error_and_v_rand():
    chosen, _, how = score_split(membranes_split(), choose=True)
    assert how["score"] == "labels_rand_error"
    held_out = heldout_score(membranes_split())
    assert set(held_out) == {"labels_rand_error_heldout", "labels_v_rand_heldout"}
    # identical halves: the held-out labels are the chosen ones, scored the same way
    assert held_out["labels_rand_error_heldout"] == pytest.approx(chosen["val/labels_rand_error"])
    assert held_out["labels_v_rand_heldout"] == pytest.approx(chosen["val/labels_v_rand"])
    assert 0.9 < held_out["labels_v_rand_heldout"] <= 1.0
