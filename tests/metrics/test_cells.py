import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unet.metrics import MetricInputError, match_objects, score_cell_frames


def square(image: np.ndarray, top: int, left: int, size: int, value: int) -> np.ndarray:
    image[top : top + size, left : left + size] = value
    return image


def three_cells() -> np.ndarray:
    """A 40x40 uint16 mask with 10x10 cells 3, 7 and 65535 (ids need not be consecutive)."""
    truth = np.zeros((40, 40), np.uint16)
    square(truth, 2, 2, 10, 3)
    square(truth, 2, 20, 10, 7)
    return square(truth, 25, 10, 10, 65535)


def test_identical_instances_score_perfectly():
    truth = three_cells()
    prediction = truth.astype(np.int32) * 2  # other ids, same objects
    scores = score_cell_frames([prediction], [truth])
    assert scores["seg"] == 1.0 and scores["cell_iou"] == 1.0
    assert scores["truth_objects"] == scores["predicted_objects"] == scores["matched"] == 3
    assert scores["misses"] == scores["splits"] == scores["merges"] == 0
    assert scores["false_positives"] == 0
    matches = match_objects(prediction, truth)
    np.testing.assert_array_equal(matches.truth_ids, [3, 7, 65535])
    np.testing.assert_array_equal(matches.matched_ids, [6, 14, 131070])


@pytest.mark.parametrize(
    ("covered", "matched", "jaccard"),
    [(51, True, 0.51), (50, False, 0.0), (49, False, 0.0)],
)
def test_match_needs_more_than_half_of_the_truth_object(covered, matched, jaccard):
    # one 10x10 truth object; the prediction covers `covered` of its 100 pixels, row by row
    truth = square(np.zeros((12, 12), np.uint16), 1, 1, 10, 1)
    prediction = np.zeros((12, 12), np.int32)
    prediction[1:11, 1:11] = np.where(np.arange(100).reshape(10, 10) < covered, 5, 0)
    assert (prediction == 5).sum() == covered
    matches = match_objects(prediction, truth)
    assert (matches.matched_ids[0] == 5) == matched
    # inside the truth object: |R ∩ S| = covered, |R ∪ S| = 100
    assert matches.jaccard[0] == pytest.approx(jaccard)
    scores = score_cell_frames(prediction, truth)
    assert scores["seg"] == pytest.approx(jaccard)
    assert scores["misses"] == (0 if matched else 1)
    assert scores["false_positives"] == 0  # the prediction lies inside the object


def test_split_merge_and_false_positive_counts():
    truth = three_cells()
    prediction = np.zeros((40, 40), np.int32)
    prediction[2:12, 2:8] = 1  # cell 3 split into 60...
    prediction[2:12, 8:12] = 2  # ...and 40 pixels
    prediction[2:12, 12:30] = 3  # cell 7 (100 pixels) and 80 background pixels left of it
    prediction[25:35, 10:20] = 4  # cell 65535 exactly
    prediction[36:39, 36:39] = 9  # in the background
    scores = score_cell_frames([prediction], [truth])
    # cell 3: matched by the 60-pixel part, J = 60 / 100; cell 7: covered by object 3
    # (10x18 = 180 pixels, 100 of them on cell 7): J = 100 / 180; cell 65535: J = 1
    assert scores["seg"] == pytest.approx((0.6 + 100 / 180 + 1.0) / 3)
    assert scores["splits"] == 1  # objects 1 and 2 both lie mostly inside cell 3
    assert scores["merges"] == 0
    assert scores["false_positives"] == 1  # object 9
    assert scores["misses"] == 0 and scores["matched"] == 3


def test_a_merge_matches_both_cells():
    truth = np.zeros((10, 30), np.uint16)
    truth[2:8, 2:12] = 1  # 60 pixels
    truth[2:8, 14:24] = 2  # 60 pixels
    prediction = np.zeros((10, 30), np.int32)
    prediction[2:8, 2:24] = 1  # both cells and the gap: 132 pixels
    scores = score_cell_frames(prediction, truth)
    assert scores["merges"] == 1 and scores["splits"] == 0 and scores["misses"] == 0
    assert scores["seg"] == pytest.approx(60 / 132)  # each cell: 60 / (60 + 132 - 60)
    assert scores["cell_iou"] == pytest.approx(120 / 132)


def test_seg_is_pooled_over_objects_of_all_frames():
    one = square(np.zeros((20, 20), np.uint16), 0, 0, 10, 1)
    many = three_cells()
    half = square(np.zeros((20, 20), np.int32), 0, 0, 10, 1)
    half[:, 5:] = 0  # 50 of 100 pixels: no match
    scores = score_cell_frames([half, many.astype(np.int32)], [one, many])
    # four objects: 0 + 1 + 1 + 1; the mean of frame means would be (0 + 1) / 2
    assert scores["seg"] == pytest.approx(3 / 4)
    assert scores["frames"] == 2 and scores["truth_objects"] == 4
    # cell IoU pools pixels: (50 + 300) / (100 + 300)
    assert scores["cell_iou"] == pytest.approx(350 / 400)
    # a (frames, H, W) stack is the same as a list
    stacked = score_cell_frames(np.stack([half, half]), np.stack([one, one]))
    assert stacked["frames"] == 2 and stacked["seg"] == 0.0


def test_bad_input_messages():
    truth = three_cells()
    with pytest.raises(
        MetricInputError, match=r"frame 0: the prediction has dtype float32.*ndimage\.label"
    ):
        score_cell_frames([truth.astype(np.float32)], [truth])
    with pytest.raises(MetricInputError, match=r"frame 1: .*shape \(40, 39\).*\(40, 40\)"):
        score_cell_frames([truth, truth[:, :39]], [truth, truth])
    with pytest.raises(MetricInputError, match=r"2 predicted frames and 1 ground-truth frames"):
        score_cell_frames([truth, truth], [truth])
    with pytest.raises(MetricInputError, match=r"negative ids \(down to -1\)"):
        match_objects(np.full((40, 40), -1), truth)
    with pytest.raises(MetricInputError, match=r"bool; expected an instance-label image"):
        match_objects(truth, truth > 0)
    with pytest.raises(MetricInputError, match=r"no ground-truth objects in 1 frames"):
        score_cell_frames([truth], [np.zeros_like(truth)])


def test_real_hela_masks(data_dir):
    truth = tifffile.imread(data_dir / "DIC-C2DH-HeLa" / "01_GT" / "SEG" / "man_seg002.tif")
    assert truth.dtype == np.uint16 and truth.max() > 1
    assert score_cell_frames([truth], [truth])["seg"] == 1.0
    # cells shrunk by 3 pixels keep their match (most of each cell) but lose Jaccard
    interior = (ndimage.grey_erosion(truth, size=7) == truth) & (
        ndimage.grey_dilation(truth, size=7) == truth
    )
    shrunk = np.where(interior, truth, 0)
    scores = score_cell_frames([shrunk], [truth])
    assert 0.5 < scores["seg"] < 1.0
    assert scores["misses"] == scores["merges"] == scores["false_positives"] == 0
