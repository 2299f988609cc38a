"""albumentations with the paper's augmentation: extra transforms after it, and the paper's
elastic deformation as an albumentations transform.

- :class:`ExtraTransforms` (defined in :mod:`unet.data.augment.extra`, which imports nothing
  of this package, so that :mod:`unet.data.augment.paper` can use it without an import circle)
  runs a list of albumentations transforms on a training tile after the paper's
  augmentation (``data.augmentation.extra`` in config, a ``_target_`` list).
- :class:`PaperElasticTransform` is the paper's coarse-grid elastic deformation (Sec. 3.1,
  the same draw and resampling as training's) as an albumentations ``DualTransform``, for
  pipelines built with albumentations alone.

albumentations is imported only when one of these is built; importing ``unet`` sets
``NO_ALBUMENTATIONS_UPDATE=1`` (no update check over the network at import).
"""

from __future__ import annotations

import albumentations as A
import numpy as np

from unet.data.augment.extra import ExtraTransforms  # re-exported: its home before
from unet.data.augment.paper import Augmentation, resample

__all__ = ["ExtraTransforms", "PaperElasticTransform"]


class PaperElasticTransform(A.DualTransform):
    """The paper's elastic deformation as an albumentations transform (Sec. 3.1).

    Displacements drawn from N(0, ``std``^2) px on a ``grid`` x ``grid`` coarse grid that
    spans the image, upsampled to every pixel by bicubic interpolation; beyond the border
    the image is mirrored. The image is resampled with cubic interpolation, an integer mask
    (labels) nearest-neighbour and a float mask (a weight map) linearly. The same code as
    training's :class:`unet.data.augment.paper.Augmentation` with no rotation, flip or gray-value
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
