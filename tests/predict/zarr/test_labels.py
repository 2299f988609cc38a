import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.inference.postprocess import PostProcessing
from unet.predict.zarr.holes import fill_holes_chunks
from unet.predict.zarr.labels import label_chunks


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """One-to-one correspondence of labels, with background to background."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def cell_map(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth probabilities: blobs of many sizes and shapes (spirals, C shapes) that cross
    chunk borders, some several times."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=rng.uniform(1.5, 4))
    return (0.5 + noise / (4 * (noise.std() or 1.0))).astype(np.float32)


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 90),
    st.integers(1, 90),
    st.integers(4, 40),
    st.integers(4, 40),
    st.sampled_from([0, 1, 5, 30]),
    st.integers(0, 10**6),
)
def test_chunk_wise_labels_equal_whole_image_labels(h, w, ch, cw, min_area, seed):
    probability = cell_map(h, w, seed)
    expected = PostProcessing(threshold=0.5, min_area=min_area)(probability)
    labels = np.zeros((h, w), np.uint32)
    count = label_chunks(
        lambda ys, xs: probability[ys, xs], labels, (ch, cw), threshold=0.5, min_area=min_area
    )
    assert count == expected.max()
    assert same_up_to_renumbering(labels, expected)
    assert set(np.unique(labels)) - {0} == set(range(1, count + 1))  # no gaps


def test_a_cell_winding_through_many_chunks_keeps_one_label():
    # a serpentine that leaves and re-enters chunks: only the merge makes it one object
    mask = np.zeros((40, 40), bool)
    for y in range(1, 40, 4):
        mask[y, 1:39] = True
    for k, y in enumerate(range(1, 37, 4)):
        mask[y : y + 5, 38 if k % 2 == 0 else 1] = True
    labels = np.zeros(mask.shape, np.uint32)
    count = label_chunks(lambda ys, xs: mask[ys, xs].astype(np.float32), labels, (7, 6))
    assert count == 1 and np.array_equal(labels > 0, mask)


def labels_and_holes(probability: np.ndarray, chunk: tuple[int, int], min_area: int = 0):
    """Chunk-wise labels with holes filled (unet.predict.zarr.labels, then
    unet.predict.zarr.holes)."""
    labels = np.zeros(probability.shape, np.uint32)
    count = label_chunks(lambda ys, xs: probability[ys, xs], labels, chunk, min_area=min_area)
    fill_holes_chunks(labels, chunk, count)
    return labels


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 80),
    st.integers(1, 80),
    st.integers(2, 30),
    st.integers(2, 30),
    st.sampled_from([0, 5, 30]),
    st.integers(0, 10**6),
)
def test_chunk_wise_fill_holes_equals_whole_image(h, w, ch, cw, min_area, seed):
    probability = cell_map(h, w, seed)
    expected = PostProcessing(min_area=min_area, fill_holes=True)(probability)
    assert same_up_to_renumbering(labels_and_holes(probability, (ch, cw), min_area), expected)


def test_nested_holes_across_chunk_borders_take_the_outermost_cell():
    # a ring holding a ring holding a ring with a speck inside, a cell touching the image
    # border and one in the outer ring's hole; every ring crosses chunk borders. The
    # whole-image fill gives each hole the outermost ring around it.
    mask = np.zeros((40, 40), np.float32)
    for y0, y1 in ((2, 38), (6, 30), (10, 20)):
        mask[y0:y1, y0:y1] = 1
        mask[y0 + 1 : y1 - 1, y0 + 1 : y1 - 1] = 0
    mask[14:16, 14:16] = 1
    mask[0:5, 20] = 1
    mask[33:36, 33:36] = 1
    expected = PostProcessing(fill_holes=True)(mask)
    assert (expected[3:37, 3:37] == expected[2, 2]).sum() > 0.5 * 34 * 34  # outer ring fills
    assert not np.array_equal(expected, PostProcessing()(mask))
    for chunk in ((3, 4), (7, 7), (5, 13), (40, 40)):
        assert same_up_to_renumbering(labels_and_holes(mask, chunk), expected), chunk
