"""Hole filling of instance labels too large for memory, one chunk at a time.

The same result as ``unet.inference.postprocess.fill_holes`` on the whole image (up to the object
numbering): background that an object encloses joins it. A hole is a component of the
background (8-connected, as objects are 4-connected) that does not touch the image border.
Holes nest: an object can lie in a hole of another and have holes of its own. The
whole-image code fills every hole with the outermost object around it (objects are filled
in scan order, and an enclosing object is always found first), so the hole of an island
inside a ring takes the ring's id. Here that outermost object is found from the nesting
tree of the components (objects and background; a tree for 4-connected objects with an
8-connected background): the parent of a component is the component just above its first
pixel in scan order (what lies above that pixel cannot be enclosed by the component).

Passes, with memory of one chunk, one image row and a few integers per component:

1. in scan order of chunks, label each chunk's background (``scipy.ndimage.label``, 8-
   connected) with ids made unique by an offset; note per provisional id its first pixel,
   the object above that pixel and whether it touches the image border, and per object its
   first pixel and the background id above it; join the ids across chunk borders (diagonal
   neighbours included) with a union-find;
2. per background component: its first pixel, border contact and parent object; per object:
   its parent background component (none: the object touches the border or the open
   background, it is outermost); every hole then takes the outermost ancestor object;
3. rewrite the chunks that hold holes (their background ids are computed again, from the
   unchanged object ids and the chunk's offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from unet.predict.zarr.labels import flatten, union_pairs

EIGHT_CONNECTED = np.ones((3, 3), bool)
BIG = np.iinfo(np.int64).max  # no pixel comes later


def fill_holes_chunks(labels, chunk: tuple[int, int], count: int) -> int:
    """Fill the holes of the instance labels ``labels`` in place; returns the pixels filled.

    Args:
        labels: the (H, W) object ids 1..``count`` (0: background), a zarr array (or NumPy),
            read and written chunk by chunk.
        chunk: (chunk height, chunk width): the blocks read and written.
        count: the largest object id.
    """
    scan = _scan(labels, chunk, count)  # pass 1
    fill = _hole_owners(scan, count)  # pass 2
    return _rewrite(labels, chunk, scan.offsets, fill)  # pass 3


@dataclass
class _Scan:
    """What pass 1 notes (module doc): per chunk, its provisional background ids' first
    pixels (y * w + x), the object above each and their border contact; the id offset of
    each chunk; the id pairs that touch across chunk borders; per object, the background id
    above its first pixel (-1: the image border)."""

    ids: int = 0  # provisional background ids so far
    firsts: list = field(default_factory=list)
    aboves: list = field(default_factory=list)
    touches: list = field(default_factory=list)
    offsets: dict = field(default_factory=dict)  # (y0, x0) -> the chunk's id offset
    pairs: list = field(default_factory=list)
    obj_above: np.ndarray | None = None


def _scan(labels, chunk: tuple[int, int], count: int) -> _Scan:
    """Pass 1: label each chunk's background in scan order and note what pass 2 needs."""
    h, w = labels.shape
    ch, cw = chunk
    obj_first = np.full(count + 1, BIG, np.int64)  # first pixel (y * w + x) of each object
    scan = _Scan(obj_above=np.zeros(count + 1, np.int64))
    above_bg = np.zeros(w, np.int64)  # background ids of the row above the chunk row
    above_obj = np.zeros(w, np.int64)  # object ids of that row
    for y0 in range(0, h, ch):
        y1 = min(y0 + ch, h)
        row_bg, row_obj = np.zeros(w, np.int64), np.zeros(w, np.int64)
        left = None  # background ids of the column left of the chunk
        for x0 in range(0, w, cw):
            x1 = min(x0 + cw, w)
            objects = np.asarray(labels[y0:y1, x0:x1]).astype(np.int64)
            background = _background(objects, scan.ids)
            scan.offsets[y0, x0] = scan.ids
            ids, first = _first_pixels(background)
            ly, lx = np.divmod(first, x1 - x0)
            # the object above each first pixel: in the chunk, or in the row above it
            over = np.where(ly > 0, objects[np.maximum(ly - 1, 0), lx], above_obj[x0 + lx])
            scan.firsts.append((y0 + ly) * w + x0 + lx)
            scan.aboves.append(over)
            edge = np.zeros(len(ids), bool)
            if len(ids):
                rim = np.unique(_rim(background, y0 == 0, y1 == h, x0 == 0, x1 == w))
                edge[np.searchsorted(ids, rim[rim > 0])] = True
            scan.touches.append(edge)
            scan.ids += len(ids)
            _note_objects(objects, background, y0, x0, w, above_bg, obj_first, scan.obj_above)
            if y0 > 0:  # the row above, diagonal neighbours included
                scan.pairs.append(_diagonal_pairs(above_bg, background[0], x0))
            if left is not None:
                scan.pairs.append(_column_pairs(left, background[:, 0]))
            left = background[:, -1]
            row_bg[x0:x1], row_obj[x0:x1] = background[-1], objects[-1]
        above_bg, above_obj = row_bg, row_obj
    return scan


