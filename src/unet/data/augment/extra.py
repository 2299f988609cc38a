"""albumentations transforms after the paper's augmentation (``data.augmentation.extra``).

:class:`ExtraTransforms` runs a list of albumentations transforms on a training tile after
:class:`unet.data.augment.paper.Augmentation` has made it (a ``_target_`` list in config). The
image goes through every transform; the class map and the weight map go through the
geometric ones (albumentations' mask targets: nearest interpolation), so the three stay
aligned. The transforms draw from a generator seeded by the tile's own generator, so a
run's tiles still depend only on (seed, epoch, sample).

This module imports nothing of this package: :mod:`unet.data.augment.paper` imports it (only when
a tile needs extra transforms), and :mod:`unet.data.augment.paper_transform` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np


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
