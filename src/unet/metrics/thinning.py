"""Border thinning of a binary prediction, as the ISBI 2012 challenge's V_rand and V_info
see it: the predicted membrane is thinned to one-pixel lines by a watershed seeded with the
predicted cells."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from unet.errors import MetricInputError
from unet.labels import binary_cells

FOUR = ndimage.generate_binary_structure(2, 1)  # cells are 4-connected


def thin(cells: np.ndarray, segments: np.ndarray, count: int) -> np.ndarray:
    """Flood the membrane from the cells' ``segments`` in layers; 0 on the lines."""
    if count == 0 or cells.all():
        return segments  # nothing to flood from, or nothing to flood
    h, w = cells.shape
    # Layer d: the membrane pixels at city-block distance d from the nearest cell, the
    # distance a 4-connected flood travels. Half-layers: checkerboard colour, 4-neighbours
    # never share it, so every pixel of a half-layer can be decided at once.
    distance = ndimage.distance_transform_cdt(~cells, metric="taxicab")
    ys, xs = np.nonzero(~cells)
    half_layer = 2 * distance[ys, xs] + (ys + xs) % 2
    order = np.argsort(half_layer, kind="stable")
    flooded = np.pad(segments.astype(np.int32), 1)  # 0 = not flooded (yet), or line
    flat = flooded.reshape(-1)
    four = np.array([-(w + 2), w + 2, -1, 1])  # up, down, left, right in the padded image
    index = ((ys + 1) * (w + 2) + xs + 1)[order]
    starts = np.flatnonzero(np.diff(half_layer[order])) + 1
    unset = np.iinfo(np.int32).max
    for pixels in np.split(index, starts):
        around = flat[pixels[:, None] + four]  # (n, 4) labels of the earlier neighbours
        high = around.max(axis=1)
        low = np.where(around > 0, around, unset).min(axis=1)
        flat[pixels] = np.where(low == high, high, 0)  # one flood reaches it, or a line
    return flooded[1:-1, 1:-1]


def thin_boundaries(cells: np.ndarray) -> np.ndarray:
    """Segments of a binary prediction after thinning its membrane to one-pixel lines.

    A watershed of the binary map seeded with the 4-connected components of ``cells``,
    flooding the membrane 4-connected (as the challenge's Fiji script does), in layers:
    layer d holds the membrane pixels at city-block distance d from the nearest cell. A
    pixel joins the flood of its already-flooded 4-neighbours if they all come from the
    same cell, and becomes a line pixel (0) if they come from two or more (or if they are
    all lines). Within a layer, pixels with an even row + column go first; ties between
    floods are broken by this order. So each segment is 4-connected, no two touching
    pixels belong to different segments, and lines are one pixel wide except where three
    floods meet. With no cells, everything stays 0. It gives the same segments as
    ``skimage.segmentation.watershed(~cells, markers, connectivity=1, watershed_line=True)``
    up to how ties are broken, and is several times faster.

    Args:
        cells: (H, W) binary prediction, 1 = cell interior.

    Returns:
        (H, W) int32 segment ids, 0 = line.
    """
    cells = np.asarray(cells)
    if cells.ndim != 2:
        raise MetricInputError(f"found an array of shape {cells.shape}; expected (height, width)")
    cells = binary_cells(cells, "cells", MetricInputError)
    segments, count = ndimage.label(cells, FOUR)
    return thin(cells, segments, count)
