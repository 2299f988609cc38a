"""albumentations with the paper's augmentation: extra transforms after it, and the paper's
elastic deformation as an albumentations transform.

- :class:`ExtraTransforms` runs a list of albumentations transforms on a training tile after
  :class:`unet.augmentation.Augmentation` has made it (``data.augmentation.extra`` in
  config, a ``_target_`` list). The image goes through every transform; the class map and
  the weight map go through the geometric ones (albumentations' mask targets: nearest
  interpolation), so the three stay aligned. The transforms draw from a generator seeded
  by the tile's own generator, so a run's tiles still depend only on (seed, epoch, sample).
- :class:`PaperElasticTransform` is the paper's coarse-grid elastic deformation (Sec. 3.1,
  the same draw and resampling as training's) as an albumentations ``DualTransform``, for
  pipelines built with albumentations alone.

albumentations is imported only when one of these is built; importing ``unet`` sets
``NO_ALBUMENTATIONS_UPDATE=1`` (no update check over the network at import).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from unet.augmentation import Augmentation, resample


class ExtraTransforms:
    """albumentations transforms applied to a (standardised) tile, its classes and weights.

    Pixel-level albumentations transforms expect float images in [0, 1] (some clip to it).
    The tile is standardised (mean 0, std 1), so it is mapped to [0, 1] by its own minimum
    and maximum before the transforms and back after them: a transform that changes
    nothing leaves the tile as it was, up to float rounding.

    Args:
        transforms: albumentations transforms; each must keep the tile's size.
    """

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)
        # the weight map is a second mask: geometric transforms move it with the classes
        self.compose = A.Compose(self.transforms, additional_targets={"weights": "mask"})

    def __repr__(self) -> str:
        return f"ExtraTransforms({self.transforms!r})"

    def __call__(
        self,
        image: np.ndarray,
        classes: np.ndarray,
        weights: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The transformed (h, w) (or (C, h, w)) image, class map and weight map."""
        self.compose.set_random_seed(int(rng.integers(2**31)))
        channels_first = image.ndim == 3
        if channels_first:  # albumentations takes channels last: (h, w, C)
            image = np.ascontiguousarray(np.moveaxis(image, 0, -1))
            low, high = float(image.min()), float(image.max())
        else:
            low, high = cv2.minMaxLoc(image)[:2]
        span = np.float32(high - low if high > low else 1.0)
        unit = (image - np.float32(low)) / span  # (h, w) float32 in [0, 1]
        out = self.compose(image=unit, mask=classes, weights=weights)
        shapes = {name: out[name].shape for name in ("image", "mask", "weights")}
        if shapes["image"] != image.shape or {shapes["mask"], shapes["weights"]} != {
            image.shape[:2]
        }:
            raise ValueError(
                f"data.augmentation.extra changed the tile's shape from {image.shape} to "
                f"{shapes}; expected transforms that keep the size (no crops or resizes: "
                "the tile size is data.tile_size)"
            )
        restored = out["image"].astype(np.float32) * span + np.float32(low)
        if channels_first:
            restored = np.ascontiguousarray(np.moveaxis(restored, -1, 0))
        return restored, out["mask"].astype(classes.dtype), out["weights"].astype(weights.dtype)


class PaperElasticTransform(A.DualTransform):
    """The paper's elastic deformation as an albumentations transform (Sec. 3.1).

    Displacements drawn from N(0, ``std``^2) px on a ``grid`` x ``grid`` coarse grid that
    spans the image, upsampled to every pixel by bicubic interpolation; beyond the border
    the image is mirrored. The image is resampled with cubic interpolation, an integer mask
    (labels) nearest-neighbour and a float mask (a weight map) linearly. The same code as
    training's :class:`unet.augmentation.Augmentation` with no rotation, flip or gray-value
    change.

    Args:
        std: standard deviation (px) of the coarse displacements. Paper: 10.
        grid: nodes per side of the coarse grid. Paper: 3.
        p: probability of applying the transform.
    """

    def __init__(self, std: float = 10.0, grid: int = 3, p: float = 1.0):
        super().__init__(p=p)
        self.std, self.grid = float(std), int(grid)
        self._elastic = Augmentation(
            elastic_std=std, elastic_grid=grid, rotation=0.0, flip=False, gamma=0.0
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("std", "grid")

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        ys, xs = self._elastic.source_positions(
            self.random_generator, (height // 2, width // 2), (height, width)
        )
        return {"ys": ys, "xs": xs}

    def apply(self, img: np.ndarray, ys: np.ndarray, xs: np.ndarray, **params) -> np.ndarray:
        return _resample_channels(img, ys, xs, "cubic")

    def apply_to_mask(
        self, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, **params
    ) -> np.ndarray:
        how = "linear" if np.issubdtype(mask.dtype, np.floating) else "nearest"
        return _resample_channels(mask, ys, xs, how)


def _resample_channels(array: np.ndarray, ys: np.ndarray, xs: np.ndarray, how: str) -> np.ndarray:
    """``resample`` of an (h, w) or (h, w, channels) array."""
    if array.ndim == 2:
        return resample([array], ys, xs, [how])[0]
    channels = [array[..., c] for c in range(array.shape[-1])]
    return np.stack(resample(channels, ys, xs, [how] * len(channels)), axis=-1)
