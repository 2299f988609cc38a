"""Instance labels of a probability map too large for memory, one chunk at a time.

The same objects as ``unet.inference.postprocess.PostProcessing`` with ``fill_holes``, ``regrow``
and
``border_min_area`` off: the 4-connected components of ``p > threshold`` with at least
``min_area`` pixels, numbered 1..n without gaps (in a different order than a whole-image
labelling: equal up to renumbering). Three passes over the chunks:

1. label each chunk on its own (``scipy.ndimage.label``), with ids made unique by an
   offset, and count each provisional id's pixels;
2. join, with a union-find over the provisional ids, the two ids on either side of every
   chunk border pixel pair that are both foreground (4-connectivity: only the pixel
   straight across counts), and sum the pixel counts of each joined object;
3. rewrite each chunk through one lookup table: provisional id -> final id (0 for objects
   smaller than ``min_area``).

Why a union-find and not dask-image: the border pass needs only one row or column of ids on
each side of a border, the lookup table is one integer per provisional id, and nothing here
needs a task scheduler; plain SciPy adds no dependency and keeps memory at one chunk plus the
table. Hole filling follows in ``unet.predict.zarr.holes``; watershed regrowth and the border
rule are not local to a chunk and are not offered here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def find_root(parent: np.ndarray, a: int) -> int:
    """The root of ``a`` in the union-find forest ``parent``."""
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:  # path compression
        parent[a], a = root, parent[a]
    return root


def union_pairs(parent: np.ndarray, pairs: np.ndarray) -> None:
    """Join the two ids of each row of ``pairs`` (the smaller id becomes the root)."""
    for a, b in pairs:
        ra, rb = find_root(parent, int(a)), find_root(parent, int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)


def label_chunks(
    read: Callable[[slice, slice], np.ndarray],
    labels: np.ndarray,
    chunk: tuple[int, int],
    threshold: float = 0.5,
    min_area: int = 0,
) -> int:
    """Label the foreground ``p > threshold`` of a chunked map; returns the object count.

    Args:
        read: (row slice, column slice) -> probability block (float).
        labels: the (H, W) uint32 output, a zarr array (or NumPy); written twice per chunk
            (provisional ids, then final ones) and read along chunk borders.
        chunk: (chunk height, chunk width) of ``labels``: the blocks read and written.
        threshold, min_area: as in ``unet.inference.postprocess.PostProcessing``.
    """
    h, w = labels.shape
    ch, cw = chunk
    blocks = [
        (slice(y, min(y + ch, h)), slice(x, min(x + cw, w)))
        for y in range(0, h, ch)
        for x in range(0, w, cw)
    ]
    # pass 1: provisional ids, unique across chunks; the area of each (index 0: background)
    areas = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for ys, xs in blocks:
        block, n = ndimage.label(read(ys, xs) > threshold, structure=FOUR_CONNECTED)
        areas.append(np.bincount(block.ravel(), minlength=n + 1)[1:])
        labels[ys, xs] = np.where(block > 0, block.astype(np.uint32) + np.uint32(offset), 0)
        offset += n
    area = np.concatenate(areas)  # (offset + 1,)
    # pass 2: union-find over the pixel pairs across every chunk border
    parent = np.arange(offset + 1, dtype=np.int64)
    for y in range(ch, h, ch):  # row y - 1 against row y
        union_pairs(parent, _pairs(labels[y - 1, :], labels[y, :]))
    for x in range(cw, w, cw):  # column x - 1 against column x
        union_pairs(parent, _pairs(labels[:, x - 1], labels[:, x]))
    roots = flatten(parent)
    total = np.bincount(roots, weights=area, minlength=offset + 1)
    keep = (total >= max(min_area, 1)) & (np.arange(offset + 1) == roots)
    keep[0] = False
    final = np.zeros(offset + 1, dtype=np.uint32)
    final[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint32)
    lut = final[roots]  # provisional id -> final id
    # pass 3: rewrite
    for ys, xs in blocks:
        labels[ys, xs] = lut[np.asarray(labels[ys, xs])]
    return int(keep.sum())


def flatten(parent: np.ndarray) -> np.ndarray:
    """Every id's root (pointer jumping until nothing changes)."""
    roots = parent
    while not np.array_equal(roots, parent[roots]):
        roots = parent[roots]
    return roots


def _pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(id, id) for the pixel pairs across a border where both sides are foreground."""
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    both = (first > 0) & (second > 0)
    return np.unique(np.stack([first[both], second[both]], axis=1), axis=0)
