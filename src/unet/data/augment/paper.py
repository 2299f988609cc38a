"""Data augmentation of training tiles: image, class map and weight map moved together.

Paper, Sec. 3.1: shift and rotation invariance, robustness to deformations and to gray-value
variations; "random elastic deformations of the training samples seem to be the key concept
to train a segmentation network with very few annotated images. We generate smooth
deformations using random displacement vectors on a coarse 3 by 3 grid. The displacements
are sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel
displacements are then computed using bicubic interpolation."

Every geometric change (elastic field, flips, rotation by any angle, sub-pixel shift) is
folded into one map "output pixel -> source position in the image", and each array is
resampled once with it: the image with cubic, the weight map with linear and the class
map with nearest-neighbour interpolation. Only the window of the image that the map
reaches is cut out (with mirrored context beyond the image border, as everywhere in this
project), so the cost depends on the tile size, not on the image size.

Choices the paper leaves open, made here:
- The coarse grid spans the output tile: its corner nodes sit on the tile's corner
  pixels, so with a 3x3 grid there is a node at every corner, edge centre and the centre.
  Bicubic interpolation uses the kernel of OpenCV and PyTorch (a = -0.75); at a node the
  displacement is the drawn N(0, std^2) vector, between nodes its spread is smaller.
- The deformation is applied in the tile's own frame, before the flip and rotation.
- Gray values are changed after the resampling, on the standardised tile: gamma on the
  tile rescaled to [0, 1] (then back to its range), then contrast (a factor about 0, the
  image mean after standardisation) and brightness (an offset in units of the image's
  standard deviation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from unet.data.mirror import crop_with_mirror


def _cubic_kernel(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel with OpenCV's and PyTorch's a = -0.75."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=32)
def cubic_upsampling_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix that upsamples n_in samples to n_out pixels by cubic interpolation.

    The first and last samples sit on the first and last pixels ("align corners"); taps
    beyond the ends repeat the end samples. Equals PyTorch's ``interpolate(mode="bicubic",
    align_corners=True)`` along one axis.
    """
    if n_out == 1 or n_in == 1:
        return np.full((n_out, n_in), 1.0 / n_in)
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))  # output pixel -> grid coordinate
    base = np.floor(pos).astype(np.int64)
    frac = pos - base
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for tap in (-1, 0, 1, 2):
        np.add.at(matrix, (rows, np.clip(base + tap, 0, n_in - 1)), _cubic_kernel(frac - tap))
    matrix.flags.writeable = False  # shared by the cache
    return matrix


