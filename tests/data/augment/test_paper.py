import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.data.augment.paper import Augmentation, cubic_upsampling_matrix, resample
from unet.data.mirror import crop_with_mirror

NO_GRAY = {"brightness": 0.0, "contrast": 0.0, "gamma": 0.0}


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 80), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_cubic_upsampling_is_torch_bicubic_with_aligned_corners(n_out, n_in, seed):
    coarse = np.random.default_rng(seed).standard_normal((n_in, n_in))
    up = cubic_upsampling_matrix(n_out, n_in)
    expected = F.interpolate(
        torch.from_numpy(coarse)[None, None],
        size=(n_out, n_out),
        mode="bicubic",
        align_corners=True,
    )[0, 0].numpy()
    np.testing.assert_allclose(up @ coarse @ up.T, expected, atol=1e-10)


def elastic_displacements(aug: Augmentation, rng, size: int) -> np.ndarray:
    """(2, size, size) displacement (dy, dx) of each output pixel that ``aug`` draws: its
    source positions minus the plain window's (no rotation, no flip)."""
    centre = (50, 60)
    ys, xs = aug.source_positions(rng, centre, size)
    offsets = np.arange(size) - size // 2
    return np.stack([ys - (centre[0] + offsets[:, None]), xs - (centre[1] + offsets[None, :])])


@pytest.mark.parametrize(("grid", "std"), [(3, 10.0), (5, 4.0)])
def test_elastic_field_statistics_match_grid_and_std(grid, std):
    size, n = 41, 3000
    rng = np.random.default_rng(0)
    aug = Augmentation(elastic_std=std, elastic_grid=grid, rotation=0.0, flip=False, **NO_GRAY)
    fields = np.stack([elastic_displacements(aug, rng, size) for _ in range(n)])  # (n, 2, s, s)
    nodes = np.linspace(0, size - 1, grid).astype(int)  # the coarse grid's pixels
    at_nodes = fields[:, :, nodes[:, None], nodes[None, :]]
    # at a node the displacement is the drawn N(0, std^2) value: mean 0, std `std`
    assert np.abs(at_nodes.mean(axis=0)).max() < 4 * std / math.sqrt(n)
    np.testing.assert_allclose(at_nodes.std(axis=0), std, rtol=0.06)
    # between nodes: the variance of the interpolated sum, std * |row_y| * |row_x|
    norms = np.linalg.norm(cubic_upsampling_matrix(size, grid), axis=1)
    expected = std * norms[:, None] * norms[None, :]
    np.testing.assert_allclose(
        fields.std(axis=0), np.broadcast_to(expected, (2, size, size)), rtol=0.08
    )
    assert expected.min() < 0.8 * std  # (so that the check above can tell nodes from the rest)
    # dy and dx are independent
    assert abs(np.corrcoef(at_nodes[:, 0, 1, 1], at_nodes[:, 1, 1, 1])[0, 1]) < 0.08
    # smooth: neighbouring pixels move alike (white noise would give about 1.1 std)
    spacing = (size - 1) / (grid - 1)
    assert np.abs(np.diff(fields, axis=-1)).mean() < 1.5 * std / spacing


def test_rotation_and_flip_are_rigid_and_reach_any_angle():
    aug = Augmentation(elastic_std=0.0, rotation=180.0, flip=True, **NO_GRAY)
    angles = []
    for seed in range(200):
        ys, xs = aug.source_positions(np.random.default_rng(seed), (0, 0), 21)
        # distances between output pixels are kept (a rotation or a reflection)
        np.testing.assert_allclose(np.hypot(ys[0, 1] - ys[0, 0], xs[0, 1] - xs[0, 0]), 1, atol=1e-5)
        np.testing.assert_allclose(
            np.hypot(ys[20, 20] - ys[0, 0], xs[20, 20] - xs[0, 0]), 20 * 2**0.5, atol=1e-4
        )
        angles.append(math.degrees(math.atan2(xs[10, 11] - xs[10, 10], ys[10, 11] - ys[10, 10])))
    counts, _ = np.histogram(angles, bins=8, range=(-180, 180))
    assert counts.min() > 5  # every 45-degree sector occurs


