import math

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.metrics import adapted_rand_error
from skimage.segmentation import watershed

from unet.errors import UserError
from unet.metrics import (
    MetricInputError,
    info_scores,
    pixel_error,
    rand_error,
    rand_scores,
    score_isbi_stack,
    thin_boundaries,
    v_scores,
    warping_error,
)

FOUR = ndimage.generate_binary_structure(2, 1)


def segments(cells) -> np.ndarray:
    return ndimage.label(np.asarray(cells, bool), FOUR)[0]


def random_labels(seed: int, shape=(2, 24, 28), cells: int = 12) -> np.ndarray:
    """ISBI-like uint8 labels (255 = cell interior, 0 = membrane): Voronoi cells around
    random seeds, separated by one-pixel membranes."""
    rng = np.random.default_rng(seed)
    labels = np.empty(shape, np.uint8)
    for z in range(shape[0]):
        seeds = np.zeros(shape[1:], np.int32)
        at = rng.integers(0, shape[1], cells), rng.integers(0, shape[2], cells)
        seeds[at] = np.arange(1, cells + 1)
        nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)[1]
        region = seeds[tuple(nearest)]
        membrane = np.zeros(shape[1:], bool)
        membrane[:, 1:] |= region[:, 1:] != region[:, :-1]
        membrane[1:] |= region[1:] != region[:-1]
        labels[z] = np.where(membrane, 0, 255)
    return labels


# ---------------------------------------------------------------------------------------
# identical segmentations


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_identical_segmentations_score_perfectly(seed):
    labels = random_labels(seed)
    assert all(segments(slice_).max() >= 2 for slice_ in labels)  # several cells per slice
    # a soft map that any threshold in [0.2, 0.8) turns into exactly the labels
    probabilities = np.where(labels > 0, 0.8, 0.2)
    scores = score_isbi_stack(probabilities, labels)
    assert scores["pixel_error"] == 0
    assert scores["rand_error"] == 0
    assert scores["v_rand"] == pytest.approx(1.0) and scores["v_info"] == pytest.approx(1.0)
    assert scores["warping_error"] == 0
    assert 0.2 <= scores["pixel_error_threshold"] < 0.8
    assert 0.2 <= scores["v_rand_threshold"] < 0.8
    assert scores["slices"] == 2


# ---------------------------------------------------------------------------------------
# one split and one merge, by hand

# One image row, 4-connected segments. Ground truth: cells A (4 px), B (2 px), C (3 px).
# Prediction: A is split by a membrane pixel into P1 (2 px) and P2 (1 px); B and C are
# merged into P3 (the prediction has cell where the truth has membrane, column 7).
TRUTH = np.array([[1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]], np.uint8)
PREDICTION = np.array([[1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1]], np.uint8)
# Contingency table over the N = 9 truth cell pixels (truth membrane is left out):
#          P1  P2  P3  singleton (col 2)
#     A     2   1   0   1
#     B     0   0   2   0
#     C     0   0   3   0
# sum n_ij^2 = 2^2 + 1^2 + 2^2 + 3^2 + 1 (the singleton) = 19
# sum a_i^2  = 4^2 + 2^2 + 3^2                          = 29  (truth segment sizes)
# sum b_j^2  = 2^2 + 1^2 + 5^2 + 1                      = 31  (predicted sizes on truth cells)
RAND_SPLIT, RAND_MERGE, RAND_F = 19 / 29, 19 / 31, 2 * 19 / (29 + 31)


def plogp(*counts, n=9):
    return sum(c / n * math.log(c / n) for c in counts)


# Entropies of the same table (natural log; the singleton is a segment of probability 1/9):
H_TRUTH = -plogp(4, 2, 3)
H_PREDICTION = -plogp(2, 1, 5, 1)
H_JOINT = -plogp(2, 1, 1, 2, 3)
MUTUAL = H_TRUTH + H_PREDICTION - H_JOINT