@functools.lru_cache(maxsize=32)
def _position_bases(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Left (height, grid + 2) and right (width, grid + 2) factors of
    :meth:`Augmentation.source_positions`."""

    def basis(size: int, offsets_last: bool) -> np.ndarray:
        up = cubic_upsampling_matrix(size, grid)
        offsets = (np.arange(size) - size // 2)[:, None]  # pixel relative to the tile centre
        ones = np.ones((size, 1))
        parts = [up, ones, offsets] if offsets_last else [up, offsets, ones]
        matrix = np.hstack(parts).astype(np.float32)
        matrix.flags.writeable = False  # shared by the cache
        return matrix

    return basis(height, offsets_last=False), basis(width, offsets_last=True)


class Augmentation:
    """Random geometric and gray-value changes of a training tile (paper, Sec. 3.1).

    Called with a whole image, its class map and weight map, the tile's centre and size and
    a random generator, it returns the augmented (size, size) tile of each. All random
    numbers come from that generator, in a fixed order whatever the settings, so a run's
    tiles depend only on the generator's seed (the data sets key it by seed, epoch and
    sample index).

    Args:
        elastic_std: standard deviation (px) of the coarse-grid displacements; 0 = none.
            Paper: 10.
        elastic_grid: nodes per side of the coarse grid. Paper: 3.
        rotation: largest rotation angle in degrees; the angle is uniform in
            [-rotation, rotation], so 180 means any angle and 0 no rotation.
        flip: mirror the tile vertically and horizontally, each with probability 1/2.
        shift: largest extra shift (px, uniform, per axis, sub-pixel). The tile's position
            is already uniform over the image, so this only adds sub-pixel offsets.
        brightness: largest offset added to the (standardised) gray values.
        contrast: gray values are multiplied by a factor uniform in [1 - c, 1 + c].
        gamma: gamma exponent uniform in [1 - g, 1 + g] (0 <= g < 1).
        extra: albumentations transforms applied after all of the above, to the image and
            (geometric ones) to the class and weight maps
            (:class:`unet.data.augment.extra.ExtraTransforms`); None or empty: none, and
            albumentations is not imported.
    """

    def __init__(
        self,
        elastic_std: float = 10.0,
        elastic_grid: int = 3,
        rotation: float = 180.0,
        flip: bool = True,
        shift: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: float = 0.0,
        extra: Sequence | None = None,
    ):
        if elastic_std < 0 or elastic_grid < 2:
            raise ValueError(
                f"need elastic_std >= 0 and elastic_grid >= 2, got {elastic_std}, {elastic_grid}"
            )
        if not 0 <= gamma < 1 or not 0 <= contrast < 1 or brightness < 0 or shift < 0:
            raise ValueError(
                "need 0 <= gamma < 1, 0 <= contrast < 1, brightness >= 0, shift >= 0; "
                f"got gamma={gamma}, contrast={contrast}, brightness={brightness}, shift={shift}"
            )
        self.elastic_std, self.elastic_grid = float(elastic_std), int(elastic_grid)
        self.rotation, self.flip, self.shift = float(rotation), bool(flip), float(shift)
        self.brightness, self.contrast, self.gamma = (
            float(brightness),
            float(contrast),
            float(gamma),
        )
        self.extra = None
        if extra:
            from unet.data.augment.extra import ExtraTransforms  # imports albumentations

            self.extra = ExtraTransforms(extra)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"Augmentation({fields})"

    def source_positions(
        self, rng: np.random.Generator, centre: tuple[int, int], size: int | tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where each output pixel of the tile reads from: (y, x) maps (h, w) in image px.

        ``size`` is the tile's side, or its (h, w). Without any change this is the plain
        window whose pixel (h // 2, w // 2) is ``centre``.
        """
        height, width = (size, size) if isinstance(size, int) else size
        g = self.elastic_grid
        coarse = rng.standard_normal((2, g, g)) * self.elastic_std  # (dy, dx) at the nodes
        angle = math.radians(rng.uniform(-1.0, 1.0) * self.rotation)
        flips = rng.integers(2, size=2)
        shift = rng.uniform(-1.0, 1.0, size=2) * self.shift
        # Output pixel p (relative to the tile centre) reads from
        #     centre + shift + R(angle) @ diag(mirror) @ (p + d(p)),
        # d the bicubic upsampling U @ coarse @ U^T of the coarse grid. Everything is linear
        # in the coarse vectors, so each map is one product L @ M @ R^T with L = [U, p_y, 1],
        # R = [U, 1, p_x] and a small M: no per-pixel field, rotation or sum is materialised.
        mirror = [-1.0 if self.flip and f else 1.0 for f in flips]
        cos, sin = math.cos(angle), math.sin(angle)
        a = np.array([[cos, -sin], [sin, cos]]) * mirror  # (2, 2): rotation @ mirror
        left, right = _position_bases(height, width, g)
        maps = []
        for row, c in zip(a, centre + shift, strict=True):
            m = np.zeros((g + 2, g + 2))
            m[:g, :g] = row[0] * coarse[0] + row[1] * coarse[1]
            m[g, g], m[g + 1, g + 1], m[g + 1, g] = row[0], row[1], c
            maps.append(left @ m.astype(np.float32) @ right.T)  # (h, w) float32
        return maps[0], maps[1]

    def gray_values(
        self, image: np.ndarray, rng: np.random.Generator, in_place: bool = False
    ) -> np.ndarray:
        """Random gamma, contrast and brightness of a (standardised) float32 tile.

        With ``in_place`` the tile's own buffer is changed and returned (no temporaries:
        this runs once per training sample).
        """
        gamma = 1.0 + rng.uniform(-1.0, 1.0) * self.gamma
        factor = 1.0 + rng.uniform(-1.0, 1.0) * self.contrast
        offset = rng.uniform(-1.0, 1.0) * self.brightness
        own = in_place and image.dtype == np.float32
        out = image if own else np.array(image, dtype=np.float32)
        scale, shift = np.float32(factor), np.float32(offset)
        if gamma != 1.0:
            low, high = cv2.minMaxLoc(out)[:2]
            if high > low:
                # ((x - low) / (high - low)) ** gamma * (high - low) + low, then the contrast
                # and brightness (x - low >= 0 exactly, so the power never sees x < 0)
                np.subtract(out, np.float32(low), out=out)
                np.multiply(out, np.float32(1.0 / (high - low)), out=out)
                np.power(out, np.float32(gamma), out=out)
                scale, shift = np.float32((high - low) * factor), np.float32(low * factor + offset)
        if scale != 1.0 or shift != 0.0:
            np.multiply(out, scale, out=out)
            np.add(out, shift, out=out)
        return out

    def __call__(
        self,
        image: np.ndarray,
        classes: np.ndarray,
        weights: np.ndarray,
        centre: tuple[int, int],
        size: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The augmented (size, size) tiles of a (H, W) image, class map and weight map.

        A (C, H, W) image is moved channel by channel along the same positions, and each
        channel gets its own gray-value change (drawn in channel order after the positions;
        for one channel the draws are those of a (H, W) image).
        """
        ys, xs = self.source_positions(rng, centre, size)
        channels = [image] if image.ndim == 2 else list(image)
        *channels, classes, weights = resample(
            (*channels, classes, weights),
            ys,
            xs,
            ("cubic",) * len(channels) + ("nearest", "linear"),
            overwrite_maps=True,
        )
        channels = [self.gray_values(c, rng, in_place=True) for c in channels]
        image = channels[0] if image.ndim == 2 else np.stack(channels)
        if self.extra is not None:  # it draws after the paper's step, which stays as it was
            image, classes, weights = self.extra(image, classes, weights, rng)
        return image, classes, weights


_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}
# The types cv2.remap takes; others go through float64 for labels (exact below 2^53) and
# float32 for gray values and weights.
_NATIVE = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_NATIVE_NEAREST = (*_NATIVE, np.int32)


def resample(
    arrays: Sequence[np.ndarray],
    ys: np.ndarray,
    xs: np.ndarray,
    interpolations: Sequence[str],
    overwrite_maps: bool = False,
) -> list[np.ndarray]:
    """Resample (H, W) arrays at source positions ``ys``, ``xs`` (h, w), mirrored outside.

    One ``cv2.remap`` per array, reading only the pixels it needs. Beyond the image border
    the arrays are mirrored as :func:`unet.data.mirror.crop_with_mirror` does. Where the
    positions (with the cubic kernel's reach) leave the image, the window they reach is
    cut out with its mirrored context first, so that every remap reads inside its source:
    OpenCV's own mirrored border is wrong beyond one image size for cubic interpolation,
    and its per-tap border handling made remaps of tiles that overhang the image 2-3x
    slower.

    Args:
        arrays: (H, W) arrays of the same shape.
        ys, xs: (h, w) source row and column of every output pixel.
        interpolations: ``"nearest"``, ``"linear"`` or ``"cubic"``, one per array.
        overwrite_maps: ``ys`` and ``xs`` may be changed (saves two copies).
    """
    h, w = arrays[0].shape
    map_y, map_x = np.asarray(ys, np.float32), np.asarray(xs, np.float32)
    # the window the positions reach, with the cubic kernel's reach (-1 .. +2) and a pixel
    (y_min, y_max), (x_min, x_max) = cv2.minMaxLoc(map_y)[:2], cv2.minMaxLoc(map_x)[:2]
    top, left = math.floor(y_min) - 2, math.floor(x_min) - 2
    bottom, right = math.ceil(y_max) + 3, math.ceil(x_max) + 3
    if 0 <= top and bottom <= h and 0 <= left and right <= w:
        sources = arrays
    else:
        sources = [crop_with_mirror(a, top, left, bottom - top, right - left) for a in arrays]
        in_place = overwrite_maps or map_y is not ys
        map_y = np.subtract(map_y, np.float32(top), out=map_y if in_place else None)
        in_place = overwrite_maps or map_x is not xs
        map_x = np.subtract(map_x, np.float32(left), out=map_x if in_place else None)
    out = []
    for source, how in zip(sources, interpolations, strict=True):
        dtype = source.dtype
        if how == "nearest" and dtype not in _NATIVE_NEAREST:
            source = source.astype(np.float64)
        elif how != "nearest" and dtype not in _NATIVE:
            source = source.astype(np.float32)
        warped = cv2.remap(
            source, map_x, map_y, _INTERPOLATION[how], borderMode=cv2.BORDER_REFLECT_101
        )
        out.append(warped.astype(dtype, copy=False))
    return out
