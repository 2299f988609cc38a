import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.chunked_labels import label_chunks
from unet.postprocess import PostProcessing


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