def test_split_and_merge_rand_scores_by_hand():
    scores = rand_scores(segments(TRUTH), segments(PREDICTION))
    assert scores.split == pytest.approx(RAND_SPLIT)  # 0.655
    assert scores.merge == pytest.approx(RAND_MERGE)  # 0.613
    assert scores.f_score == pytest.approx(RAND_F)  # 38 / 60 = 0.633
    assert rand_error(PREDICTION.astype(float), TRUTH).value == pytest.approx(1 - RAND_F)


def test_split_and_merge_info_scores_by_hand():
    scores = info_scores(segments(TRUTH), segments(PREDICTION))
    assert scores.split == pytest.approx(MUTUAL / H_PREDICTION)
    assert scores.merge == pytest.approx(MUTUAL / H_TRUTH)
    assert scores.f_score == pytest.approx(2 * MUTUAL / (H_TRUTH + H_PREDICTION))
    assert 0.5 < scores.f_score < 0.7
    # the one-pixel membranes are thin already: thinning changes nothing
    v = v_scores(PREDICTION.astype(float), TRUTH)
    assert v["v_rand"].value == pytest.approx(RAND_F)
    assert v["v_info"].value == pytest.approx(scores.f_score)
    assert v["v_rand_split"].value == pytest.approx(RAND_SPLIT)
    assert v["v_info_merge"].value == pytest.approx(MUTUAL / H_TRUTH)


def test_warping_error_of_the_split_and_the_merge():
    # the split pixel (column 2) and the merge pixel (column 7) cannot be warped away
    assert warping_error(PREDICTION.astype(float), TRUTH).value == pytest.approx(2 / 11)


# ---------------------------------------------------------------------------------------
# thick predicted boundaries

# Ground truth: two 8x4 cells, A (columns 0-3) and B (5-8), and a one-pixel membrane.
# Prediction: the same cells with a three-pixel membrane (columns 3-5).
THICK_TRUTH = np.ones((8, 9), np.uint8)
THICK_TRUTH[:, 4] = 0
THICK_PREDICTION = np.ones((8, 9), np.uint8)
THICK_PREDICTION[:, 3:6] = 0


def test_thick_boundaries_make_singletons_and_thinning_removes_them():
    # Without thinning, columns 3 and 5 are 16 singletons inside A and B:
    #   sum n_ij^2 = 24^2 + 24^2 + 16 = 1168, sum a_i^2 = 32^2 + 32^2 = 2048,
    #   sum b_j^2 = 24^2 + 24^2 + 16 = 1168: split = 1168 / 2048, merge = 1.
    scores = rand_scores(segments(THICK_TRUTH), segments(THICK_PREDICTION))
    assert scores.split == pytest.approx(1168 / 2048)
    assert scores.merge == 1.0
    assert scores.f_score == pytest.approx(2 * 1168 / (2048 + 1168))  # 0.726
    # Thinning floods columns 3 and 5 from the cells and leaves column 4 as the line:
    # exactly the ground truth, so V_rand = V_info = 1 while the Rand error is 0.274.
    np.testing.assert_array_equal(thin_boundaries(THICK_PREDICTION) > 0, THICK_TRUTH > 0)
    scores = score_isbi_stack(THICK_PREDICTION.astype(float), THICK_TRUTH)
    assert scores["rand_error"] == pytest.approx(1 - 2 * 1168 / (2048 + 1168))
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0
    assert scores["warping_error"] == 0  # thicker membranes keep the topology
    assert scores["pixel_error"] == pytest.approx(1 - 2 * 48 / (2 * 48 + 16))


def test_scikit_image_adapted_rand_error_differs_from_the_challenge():
    # skimage.metrics.adapted_rand_error counts the predicted membrane (label 0) as ONE
    # segment and counts pairs of distinct pixels, n(n - 1) instead of n^2:
    #   sum n(n-1) over the table = 8*7 + 8*7 + 24*23 + 24*23  = 1216
    #   truth sizes:  32*31 + 32*31                           = 1984
    #   predicted sizes (membrane 16, P_A 24, P_B 24): 16*15 + 24*23 + 24*23 = 1344
    error, precision, recall = adapted_rand_error(segments(THICK_TRUTH), segments(THICK_PREDICTION))
    assert error == pytest.approx(1 - 1216 / ((1984 + 1344) / 2))  # 0.269, not 0.274
    ours = rand_scores(segments(THICK_TRUTH), segments(THICK_PREDICTION))
    assert 1 - ours.f_score == pytest.approx(1 - 2 * 1168 / (2048 + 1168))
    assert error != pytest.approx(1 - ours.f_score, abs=1e-3)
    # Its "precision" divides by the truth sizes: it is the split score (a recall), and
    # its "recall" divides by the predicted sizes: the merge score, which it puts below 1
    # because the one membrane segment lies in both cells. The challenge's merge is 1:
    # nothing was merged.
    assert precision == pytest.approx(1216 / 1984) and recall == pytest.approx(1216 / 1344)
    assert precision < recall < 1.0 == ours.merge


