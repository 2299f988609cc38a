import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.metrics import MetricInputError, PixelCounts, pixel_error, pixel_scores

# probabilities on a coarse grid, so that many fall exactly on a threshold (p > t, not >=)
GRID = st.integers(0, 20).map(lambda k: k / 20)


def brute_force(prob, cells, valid, t):
    """Counts of the cell class at threshold t, pixel by pixel."""
    predicted = (prob > t)[valid]
    truth = cells[valid]
    return (
        int(np.sum(predicted & truth)),
        int(np.sum(predicted & ~truth)),
        int(np.sum(~predicted & truth)),
        int(np.sum(~predicted & ~truth)),
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(1, 9),
    st.data(),
)
def test_counts_equal_a_pixel_by_pixel_count(slices, h, w, data):
    n = slices * h * w
    prob = np.array(data.draw(st.lists(GRID, min_size=n, max_size=n))).reshape(slices, h, w)
    cells = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    cells, valid = cells.reshape(prob.shape), valid.reshape(prob.shape)
    thresholds = data.draw(st.lists(GRID, min_size=1, max_size=6))
    counts = PixelCounts(thresholds)
    for k in range(slices):  # image by image, as validation adds them
        counts.add(prob[k], cells[k].astype(np.uint8) * 255, valid[k])
    confusion = counts.confusion()
    for j, t in enumerate(thresholds):
        assert tuple(int(c[j]) for c in confusion) == brute_force(prob, cells, valid, t)


def test_pixel_error_is_one_minus_the_best_f1_at_p_above_t():
    cells = np.array([[1, 1, 0, 0]], np.uint8)
    prob = np.array([[0.5, 0.9, 0.5, 0.1]])
    # p > 0.5 predicts only the second pixel: F1 = 2/3; p > 0.4 predicts three: F1 = 0.8
    sweep = pixel_error(prob, cells, thresholds=[0.5, 0.4])
    assert sweep.value == pytest.approx(0.2) and sweep.threshold == 0.4
    assert sweep.per_threshold == pytest.approx([1 / 3, 0.2])


def test_invalid_pixels_change_nothing_when_they_are_left_out():
    rng = np.random.default_rng(1)
    prob, cells = rng.random((2, 16, 16)), rng.random((2, 16, 16)) < 0.5
    valid = np.ones(prob.shape, bool)
    valid[:, :4] = False
    wrong = cells.copy()
    wrong[:, :4] = ~wrong[:, :4]  # flipped labels where nothing is scored
    assert pixel_scores(prob, cells, valid) == pixel_scores(prob, wrong, valid)
    assert pixel_scores(prob, cells) != pixel_scores(prob, wrong)


def test_at_half_the_scores_match_their_definitions():
    cells = np.array([[1, 1, 1, 0, 0, 0]], np.uint8)
    prob = np.array([[0.9, 0.9, 0.2, 0.9, 0.2, 0.2]])  # TP 2, FN 1, FP 1, TN 2
    scores = pixel_scores(prob, cells)
    assert scores["pixel_error_t05"] == pytest.approx(1 - 4 / 6)
    assert scores["iou"] == pytest.approx(2 / 4)
    assert scores["dice"] == pytest.approx((4 / 6 + 4 / 6) / 2)


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(MetricInputError, match="valid-pixel mask"):
        pixel_error(np.zeros((4, 4)), np.zeros((4, 4)), valid=np.ones((4, 5), bool))
    with pytest.raises(MetricInputError, match="thresholds"):
        PixelCounts([1.5])


@pytest.mark.parametrize("predicted", [0.0, 0.7])
def test_labels_without_a_cell_give_missing_scores_not_perfect_ones(predicted):
    # an all-membrane (no-foreground) split: every threshold would score an empty
    # prediction as perfect, so the scores are NaN ("missing"), never pixel error 0
    counts = PixelCounts()
    counts.add(np.full((2, 8, 8), predicted), np.zeros((2, 8, 8), np.uint8))
    scores = counts.scores()
    assert not counts.has_cells
    for name in ("pixel_error", "pixel_error_threshold", "pixel_error_t05", "iou", "dice"):
        assert np.isnan(scores[name]), name
    # one cell pixel makes them defined again
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 0, 0] = 1
    counts.add(np.full((2, 8, 8), predicted), labels)
    assert counts.has_cells and np.isfinite(counts.scores()["pixel_error"])
