"""Per-pixel loss weights of the paper (eq. 2), precomputed once per image and cached.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies; d1 and d2 are the distances to the nearest and the
second-nearest cell. The border term is large only in narrow gaps between two cells,
which forces the network to learn the thin separating borders (paper, Sec. 3, Fig. 3d).

Two kinds of labels come in: class maps (ISBI 2012, and the K-class semantic masks of a
folder data set: the objects are the connected components of each class >= 1) and
instance labels (Cell Tracking Challenge, folder instance masks: one id per cell). For
instance labels the binary target is made here: "the separation border is computed
using morphological operations" (paper, Sec. 3), i.e. a pixel whose ``border_size`` x
``border_size`` neighbourhood holds two different cell ids becomes
background, so touching cells are separated by a background line in the target.

Choices the paper leaves open, made here:
- w_c(x) = N / (K * N_k) for a pixel of class k (N pixels, K classes present, N_k of class
  k), computed per image: every class gets the same total weight, and the mean of w_c is 1.
- d1, d2 are Euclidean distances from a pixel to the nearest pixel of a cell, and the
  border term is added on background pixels only (inside a cell d1 = 0 and the term
  would only blur the cell's edge). For instance labels the cells are the instances less
  their separation borders, so border pixels get the term like any other gap pixel.
- Pixels that must not be learned (an ``ignore`` mask, e.g. unannotated cells) get weight
  0, and w_c is computed over the remaining pixels only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from unet.io.atomic import atomic_file

# Bump when the computation changes so that stale cache files are not reused.
_CACHE_VERSION = "3"


def class_balance_weights(
    classes: np.ndarray, num_classes: int = 2, mask: np.ndarray | None = None
) -> np.ndarray:
    """w_c: each class present gets the same total weight; the mean over pixels is 1.

    Args:
        classes: (H, W) integer class map with values in [0, num_classes).
        mask: (H, W) bool, the pixels to balance over (None: all); the others get 0.
    """
    counted = classes if mask is None else classes[mask]
    counts = np.bincount(counted.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = counted.size / (present.sum() * counts[present])
    weights = per_class[classes].astype(np.float32)
    if mask is not None:
        weights[~mask] = 0.0
    return weights


def border_margin(w0: float, sigma: float, tolerance: float = 1e-6) -> int:
    """Distance beyond which the border term is below ``tolerance`` (d1 + d2 > margin)."""
    if w0 <= tolerance:
        return 0
    return math.ceil(sigma * math.sqrt(2.0 * math.log(w0 / tolerance)))


def nearest_two_distances(
    instances: np.ndarray, margin: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: distances from each pixel to the nearest and second-nearest instance.

    Each instance's distance transform is computed only inside its bounding box grown by
    ``margin`` pixels: K transforms of small crops instead of K full-image transforms,
    which is what makes this fast for images with hundreds of cells. Distances beyond the
    margin are returned as ``inf``; with ``margin=None`` every transform is full-image
    (exact, slow; the reference the tests compare against).

    The transforms are OpenCV's exact Euclidean ones (``DIST_MASK_PRECISE``), in float32:
    they equal ``scipy.ndimage.distance_transform_edt`` to float32 precision, 2-3 times
    faster.

    Args:
        instances: (H, W) integer instance ids, 0 = no instance.
    """
    h, w = instances.shape
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(instances)):
        if box is None:
            continue
        if margin is None:
            box = (slice(0, h), slice(0, w))
        else:
            m = int(math.ceil(margin))
            box = tuple(
                slice(max(s.start - m, 0), min(s.stop + m, n))
                for s, n in zip(box, (h, w), strict=True)
            )
        outside = (instances[box] != index + 1).astype(np.uint8)
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        a, b = d1[box], d2[box]  # views: updated in place
        np.minimum(b, np.maximum(a, dist), out=b)  # the old d1 or this cell, if nearer
        np.minimum(a, dist, out=a)
    return d1, d2