def test_no_change_is_the_plain_mirrored_window():
    rng = np.random.default_rng(0)
    image = rng.random((30, 40)).astype(np.float32)
    classes = rng.integers(0, 3, (30, 40)).astype(np.uint8)
    weights = rng.random((30, 40)).astype(np.float32)
    aug = Augmentation(elastic_std=0.0, rotation=0.0, flip=False, **NO_GRAY)
    out = aug(image, classes, weights, centre=(2, 37), size=48, rng=np.random.default_rng(1))
    for got, array in zip(out, (image, classes, weights), strict=True):
        expected = crop_with_mirror(array, 2 - 24, 37 - 24, 48, 48)
        assert got.dtype == array.dtype
        np.testing.assert_allclose(got, expected, atol=1e-6)


def ramps(shape):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    return y, x


@pytest.mark.parametrize("centre", [(100, 120), (4, 230)])  # inside; reaching far outside
def test_one_field_moves_image_label_and_weight_alike(centre):
    """A labelled pixel lands where its image pixel lands, mirrored context included."""
    shape, size = (200, 240), 96
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 7, (50, 60)), np.ones((4, 4))).astype(np.uint8)  # blocks
    y, x = ramps(shape)
    weights = (1.5 + np.sin(y / 7) * np.cos(x / 5)).astype(np.float32)
    aug = Augmentation(elastic_std=10.0, elastic_grid=3, rotation=180.0, flip=True, **NO_GRAY)
    seed = 5
    # the same seed twice: the image is once the row and once the column coordinate, so the
    # warped image says where each output pixel came from (after mirroring)
    src_y, labels, warped_w = aug(y, classes, weights, centre, size, np.random.default_rng(seed))
    src_x, labels_again, _ = aug(x, classes, weights, centre, size, np.random.default_rng(seed))
    np.testing.assert_array_equal(labels, labels_again)
    # away from the mirror axes (where the mirrored ramp has a kink the cubic smooths)
    inside = (src_y > 2) & (src_y < shape[0] - 3) & (src_x > 2) & (src_x < shape[1] - 3)
    assert inside.mean() > 0.5
    # nearest: the label of the pixel the image value came from (ties at .5 excluded)
    clear = inside & (np.abs(src_y % 1 - 0.5) > 0.1) & (np.abs(src_x % 1 - 0.5) > 0.1)
    expected = classes[np.round(src_y[clear]).astype(int), np.round(src_x[clear]).astype(int)]
    np.testing.assert_array_equal(labels[clear], expected)
    # linear: the weight map at that position
    at = ndimage.map_coordinates(weights, [src_y[inside], src_x[inside]], order=1)
    np.testing.assert_allclose(warped_w[inside], at, atol=0.03)


@pytest.mark.parametrize(
    ("dtype", "ids"),
    [(np.uint8, [0, 1]), (np.uint16, [0, 3, 7, 40000]), (np.int64, [0, 5, 2**40 + 1])],
)
def test_labels_stay_integers_of_the_original_set(dtype, ids):
    rng = np.random.default_rng(0)
    classes = rng.choice(np.array(ids, dtype), (64, 64))
    image = rng.random((64, 64)).astype(np.float32)
    aug = Augmentation(brightness=0.2, contrast=0.2, gamma=0.2)
    for seed in range(5):
        _, labels, _ = aug(image, classes, image, (32, 32), 80, np.random.default_rng(seed))
        assert labels.dtype == dtype
        assert set(np.unique(labels).tolist()) <= set(ids)


