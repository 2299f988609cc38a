"""Per-pixel loss weights of the paper (eq. 2), precomputed once per image and cached.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies; d1 and d2 are the distances to the nearest and the
second-nearest cell. The border term is large only in narrow gaps between two cells,
which forces the network to learn the thin separating borders (paper, Sec. 3, Fig. 3d).

Choices the paper leaves open, made here:
- w_c(x) = N / (K * N_k) for a pixel of class k (N pixels, K classes present, N_k of class
  k), computed per image: every class gets the same total weight, and the mean of w_c is 1.
- d1, d2 are Euclidean distances from a pixel to the nearest pixel of a cell, and the
  border term is added on background pixels only (inside a cell d1 = 0 and the term
  would only blur the cell's edge).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

# Bump when the computation changes so that stale cache files are not reused.
_CACHE_VERSION = "1"


def class_balance_weights(classes: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """w_c: each class present gets the same total weight; the mean over pixels is 1.

    Args:
        classes: (H, W) integer class map with values in [0, num_classes).
    """
    counts = np.bincount(classes.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = classes.size / (present.sum() * counts[present])
    return per_class[classes].astype(np.float32)


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

    Args:
        instances: (H, W) integer instance ids, 0 = no instance.
    """
    h, w = instances.shape
    d1 = np.full((h, w), np.inf, dtype=np.float64)
    d2 = np.full((h, w), np.inf, dtype=np.float64)
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
        dist = ndimage.distance_transform_edt(instances[box] != index + 1)
        a, b = d1[box], d2[box]  # views: updated in place
        b[...] = np.where(dist < a, a, np.minimum(b, dist))
        a[...] = np.minimum(a, dist)
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
        term = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    term[~np.isfinite(term)] = 0.0
    term[instances > 0] = 0.0
    return term.astype(np.float32)


def cells_from_binary(classes: np.ndarray) -> np.ndarray:
    """Cells as the 4-connected components of the cell class (class 1) of a binary map."""
    instances, _ = ndimage.label(classes == 1)
    return instances


def weight_map(
    classes: np.ndarray, instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0
) -> np.ndarray:
    """The paper's w(x) = w_c(x) + border term, as float32 (H, W)."""
    return class_balance_weights(classes) + border_weights(instances, w0, sigma)


def _cache_key(classes: np.ndarray, params: dict) -> str:
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(classes).tobytes())
    digest.update(
        json.dumps(
            {"shape": classes.shape, "dtype": str(classes.dtype), **params}, sort_keys=True
        ).encode()
    )
    return digest.hexdigest()


def cached_binary_weight_map(
    classes: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Weight map of a binary class map (cells = its connected components), cached on disk.

    The cache file is named by a hash of the labels and the parameters, so a change to
    either (or to this module's computation version) computes a new map.
    """
    if cache_dir is None:
        return weight_map(classes, cells_from_binary(classes), w0, sigma)
    path = (
        Path(cache_dir)
        / f"weights-{_cache_key(classes, {'w0': w0, 'sigma': sigma, 'v': _CACHE_VERSION})}.npy"
    )
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == classes.shape:
                return cached
        except (OSError, ValueError):
            pass  # a truncated or foreign file: recompute and replace it
    weights = weight_map(classes, cells_from_binary(classes), w0, sigma)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename, so that concurrent workers never read half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, weights)
    os.replace(tmp.name, path)
    return weights
