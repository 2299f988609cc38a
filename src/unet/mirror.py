"""Mirror extrapolation of missing context at image borders (paper, Fig. 2).

Works on the last two axes of NumPy arrays and torch tensors alike, for any pad width:
pads larger than the image repeat the reflection (same result as ``numpy.pad(...,
mode="reflect")``, which torch's ``F.pad`` cannot do for pads >= the input size).
"""

from __future__ import annotations

import numpy as np
import torch


def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Source indices in [0, n) for positions start..stop-1 of the reflected axis.

    "reflect" mirrors about the edge pixel without repeating it: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    """
    idx = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - idx)


def _take(array, rows: np.ndarray, cols: np.ndarray):
    if isinstance(array, torch.Tensor):
        rows_t = torch.as_tensor(rows, device=array.device)
        cols_t = torch.as_tensor(cols, device=array.device)
        return array.index_select(-2, rows_t).index_select(-1, cols_t)
    return array[..., rows[:, None], cols[None, :]]


def crop_with_mirror(array, top: int, left: int, height: int, width: int):
    """Window [top, top+height) x [left, left+width) of the last two axes, mirrored outside."""
    h, w = array.shape[-2:]
    return _take(
        array, reflect_indices(top, top + height, h), reflect_indices(left, left + width, w)
    )


def mirror_pad(array, top: int, bottom: int, left: int, right: int):
    """Pad the last two axes by reflection, like ``numpy.pad(mode="reflect")``."""
    h, w = array.shape[-2:]
    return crop_with_mirror(array, -top, -left, h + top + bottom, w + left + right)
