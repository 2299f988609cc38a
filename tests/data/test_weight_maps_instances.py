"""Weight maps from instance labels: separation borders, d1/d2, ignore masks, cache."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.data import weight_maps as wm


def brute_force_borders(instances: np.ndarray, size: int = 3) -> np.ndarray:
    h, w = instances.shape
    r = size // 2
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            window = instances[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1]
            out[y, x] = instances[y, x] > 0 and len(set(window[window > 0].tolist())) >= 2
    return out


def touching_scene() -> np.ndarray:
    """A and B touch along a vertical line; C is 2 px from B; D touches the image edge."""
    inst = np.zeros((60, 60), np.uint16)
    inst[5:25, 5:20] = 1  # A: columns 5..19
    inst[5:25, 20:35] = 2  # B: columns 20..34, touches A
    inst[5:25, 37:50] = 3  # C: 2 background columns (35, 36) from B
    inst[50:60, 0:10] = 4  # D: alone, at the image border
    return inst


def test_separation_borders_exactly_between_touching_cells():
    inst = touching_scene()
    borders = wm.separation_borders(inst)
    expected = np.zeros_like(borders)
    expected[5:25, 19:21] = True  # one pixel on each side of the A|B contact line
    np.testing.assert_array_equal(borders, expected)
    classes, cells = wm.instance_targets(inst)
    # background now separates A and B (even 8-connected), C and D untouched
    _, count = ndimage.label(classes, structure=np.ones((3, 3)))
    assert count == 4
    assert (classes[inst == 3] == 1).all() and (classes[inst == 4] == 1).all()
    assert set(np.unique(cells)) == {0, 1, 2, 3, 4}


def test_wider_neighbourhood_gives_wider_borders_and_bridges_small_gaps():
    inst = touching_scene()
    borders = wm.separation_borders(inst, size=5)
    expected = np.zeros_like(borders)
    expected[5:25, 18:22] = True  # two pixels on each side
    np.testing.assert_array_equal(borders, expected)
    # a 1 px gap is bridged by a 5x5 window: the pixels next to the gap become borders
    inst[5:25, 36] = 3
    borders = wm.separation_borders(inst, size=5)
    assert list(np.flatnonzero(borders[10, 30:])) == [34 - 30, 36 - 30]
    np.testing.assert_array_equal(borders, brute_force_borders(inst, 5))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 9))
def test_separation_borders_match_brute_force(seed, count):
    rng = np.random.default_rng(seed)
    inst = np.zeros((24, 30), np.int32)
    for _ in range(count):
        y, x = rng.integers(0, 22), rng.integers(0, 28)
        inst[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = rng.integers(1, 500)
    np.testing.assert_array_equal(wm.separation_borders(inst), brute_force_borders(inst))


def brute_force_border_term(cells: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    ids = [i for i in np.unique(cells) if i]
    dists = np.sort(np.stack([ndimage.distance_transform_edt(cells != i) for i in ids]), axis=0)
    d1, d2 = dists[0], dists[1]  # the nearest and second-nearest cell, by brute force
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    term[cells > 0] = 0
    return term


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 10))
def test_weight_map_is_class_balance_plus_brute_force_border_term(seed, count):
    rng = np.random.default_rng(seed)
    inst = np.zeros((60, 70), np.uint16)
    for k in range(1, count + 1):
        y, x = rng.integers(0, 50), rng.integers(0, 60)
        inst[y : y + rng.integers(4, 20), x : x + rng.integers(4, 20)] = k
    classes, cells = wm.instance_targets(inst)
    assume(len(np.unique(cells)) >= 3)  # two cells at least: d2 exists
    got_classes, weights = wm.instance_weight_map(inst, w0=10.0, sigma=5.0)
    np.testing.assert_array_equal(got_classes, classes)
    expected = wm.class_balance_weights(classes) + brute_force_border_term(cells, 10.0, 5.0)
    np.testing.assert_allclose(weights, expected, atol=1e-5)


def test_border_pixels_between_touching_cells_get_high_weight():
    inst = touching_scene()
    classes, weights = wm.instance_weight_map(inst, w0=10.0, sigma=5.0)
    wc = wm.class_balance_weights(classes)
    # the border is a 2 px gap (columns 19, 20) like the one between B and C (35, 36):
    # d1 = 1, d2 = 2 between pixel centres, so w0 * exp(-9 / 50) in both
    for column in (19, 20, 35, 36):
        term = weights[15, column] - wc[15, column]
        assert term == pytest.approx(10 * math.exp(-9 / 50), rel=1e-5)
    # next to D, far from any second cell: only w_c
    assert weights[55, 10] - wc[55, 10] < 1e-3


def test_ignored_pixels_get_zero_weight_and_leave_class_balance():
    inst = touching_scene()
    ignore = np.zeros(inst.shape, bool)
    ignore[:, 52:] = True  # e.g. around an unannotated cell
    classes, weights = wm.instance_weight_map(inst, ignore)
    assert (weights[ignore] == 0).all() and (weights[~ignore] > 0).all()
    wc = wm.class_balance_weights(classes, mask=~ignore)
    assert wc[~ignore & (classes == 0)].sum() == pytest.approx(wc[classes == 1].sum(), rel=1e-5)
    assert wc[~ignore].mean() == pytest.approx(1.0, rel=1e-5)


def test_instance_cache_reuses_and_invalidates(tmp_path):
    inst = touching_scene()
    ignore = np.zeros(inst.shape, bool)
    ignore[0, 0] = True
    classes, first = wm.cached_instance_weight_map(inst, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    planted = first.copy()
    planted[0, 0] = 123.0
    wm._write_cache(files[0], files[0].stem.removeprefix("weights-"), planted)
    again_classes, again = wm.cached_instance_weight_map(inst, cache_dir=tmp_path)
    assert again[0, 0] == 123.0
    np.testing.assert_array_equal(again_classes, classes)
    # another ignore mask, border size or sigma: new files; a binary map: a file of its own
    wm.cached_instance_weight_map(inst, ignore, cache_dir=tmp_path)
    wm.cached_instance_weight_map(inst, border_size=5, cache_dir=tmp_path)
    wm.cached_instance_weight_map(inst, sigma=3.0, cache_dir=tmp_path)
    wm.cached_binary_weight_map(classes, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 5


def notebook_figures():
    """notebooks/figures.py, the notebooks' drawing helpers (not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "notebooks" / "figures.py"
    spec = importlib.util.spec_from_file_location("notebook_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure3_renders_the_four_panels(tmp_path):
    from matplotlib.image import imread

    figure3 = notebook_figures().figure3

    inst = touching_scene()
    image = (inst > 0).astype(np.uint8) * 200
    path = figure3(image, inst, tmp_path / "fig3.png", title="synthetic")
    rendered = imread(path)
    assert rendered.ndim == 3 and rendered.shape[0] > 100 and rendered.shape[1] > 100
