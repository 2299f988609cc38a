import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.data import weight_maps as wm


def two_cells(gap: int = 4) -> np.ndarray:
    """Two 20x20 squares side by side, ``gap`` background pixels apart, on a 40x64 image."""
    classes = np.zeros((40, 64), np.uint8)
    classes[10:30, 10:30] = 1
    classes[10:30, 30 + gap : 50 + gap] = 1
    return classes


def test_class_balance_gives_each_class_the_same_total_weight():
    classes = two_cells()
    w = wm.class_balance_weights(classes)
    assert w[classes == 0].sum() == pytest.approx(w[classes == 1].sum(), rel=1e-5)
    assert w.mean() == pytest.approx(1.0, rel=1e-5)
    n0, n1 = (classes == 0).sum(), (classes == 1).sum()
    assert w[classes == 1][0] == pytest.approx(classes.size / (2 * n1))
    assert w[classes == 0][0] == pytest.approx(classes.size / (2 * n0))


def test_border_term_peaks_between_the_cells():
    classes = two_cells(gap=4)
    border = wm.border_weights(wm.cells_from_binary(classes), w0=10, sigma=5)
    assert (border[classes == 1] == 0).all()
    peak = np.unravel_index(border.argmax(), border.shape)
    assert 10 <= peak[0] < 30 and 30 <= peak[1] < 34  # inside the gap
    # in the gap d1 + d2 = gap + 1 (pixel centres): w0 * exp(-(5)^2 / 50)
    assert border[20, 31] == pytest.approx(10 * math.exp(-(5**2) / 50), rel=1e-5)
    # far from two cells (only one cell near): small
    assert border[20, 2] < 0.01 * border.max()
    # the gap term falls off as the gap widens
    wide = wm.border_weights(wm.cells_from_binary(two_cells(gap=12)), w0=10, sigma=5)
    assert wide.max() < border.max()


def brute_force_d1_d2(instances):
    ids = [i for i in np.unique(instances) if i]
    dists = np.stack([ndimage.distance_transform_edt(instances != i) for i in ids])
    dists.sort(axis=0)
    return dists[0], dists[1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12))
def test_d1_d2_match_brute_force(seed, count):
    rng = np.random.default_rng(seed)
    instances = np.zeros((64, 80), np.int32)
    for k in range(1, count + 1):
        y, x = rng.integers(0, 60), rng.integers(0, 76)
        instances[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = k
    instances, present = ndimage.label(instances > 0)  # ids must be 1..K, compact
    assume(present >= 2)  # d2 needs two cells (touching rectangles may have merged)
    d1, d2 = wm.nearest_two_distances(instances, margin=None)
    b1, b2 = brute_force_d1_d2(instances)
    np.testing.assert_allclose(d1, b1, rtol=1e-6)  # float32 distances
    np.testing.assert_allclose(d2, b2, rtol=1e-6)
    # margin-limited: exact where d1 + d2 <= margin, and the weight map within 1e-6
    fast = wm.border_weights(instances, exact=False)
    exact = wm.border_weights(instances, exact=True)
    np.testing.assert_allclose(fast, exact, atol=1e-6)


def plant(file, weights):
    """Store ``weights`` in a cache file with the checksum the cache would have written."""
    wm._write_cache(file, file.stem.removeprefix("weights-"), weights)


def test_cache_reuses_and_invalidates(tmp_path):
    classes = two_cells()
    first = wm.cached_binary_weight_map(classes, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0])["weights"], first)
    # a second call reads the file (prove it by planting a marker value, with its checksum)
    planted = first.copy()
    planted[0, 0] = 123.0
    plant(files[0], planted)
    assert wm.cached_binary_weight_map(classes, cache_dir=tmp_path)[0, 0] == 123.0
    # other parameters or other labels: a new file
    wm.cached_binary_weight_map(classes, sigma=3.0, cache_dir=tmp_path)
    changed = classes.copy()
    changed[0, 0] = 1
    wm.cached_binary_weight_map(changed, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    # a corrupt file is recomputed
    files[0].write_bytes(b"garbage")
    np.testing.assert_array_equal(wm.cached_binary_weight_map(classes, cache_dir=tmp_path), first)


@pytest.mark.parametrize("damage", ["values", "checksum", "truncate"])
def test_damaged_cache_file_is_recomputed(tmp_path, damage):
    classes = two_cells()
    first = wm.cached_binary_weight_map(classes, cache_dir=tmp_path)
    [file] = tmp_path.iterdir()
    if damage == "values":  # a well-formed file whose values are not the ones checksummed
        with np.load(file) as stored:
            checksum = stored["checksum"]
        garbage = np.random.default_rng(0).normal(size=first.shape).astype(np.float32)
        np.savez(file, weights=garbage, checksum=checksum)
    elif damage == "checksum":  # the right values under another file's checksum
        np.savez(file, weights=first, checksum=np.array("0" * 40))
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    np.testing.assert_array_equal(wm.cached_binary_weight_map(classes, cache_dir=tmp_path), first)
    with np.load(file) as stored:  # and the file was replaced by a good one
        np.testing.assert_array_equal(stored["weights"], first)


def test_unwritable_cache_folder_computes_in_memory_with_one_warning(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache_dir = blocker / "cache"  # cannot be created, even by root
    classes = two_cells()
    with pytest.warns(wm.CacheWarning, match="cannot be written") as caught:
        first = wm.cached_binary_weight_map(classes, cache_dir=cache_dir)
        second = wm.cached_binary_weight_map(classes, sigma=3.0, cache_dir=cache_dir)
    assert len([w for w in caught if issubclass(w.category, wm.CacheWarning)]) == 1
    np.testing.assert_array_equal(first, wm.cached_binary_weight_map(classes, cache_dir=None))
    assert second.shape == classes.shape
