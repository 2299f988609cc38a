"""Post-processing: probability map -> instance labels (unet.inference.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from unet.inference.postprocess import (
    PostProcessing,
    PostProcessingError,
    boundary_map,
    choose_postprocessing,
)
from unet.metrics import score_cell_frames


def disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def touching_discs(shape=(64, 96)):
    """Two discs that touch, as instances, and the probability a trained net gives them:
    high inside, low on the one-pixel separation line between them, zero outside."""
    a, b = disc(shape, (32, 30), 18), disc(shape, (32, 64), 18)
    truth = np.zeros(shape, np.int32)
    truth[a] = 1
    truth[b & ~a] = 2
    line = np.zeros(shape, bool)  # the pixels of disc 2 that touch disc 1
    line[:, 1:] |= (truth[:, 1:] == 2) & (truth[:, :-1] == 1)
    line[:, :-1] |= (truth[:, :-1] == 2) & (truth[:, 1:] == 1)
    probability = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    probability[line] = 0.3
    return truth, probability


def test_touching_discs_separated_by_a_gap_come_back_as_two_full_cells():
    truth, probability = touching_discs()
    labels = PostProcessing(threshold=0.5, regrow="probability", grow_threshold=0.1)(probability)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, truth > 0)  # the gap is given back
    for k in (1, 2):  # each cell is one disc, up to the one-pixel line between them
        ids, counts = np.unique(labels[truth == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.97
    # without regrowth the gap stays background and the cells are smaller
    plain = PostProcessing(threshold=0.5)(probability)
    assert plain.max() == 2 and np.count_nonzero(plain) < np.count_nonzero(truth)


def test_distance_regrowth_also_covers_both_discs():
    truth, probability = touching_discs()
    labels = PostProcessing(threshold=0.5, regrow="distance", grow_threshold=0.1)(probability)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, truth > 0)


def test_a_hole_is_filled():
    ring = disc((40, 40), (20, 20), 12) & ~disc((40, 40), (20, 20), 4)
    probability = np.where(ring, 0.9, 0.1)
    labels = PostProcessing(fill_holes=True)(probability)
    np.testing.assert_array_equal(labels == 1, disc((40, 40), (20, 20), 12))
    assert np.count_nonzero(PostProcessing()(probability)) == np.count_nonzero(ring)


def test_a_hole_shared_by_two_objects_is_not_given_to_either():
    probability = np.zeros((20, 20))
    probability[5:15, 5:10] = probability[5:15, 11:15] = 0.9  # two cells with a wall between
    probability[8:12, 7:9] = 0.0  # background inside the left one: a hole
    labels = PostProcessing(fill_holes=True)(probability)
    assert (labels[8:12, 7:9] == labels[6, 6]).all()
    assert (labels[:, 10] == 0).all()  # the wall between the two is no hole


def test_a_speck_below_min_area_is_dropped_and_labels_stay_consecutive():
    probability = np.zeros((30, 30))
    probability[2:4, 2:4] = 0.9  # 4 px speck
    probability[10:20, 10:20] = 0.9  # 100 px cell
    probability[25:28, 25:28] = 0.9  # 9 px
    labels = PostProcessing(min_area=5)(probability)
    assert labels.max() == 2
    assert (labels[2:4, 2:4] == 0).all() and (labels[10:20, 10:20] == 1).all()
    assert (labels[25:28, 25:28] == 2).all()


def test_small_objects_only_at_the_image_border_are_dropped():
    probability = np.zeros((30, 30))
    probability[0:3, 10:14] = 0.9  # 12 px at the border
    probability[12:15, 12:16] = 0.9  # 12 px inside
    labels = PostProcessing(border_min_area=20)(probability)
    assert labels.max() == 1 and (labels[12:15, 12:16] == 1).all()


@settings(max_examples=40, deadline=None)
@given(
    probability=arrays(np.float32, (23, 31), elements=st.floats(0, 1, width=32)),
    threshold=st.floats(0.05, 0.95),
    min_area=st.integers(0, 6),
)
def test_plain_settings_are_connected_components_of_the_threshold(probability, threshold, min_area):
    """The paper-faithful default route equals an independent implementation: SciPy's
    4-connected labelling with small components removed, numbered in scan order."""
    expected, _ = ndimage.label(probability > threshold)
    sizes = np.bincount(expected.ravel())
    keep = sizes >= min_area
    keep[0] = False
    expected = np.where(keep[expected], expected, 0)
    renumber = np.zeros(len(sizes), np.int64)  # kept ids -> 1..n in scan order
    kept = np.flatnonzero(keep)
    renumber[kept] = np.arange(1, len(kept) + 1)
    expected = renumber[expected]
    labels = PostProcessing(threshold=threshold, min_area=min_area)(probability)
    np.testing.assert_array_equal(labels, expected)


@settings(max_examples=40, deadline=None)
@given(labels=arrays(np.int32, (17, 19), elements=st.integers(0, 4)))
def test_boundary_map_components_lie_in_one_object_each(labels):
    cells = boundary_map(labels)
    components, n = ndimage.label(cells > 0.5)  # 4-connected
    for k in range(1, n + 1):
        assert len(np.unique(labels[components == k])) == 1
    assert not cells[labels == 0].any()


def test_chosen_settings_beat_plain_components_on_merged_cells():
    truth, probability = touching_discs()
    probability[probability == 0.3] = 0.55  # the border is too faint: p > 0.5 merges them

    def seg(labels):
        return score_cell_frames(labels, [truth])["seg"]

    plain = seg([PostProcessing()(probability)])
    chosen, score = choose_postprocessing([probability], seg)
    assert plain < 0.55  # one merged object: each cell's Jaccard with it is about 0.5
    assert score > 0.95 and score == pytest.approx(seg([chosen(probability)]))
    assert chosen.threshold > 0.55  # seeds above the faint border: two cells
    assert seg([chosen.replace(regrow="none")(probability)]) <= score  # regrowth never hurt


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"min_area": -1}, "postprocess.min_area=-1"),
        ({"border_min_area": 2.5}, "postprocess.border_min_area"),
        ({"threshold": 0.3, "grow_threshold": 0.6}, "postprocess.grow_threshold=0.6"),
        ({"threshold": 1.0}, "postprocess.threshold=1.0"),
        ({"threshold": "high"}, "postprocess.threshold='high'"),
        ({"regrow": "watershed"}, "postprocess.regrow='watershed'"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_their_name(changes, named):
    with pytest.raises(PostProcessingError) as err:
        PostProcessing(**changes)
    message = str(err.value)
    assert named in message and "expected" in message and "\n" not in message


def test_unknown_stored_setting_is_refused():
    with pytest.raises(PostProcessingError, match="unknown setting.*smoothing"):
        PostProcessing.from_dict({"threshold": 0.5, "smoothing": 2})
    assert PostProcessing.from_dict(PostProcessing(min_area=3).to_dict()).min_area == 3
    assert PostProcessing().replace(min_area=None, threshold=0.7).threshold == 0.7