def border_weights(
    instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0, exact: bool = False
) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels, 0 inside instances.

    Args:
        instances: (H, W) integer instance ids, 0 = background.
        w0, sigma: paper, Sec. 3: w0 = 10, sigma ~ 5 px.
        exact: full-image distance transforms instead of the margin-limited ones (which
            differ from the exact value by less than 1e-6).
    """
    margin = None if exact else border_margin(w0, sigma)
    d1, d2 = nearest_two_distances(instances, margin)
    with np.errstate(invalid="ignore", over="ignore"):
        term = w0 * np.exp((d1 + d2) ** 2 * np.float32(-0.5 / sigma**2))
    term[~np.isfinite(term) | (instances > 0)] = 0.0
    return term.astype(np.float32, copy=False)


def cells_from_binary(classes: np.ndarray) -> np.ndarray:
    """Cells as the 4-connected components of the cell class (class 1) of a binary map."""
    instances, _ = ndimage.label(classes == 1)
    return instances


def weight_map(
    classes: np.ndarray, instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0
) -> np.ndarray:
    """The paper's w(x) = w_c(x) + border term, as float32 (H, W)."""
    return class_balance_weights(classes) + border_weights(instances, w0, sigma)


def cells_from_classes(classes: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """Objects of a K-class map: the 4-connected components of each class k >= 1, numbered
    one after another (touching objects of two classes are two objects); pixels of
    ``ignore`` belong to none. For two classes these are :func:`cells_from_binary`'s cells."""
    cells = np.zeros(classes.shape, np.int32)
    for k in range(1, int(classes.max(initial=0)) + 1):
        mask = classes == k
        if ignore is not None:
            mask &= ~ignore
        components, count = ndimage.label(mask)
        cells[components > 0] = components[components > 0] + cells.max()
    return cells


def class_weight_map(
    classes: np.ndarray,
    num_classes: int = 2,
    ignore: np.ndarray | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """The paper's weight map of a K-class map (semantic masks): w_c balanced over the
    ``num_classes`` classes on the pixels outside ``ignore``, plus the border term between
    the objects of :func:`cells_from_classes`; 0 on ``ignore``. For a binary map without
    ``ignore`` this equals :func:`weight_map` of its connected components."""
    known = None if ignore is None else ~ignore
    weights = class_balance_weights(classes, num_classes, mask=known)
    weights += border_weights(cells_from_classes(classes, ignore), w0, sigma)
    if ignore is not None:
        weights[ignore] = 0.0
    return weights


def separation_borders(instances: np.ndarray, size: int = 3) -> np.ndarray:
    """(H, W) bool: cell pixels whose ``size`` x ``size`` neighbourhood holds another cell's id.

    These are the pixels where two instances touch (both sides of the contact line, for
    ``size=3`` one pixel each); made background, they separate the cells in the target.

    Args:
        instances: (H, W) integer instance ids, 0 = background.
        size: odd side of the square neighbourhood.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd number >= 1, got {size}")
    h, w = instances.shape
    r = size // 2
    border = np.zeros((h, w), bool)
    # Every pair of pixels (p, q = p + (dy, dx)) within the window, each pair once: if both
    # are cells with different ids, both are border pixels. Beyond the image there is nothing.
    for dy in range(r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue
            p = (slice(0, h - dy), slice(max(-dx, 0), w - max(dx, 0)))
            q = (slice(dy, h), slice(max(dx, 0), w - max(-dx, 0)))
            a, b = instances[p], instances[q]
            touch = (a != b) & (a > 0) & (b > 0)
            border[p] |= touch
            border[q] |= touch
    return border


def instance_targets(instances: np.ndarray, border_size: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Binary class map (1 = cell) with separation borders, and the cells it shows.

    Returns:
        classes: (H, W) uint8, 1 on instances except their separation borders.
        cells: (H, W) instance ids with the separation borders set to 0.
    """
    cells = np.where(separation_borders(instances, border_size), 0, instances)
    return (cells > 0).astype(np.uint8), cells


def instance_weight_map(
    instances: np.ndarray,
    ignore: np.ndarray | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    border_size: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and the paper's weight map from instance labels.

    Args:
        instances: (H, W) integer instance ids, 0 = background.
        ignore: (H, W) bool, pixels to leave out of the loss (weight 0), or None.
        w0, sigma: border term (paper, Sec. 3: 10 and 5 px).
        border_size: neighbourhood of :func:`separation_borders`.

    Returns:
        classes: (H, W) uint8 (1 = cell, 0 = background and separation borders).
        weights: (H, W) float32, 0 on ``ignore``.
    """
    classes, cells = instance_targets(instances, border_size)
    known = None if ignore is None else ~ignore
    weights = class_balance_weights(classes, mask=known) + border_weights(cells, w0, sigma)
    if ignore is not None:
        weights[ignore] = 0.0
    return classes, weights


class CacheWarning(UserWarning):
    """The weight-map cache could not be used; maps are computed (correctly) without it."""


_unwritable: set[str] = set()  # cache folders already warned about: one warning each


def _cache_key(arrays: Sequence[np.ndarray], params: dict) -> str:
    digest = hashlib.sha1()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    shapes = [[list(a.shape), str(a.dtype)] for a in arrays]
    digest.update(json.dumps({"arrays": shapes, **params}, sort_keys=True).encode())
    return digest.hexdigest()


def _checksum(weights: np.ndarray, key: str) -> str:
    """Ties a cached map's values to the inputs and parameters it was computed from."""
    digest = hashlib.sha1(key.encode())
    digest.update(str((weights.shape, str(weights.dtype))).encode())
    digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def _write_cache(path: Path, key: str, weights: np.ndarray) -> None:
    # written under a temporary name and renamed: concurrent workers never read half a file
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, weights=weights, checksum=np.array(_checksum(weights, key)))


def _read_cache(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached map if the file is whole and its checksum matches, else None."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            weights, checksum = stored["weights"], str(stored["checksum"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a truncated or foreign file: recomputed and replaced
    if weights.shape != shape or checksum != _checksum(weights, key):
        return None  # damaged contents (or a file copied under another name)
    return weights


def _cached(
    inputs: Sequence[np.ndarray],
    params: dict,
    compute: Callable[[], np.ndarray],
    cache_dir: str | os.PathLike | None,
) -> np.ndarray:
    """``compute()``, stored in ``cache_dir`` under a hash of the inputs and parameters.

    Each file holds the map and a checksum of its values together with that hash; a file
    whose checksum does not match is recomputed and replaced. A folder that cannot be
    written to gives one :class:`CacheWarning` and the maps are computed in memory.
    """
    if cache_dir is None:
        return compute()
    key = _cache_key(inputs, {**params, "v": _CACHE_VERSION})
    path = Path(cache_dir) / f"weights-{key}.npz"
    if path.is_file():
        cached = _read_cache(path, key, inputs[0].shape)
        if cached is not None:
            return cached
    result = compute()
    if str(cache_dir) in _unwritable:
        return result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_cache(path, key, result)
    except OSError as err:
        _unwritable.add(str(cache_dir))
        warnings.warn(
            f"weight-map cache folder {cache_dir} cannot be written ({type(err).__name__}: "
            f"{err.strerror or err}); computing weight maps in memory. Set paths.cache_dir "
            "(or $UNET_CACHE_DIR) to a writable folder to reuse them between runs",
            CacheWarning,
            stacklevel=2,
        )
    return result


def cached_binary_weight_map(
    classes: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Weight map of a binary class map (cells = its connected components), cached on disk.

    The cache file is named by a hash of the labels and the parameters, so a change to
    either (or to this module's computation version) computes a new map; it also holds a
    checksum of the map's values, so a damaged file is recomputed.
    """
    return _cached(
        [classes],
        {"kind": "binary", "w0": w0, "sigma": sigma},
        lambda: weight_map(classes, cells_from_binary(classes), w0, sigma),
        cache_dir,
    )


def cached_class_weight_map(
    classes: np.ndarray,
    num_classes: int = 2,
    ignore: np.ndarray | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """:func:`class_weight_map`, cached on disk like the binary maps."""
    inputs = [classes] if ignore is None else [classes, ignore]
    return _cached(
        inputs,
        {"kind": "classes", "num_classes": num_classes, "w0": w0, "sigma": sigma},
        lambda: class_weight_map(classes, num_classes, ignore, w0, sigma),
        cache_dir,
    )


def cached_instance_weight_map(
    instances: np.ndarray,
    ignore: np.ndarray | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    border_size: int = 3,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`instance_weight_map` with the weights cached on disk like the binary maps.

    The class map is recomputed (a few ms); the cache key covers the instances, the
    ignore mask and every parameter.
    """
    classes, _ = instance_targets(instances, border_size)
    inputs = [instances] if ignore is None else [instances, ignore]
    weights = _cached(
        inputs,
        {"kind": "instances", "w0": w0, "sigma": sigma, "border_size": border_size},
        lambda: instance_weight_map(instances, ignore, w0, sigma, border_size)[1],
        cache_dir,
    )
    return classes, weights