def _hole_owners(scan: _Scan, count: int) -> np.ndarray:
    """Pass 2: components, their parents, and the outermost object around each hole;
    returns the object id per provisional background id (0: not a hole)."""
    n = scan.ids
    parent = np.arange(n + 1, dtype=np.int64)
    for p in scan.pairs:
        union_pairs(parent, p)
    roots = flatten(parent)
    first = np.concatenate([np.zeros(1, np.int64), *scan.firsts])
    over = np.concatenate([np.zeros(1, np.int64), *scan.aboves])
    touch = np.concatenate([np.zeros(1, bool), *scan.touches])
    open_ = np.zeros(n + 1, bool)  # per root: touches the border
    np.logical_or.at(open_, roots, touch)
    root_first = np.full(n + 1, BIG, np.int64)
    np.minimum.at(root_first, roots, first)
    is_first = first == root_first[roots]
    hole_parent = np.zeros(n + 1, np.int64)  # per root: the object above its first pixel
    hole_parent[roots[is_first]] = over[is_first]
    # per object: the object around the hole it lies in, or itself when it is outermost
    obj_above = scan.obj_above
    bg = np.where(obj_above > 0, roots[np.maximum(obj_above, 0)], 0)
    enclosed = (bg > 0) & ~open_[bg]
    top = np.where(enclosed, hole_parent[bg], np.arange(count + 1))
    top[0] = 0
    while not np.array_equal(top, top[top]):
        top = top[top]
    fill = np.where(open_, 0, top[hole_parent])  # provisional background id -> object id
    fill = fill[roots]
    fill[0] = 0
    return fill


def _rewrite(labels, chunk: tuple[int, int], offsets: dict, fill: np.ndarray) -> int:
    """Pass 3: rewrite the chunks with holes (their background ids computed again from the
    unchanged object ids and the chunk's offset); returns the pixels filled."""
    h, w = labels.shape
    ch, cw = chunk
    filled = 0
    for (y0, x0), start in offsets.items():
        ys, xs = slice(y0, min(y0 + ch, h)), slice(x0, min(x0 + cw, w))
        objects = np.asarray(labels[ys, xs])
        new = fill[_background(objects.astype(np.int64), start)]
        if new.any():
            labels[ys, xs] = np.where(new > 0, new, objects).astype(objects.dtype)
            filled += int((new > 0).sum())
    return filled


def _background(objects: np.ndarray, offset: int) -> np.ndarray:
    """8-connected components of a chunk's background, numbered from ``offset + 1``."""
    background, _ = ndimage.label(objects == 0, structure=EIGHT_CONNECTED)
    background = background.astype(np.int64)
    return np.where(background > 0, background + offset, 0)


def _first_pixels(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids > 0 of ``block`` and the flat index of each one's first pixel."""
    ids, first = np.unique(block, return_index=True)
    keep = ids > 0
    return ids[keep], first[keep]


def _rim(block: np.ndarray, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """The ids on the sides of ``block`` that lie on the image border."""
    sides = [block[0] if top else (), block[-1] if bottom else ()]
    sides += [block[:, 0] if left else (), block[:, -1] if right else ()]
    return np.concatenate([np.asarray(s, np.int64) for s in sides])


def _note_objects(objects, background, y0, x0, w, above_bg, obj_first, obj_above) -> None:
    """Keep each object's earliest pixel so far and the background id above it."""
    ids, first = _first_pixels(objects)
    ly, lx = np.divmod(first, objects.shape[1])
    flat = (y0 + ly) * w + x0 + lx
    if y0 == 0:
        row_above = np.full(len(ids), -1, np.int64)  # the image border
    else:
        row_above = above_bg[x0 + lx]
    over = np.where(ly > 0, background[np.maximum(ly - 1, 0), lx], row_above)
    over = np.where((ly == 0) & (y0 == 0), -1, over)
    better = flat < obj_first[ids]
    obj_first[ids[better]] = flat[better]
    obj_above[ids[better]] = over[better]


def _diagonal_pairs(above: np.ndarray, row: np.ndarray, x0: int) -> np.ndarray:
    """(id, id) of background pixels of the row above (whole image width) and of the
    chunk's first row (from column ``x0``) that touch, diagonals included."""
    out = []
    xs = np.arange(x0, x0 + len(row))
    for d in (-1, 0, 1):
        valid = (xs + d >= 0) & (xs + d < len(above))
        a, b = above[xs[valid] + d], row[valid]
        both = (a > 0) & (b > 0)
        out.append(np.stack([a[both], b[both]], axis=1))
    return np.unique(np.concatenate(out), axis=0)


def _column_pairs(left: np.ndarray, column: np.ndarray) -> np.ndarray:
    """(id, id) of touching background pixels of two neighbouring columns, diagonals
    included (same rows)."""
    out = []
    n = len(column)
    for d in (-1, 0, 1):
        a = left[max(0, -d) : n - max(0, d)]
        b = column[max(0, d) : n + min(0, d)]
        both = (a > 0) & (b > 0)
        out.append(np.stack([a[both], b[both]], axis=1))
    return np.unique(np.concatenate(out), axis=0)