# ---------------------------------------------------------------------------------------
# sweeps and aggregation


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_pixel_error_equals_f1_counted_at_each_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = random_labels(seed, (2, 9, 11))
    probabilities = rng.random(labels.shape).round(2)  # ties with the thresholds too
    thresholds = [0.5, 0.0, 0.25, 0.99, 0.3, 0.31]  # any order
    sweep = pixel_error(probabilities, labels, thresholds)
    cells = labels > 0
    for t, value in zip(thresholds, sweep.per_threshold, strict=True):
        predicted = probabilities > t
        tp, fp = (predicted & cells).sum(), (predicted & ~cells).sum()
        fn = (~predicted & cells).sum()
        assert value == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn))
    assert sweep.value == min(sweep.per_threshold)
    assert sweep.threshold == thresholds[int(np.argmin(sweep.per_threshold))]


def test_rand_error_pools_pairs_and_v_rand_averages_slices():
    # slice 0 is perfect, slice 1 is the thick-boundary case (same shape)
    labels = np.stack([THICK_TRUTH, THICK_TRUTH])
    probabilities = np.stack([THICK_TRUTH, THICK_PREDICTION]).astype(float)
    # pooled pair counts: (2048 + 1168) / (2048 + 2048 + 2048 + 1168)
    assert rand_error(probabilities, labels).value == pytest.approx(
        1 - 2 * (2048 + 1168) / (2048 + 2048 + 2048 + 1168)
    )
    # a slice whose thinned prediction splits a cell: V_rand is the mean of the slices
    split = THICK_TRUTH.copy()
    split[4, :4] = 0  # a membrane line across cell A (columns 0-3)
    probabilities = np.stack([THICK_TRUTH, split]).astype(float)
    one = rand_scores(segments(THICK_TRUTH), thin_boundaries(split)).f_score
    assert one < 1
    assert v_scores(probabilities, labels)["v_rand"].value == pytest.approx((1 + one) / 2)


