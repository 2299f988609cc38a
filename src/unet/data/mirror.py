"""Mirror extrapolation of missing context at image borders (paper, Fig. 2).

Works on the last two axes of NumPy arrays and torch tensors alike, for any pad width:
pads larger than the image repeat the reflection (same result as ``numpy.pad(...,
mode="reflect")``, which torch's ``F.pad`` cannot do for pads >= the input size).
"""

from __future__ import annotations

import cv2
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


# The dtypes cv2.copyMakeBorder pads (a single 2-D channel).
_OPENCV_PADS = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def _pad_with_opencv(array: np.ndarray, top: int, left: int, height: int, width: int):
    """The window by slicing and cv2.copyMakeBorder, or None where that cannot do it.

    OpenCV's BORDER_REFLECT_101 is this module's reflection for pads shorter than the
    image, and copying a slice and its mirrored margins is 3-10x faster than gathering
    every pixel by index (it matters for random training tiles, one per sample).
    """
    h, w = array.shape
    if array.dtype.type not in _OPENCV_PADS or min(h, w) < 2:
        return None
    pads = (-top, top + height - h, -left, left + width - w)  # negative: no pad there
    if pads[0] >= h or pads[1] >= h or pads[2] >= w or pads[3] >= w:
        return None  # beyond one reflection
    # The slice to pad: the window's part inside the image, grown to hold the rows and
    # columns the margins reflect (the pads' sizes plus the edge pixel).
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    y0, y1 = min(y0, h - 1 - max(pads[1], 0)), max(y1, max(pads[0], 0) + 1)
    x0, x1 = min(x0, w - 1 - max(pads[3], 0)), max(x1, max(pads[2], 0) + 1)
    inside = array[y0:y1, x0:x1]
    if max(pads) <= 0:
        return inside.copy()
    padded = cv2.copyMakeBorder(inside, *(max(p, 0) for p in pads), cv2.BORDER_REFLECT_101)
    # padded starts at row min(top, y0) and column min(left, x0) of the reflected image
    dy, dx = top - min(top, y0), left - min(left, x0)
    if dy == dx == 0 and padded.shape == (height, width):
        return padded
    return np.array(padded[dy : dy + height, dx : dx + width])


def crop_with_mirror(array, top: int, left: int, height: int, width: int):
    """Window [top, top+height) x [left, left+width) of the last two axes, mirrored outside."""
    if isinstance(array, np.ndarray) and array.ndim == 2:
        window = _pad_with_opencv(array, top, left, height, width)
        if window is not None:
            return window
    h, w = array.shape[-2:]
    return _take(
        array, reflect_indices(top, top + height, h), reflect_indices(left, left + width, w)
    )


def mirror_pad(array, top: int, bottom: int, left: int, right: int):
    """Pad the last two axes by reflection, like ``numpy.pad(mode="reflect")``."""
    h, w = array.shape[-2:]
    return crop_with_mirror(array, -top, -left, h + top + bottom, w + left + right)