@pytest.mark.parametrize(
    ("rows", "cols"),
    [((-40.3, 50.2), (-60.7, 30.1)), ((-5.5, 14.2), (-8.1, 20.9))],  # far out; one reflection
)
def test_warp_mirrors_beyond_the_border(rows, cols):
    """Positions several image sizes out read the mirrored image too (cv2's border fails)."""
    rng = np.random.default_rng(0)
    image = rng.random((9, 13)).astype(np.float32)
    labels = rng.integers(0, 9, (9, 13)).astype(np.uint8)
    ys, xs = np.meshgrid(np.linspace(*rows, 31), np.linspace(*cols, 37), indexing="ij")
    ys, xs = ys.astype(np.float32), xs.astype(np.float32)
    got, got_labels, smooth = resample(
        [image, labels, image], ys, xs, ["linear", "nearest", "cubic"]
    )
    big = np.pad(image, 100, mode="reflect")
    expected = ndimage.map_coordinates(big, [ys + 100, xs + 100], order=1)
    np.testing.assert_allclose(got, expected, atol=0.04)  # OpenCV: 1/32 px weights
    nearest = np.pad(labels, 100, mode="reflect")[
        np.round(ys).astype(int) + 100, np.round(xs).astype(int) + 100
    ]
    clear = (np.abs(ys % 1 - 0.5) > 0.05) & (np.abs(xs % 1 - 0.5) > 0.05)
    np.testing.assert_array_equal(got_labels[clear], nearest[clear])
    # cubic: the same as on a mirrored copy large enough for OpenCV's border to stay unused
    (reference,) = resample([big], ys + 100, xs + 100, ["cubic"])
    np.testing.assert_allclose(smooth, reference, atol=1e-4)


def test_gray_values_within_their_ranges():
    image = np.random.default_rng(0).standard_normal((50, 50)).astype(np.float32)
    only_offset = Augmentation(brightness=0.3)
    offsets = [only_offset.gray_values(image, np.random.default_rng(s)) - image for s in range(30)]
    for d in offsets:
        assert np.ptp(d) < 1e-5 and abs(d.mean()) <= 0.3
    assert max(d.mean() for d in offsets) > 0.15 and min(d.mean() for d in offsets) < -0.15
    only_gamma = Augmentation(gamma=0.5)
    out = only_gamma.gray_values(image, np.random.default_rng(1))
    assert out.min() == pytest.approx(image.min(), abs=1e-5)
    assert out.max() == pytest.approx(image.max(), abs=1e-5)
    order = np.argsort(image, axis=None)
    assert (np.diff(out.ravel()[order]) >= -1e-6).all()  # monotone
    assert not np.allclose(out, image)
    out = Augmentation(contrast=0.5).gray_values(image, np.random.default_rng(2))
    factor = float((out * image).sum() / (image * image).sum())
    np.testing.assert_allclose(out, factor * image, atol=1e-5)
    assert 0.5 <= factor <= 1.5 and factor != pytest.approx(1.0)


def test_same_generator_same_tile_and_settings_keep_other_draws():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    labels = (image > 0.5).astype(np.uint8)
    aug = Augmentation(brightness=0.1, contrast=0.1, gamma=0.1)
    a = aug(image, labels, image, (20, 20), 32, np.random.default_rng(9))
    b = aug(image, labels, image, (20, 20), 32, np.random.default_rng(9))
    c = aug(image, labels, image, (20, 20), 32, np.random.default_rng(10))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # switching the gray values off does not change the geometry drawn for a seed
    plain = Augmentation(**NO_GRAY)(image, labels, image, (20, 20), 32, np.random.default_rng(9))
    np.testing.assert_array_equal(plain[1], a[1])


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="elastic_grid"):
        Augmentation(elastic_grid=1)
    with pytest.raises(ValueError, match="gamma"):
        Augmentation(gamma=1.5)


def test_gray_values_in_place_equal_a_copy_and_stay_finite():
    image = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32) * 3 + 1
    aug = Augmentation(gamma=0.4, contrast=0.2, brightness=0.3)
    copy = aug.gray_values(image, np.random.default_rng(5))
    tile = image.copy()
    assert aug.gray_values(tile, np.random.default_rng(5), in_place=True) is tile
    np.testing.assert_array_equal(tile, copy)
    assert np.isfinite(copy).all()
    assert not np.array_equal(image, copy)


def test_warp_leaves_the_maps_alone_unless_allowed():
    array = np.random.default_rng(6).random((30, 40)).astype(np.float32)
    ys, xs = np.meshgrid(np.arange(-5.5, 30.0), np.arange(-3.25, 40.0), indexing="ij")
    ys, xs = ys.astype(np.float32), xs.astype(np.float32)
    kept = ys.copy(), xs.copy()
    (expected,) = resample([array], ys, xs, ["linear"])
    np.testing.assert_array_equal(ys, kept[0])
    np.testing.assert_array_equal(xs, kept[1])
    (again,) = resample([array], ys, xs, ["linear"], overwrite_maps=True)
    np.testing.assert_array_equal(again, expected)