def test_threshold_sweep_finds_the_best_threshold():
    # cells at 0.7, membrane at 0.45: thresholds 0.5 and 0.6 give exactly the labels
    labels = np.stack([THICK_TRUTH])
    probabilities = np.where(labels > 0, 0.7, 0.45)
    scores = score_isbi_stack(probabilities, labels)
    assert scores["rand_error"] == 0 and scores["rand_error_threshold"] == 0.5
    assert scores["warping_error"] == 0 and scores["warping_error_threshold"] == 0.5
    sweep = rand_error(probabilities, labels)
    assert sweep.per_threshold[0] > 0  # at 0.0 the membrane is cell: A and B merge


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_thinning_is_a_4_connected_flood_from_the_cells(seed):
    cells = random_labels(seed, (1, 30, 33))[0] > 0
    cells[:, 10:14] = False  # and a four-pixel-wide membrane somewhere
    truth = segments(cells)
    thinned = thin_boundaries(cells)
    np.testing.assert_array_equal(thinned[cells], truth[cells])  # cells keep their ids
    # a flood: each segment is one 4-connected piece, around its cell
    for k in range(1, truth.max() + 1):
        assert ndimage.label(thinned == k, FOUR)[1] == 1
    # the lines separate: no two touching pixels belong to different segments
    for a, b in ((thinned[1:], thinned[:-1]), (thinned[:, 1:], thinned[:, :-1])):
        assert not ((a != b) & (a > 0) & (b > 0)).any()
    # and they are as thin as scikit-image's priority-queue watershed makes them (which
    # breaks ties in another order)
    reference = watershed((~cells).astype(np.uint8), truth, connectivity=1, watershed_line=True)
    assert abs((thinned == 0).sum() - (reference == 0).sum()) <= 0.1 * (reference == 0).sum()


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_input_messages():
    labels = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(MetricInputError, match=r"range from 0 to 255; expected .* \[0, 1\]"):
        score_isbi_stack(np.linspace(0, 255, 128).reshape(2, 8, 8), labels)
    with pytest.raises(MetricInputError, match=r"range from -0.5 to .*sigmoid or softmax"):
        pixel_error(np.full((2, 8, 8), -0.5), labels)
    with pytest.raises(MetricInputError, match=r"3 NaN values"):
        rand_error(np.r_[np.full(3, np.nan), np.zeros(125)].reshape(2, 8, 8), labels)
    with pytest.raises(
        MetricInputError, match=r"shape \(2, 8, 8\) but labels have shape \(2, 8, 9\)"
    ):
        v_scores(np.zeros((2, 8, 8)), np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(
        MetricInputError, match=r"3 distinct values \(0, 128, 255\); expected a binary label"
    ):
        warping_error(np.zeros((1, 2, 2)), np.array([[[0, 128], [255, 255]]], np.uint8))
    with pytest.raises(MetricInputError, match=r"shape \(8,\); expected \(height, width\)"):
        score_isbi_stack(np.zeros(8), np.zeros(8))
    with pytest.raises(MetricInputError, match=r"thresholds \[0.5, 2\].*numbers in \[0, 1\]"):
        rand_error(np.zeros((8, 8)), np.zeros((8, 8)), thresholds=[0.5, 2])
    with pytest.raises(MetricInputError, match=r"dtype float64.*non-negative integer"):
        rand_scores(np.zeros((3, 3)), np.zeros((3, 3), int))
    # one error type for people (printed without traceback) and for code (ValueError)
    assert issubclass(MetricInputError, UserError) and issubclass(MetricInputError, ValueError)


def test_labels_may_be_0_1_or_0_255_or_bool():
    labels = random_labels(3, (1, 12, 12))
    probabilities = (labels > 0).astype(float)
    for variant in (labels, labels // 255, labels > 0):
        assert score_isbi_stack(probabilities, variant)["rand_error"] == 0


# ---------------------------------------------------------------------------------------
# real data


def test_real_labels_against_themselves_and_eroded(data_dir):
    labels = tifffile.imread(data_dir / "isbi2012" / "train-labels.tif")[:1]  # (1, 512, 512)
    assert set(np.unique(labels)) == {0, 255}
    perfect = score_isbi_stack(labels / 255.0, labels, thresholds=(0.5,))
    assert perfect["pixel_error"] == 0 and perfect["rand_error"] == 0
    assert perfect["v_rand"] == pytest.approx(1) and perfect["v_info"] == pytest.approx(1)
    assert perfect["warping_error"] == 0

    # cells shrunk by two pixels: thicker membranes, and thin necks cut
    eroded = ndimage.binary_erosion(labels[0] > 0, FOUR, iterations=2)[None]
    scores = score_isbi_stack(eroded.astype(float), labels, thresholds=(0.5,))
    assert 0 < scores["pixel_error"] < 0.2
    assert 0 < scores["rand_error"] < 1
    # thinning gives back most of what the thick membrane cost
    assert 1 - scores["rand_error"] < scores["v_rand"] < 1
    assert 0 < scores["v_info"] < 1
    assert scores["warping_error"] >= 0 and scores["warping_splits"] >= 0


def test_threads_do_not_change_the_scores():
    labels = random_labels(7, (3, 20, 20))
    rng = np.random.default_rng(7)
    smooth = ndimage.gaussian_filter((labels > 0).astype(float), (0, 1, 1))
    probabilities = np.clip(smooth + rng.normal(0, 0.1, labels.shape), 0, 1)
    assert score_isbi_stack(probabilities, labels, workers=2) == score_isbi_stack(
        probabilities, labels
    )
