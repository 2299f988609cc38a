"""A synthetic cell image to try the widgets in one click (File > Open Sample > unet).

Blurred discs (cells) of varied brightness on a dim, noisy background, 256 x 256, 16-bit:
made here from a fixed seed, so no download is needed. :func:`cell_image` also returns the
ground-truth instance labels (tests and the screenshot script train on them).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIZE = 256


def cell_image(size: int = SIZE, cells: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W) uint16, labels (H, W) uint16): ``cells`` non-overlapping discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    placed = 0
    for _ in range(50 * cells):
        if placed == cells:
            break
        r = rng.uniform(size / 20, size / 11)
        cy, cx = rng.uniform(r, size - r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        grown = ndimage.binary_dilation(disc, iterations=3)  # keep a gap between cells
        if labels[grown].any():
            continue
        placed += 1
        labels[disc] = placed
    brightness = np.concatenate([[0.15], rng.uniform(0.5, 1.0, placed)])
    image = ndimage.gaussian_filter(brightness[labels], 2.0)
    image = image + rng.normal(0.0, 0.05, image.shape)
    return (np.clip(image, 0, 1) * 60000).astype(np.uint16), labels


def sample_cells() -> list[tuple]:
    """The sample as napari layer data: the image and its true labels."""
    image, labels = cell_image()
    return [
        (image, {"name": "unet sample cells"}, "image"),
        (labels, {"name": "unet sample labels", "visible": False}, "labels"),
    ]
