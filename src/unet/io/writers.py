"""Writing prediction results: probability stacks, label images and PNG overlays.

The last link of the inference chain (image -> tiler -> probabilities -> post-processing ->
writer); nothing here knows about networks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet.io.atomic import atomic_file, temporary_name
from unet.io.pixel_size import PixelSize, tiff_resolution


class ProbabilityStackWriter:
    """Appends float32 maps to a multi-page TIFF as they are predicted: one page per (H, W)
    map, or K pages per (K, H, W) stack of class probabilities.

    Maps of one shape form one (N, H, W) (or (N, K, H, W)) series, which
    ``tifffile.imread`` returns; a map of another shape starts a new series
    (``tifffile.TiffFile(path).series``). The pages go to a temporary file that becomes
    ``path`` only when the writer is closed without an error: an interrupted prediction
    leaves no stack that looks complete.

    Args:
        path: the TIFF file to write (replaced if it exists).
        bigtiff: write BigTIFF, needed beyond 4 GB.
        pixel_size: stored as every page's resolution (None: unknown, none stored).
    """

    def __init__(
        self, path: str | Path, bigtiff: bool = False, pixel_size: PixelSize | None = None
    ):
        self.path = Path(path)
        self.resolution = tiff_resolution(pixel_size)
        self._tmp = temporary_name(self.path)
        self._tiff = tifffile.TiffWriter(self._tmp, bigtiff=bigtiff)
        self.shapes: list[tuple[int, int]] = []
        self.num_series = 0

    def write(self, page: np.ndarray) -> None:
        page = np.asarray(page, dtype=np.float32)
        contiguous = bool(self.shapes) and self.shapes[-1] == page.shape
        self._tiff.write(page, contiguous=contiguous, photometric="minisblack", **self.resolution)
        self.shapes.append(page.shape)
        self.num_series += not contiguous

    def close(self, error: BaseException | None = None) -> None:
        """Finish the file and give it its name (with ``error``: delete it instead)."""
        self._tiff.close()
        if error is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ProbabilityStackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


def write_label_image(
    path: str | Path, labels: np.ndarray, pixel_size: PixelSize | None = None
) -> None:
    """An instance label image (0 = background), uncompressed uint16 as the Cell Tracking
    Challenge expects (uint32 if there are more than 65535 objects), with the resolution of
    ``pixel_size`` (None: none)."""
    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    resolution = tiff_resolution(pixel_size)
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), photometric="minisblack", **resolution)


def write_class_image(
    path: str | Path, classes: np.ndarray, pixel_size: PixelSize | None = None
) -> None:
    """A class-index image (argmax of the class probabilities), uncompressed uint8, with
    ``pixel_size`` as its resolution (None: none stored)."""
    with atomic_file(path) as tmp:
        tifffile.imwrite(
            tmp,
            classes.astype(np.uint8),
            photometric="minisblack",
            **tiff_resolution(pixel_size),
        )


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image in gray, each labelled object tinted in its own colour."""
    lo, hi = np.percentile(image, (1, 99))
    gray = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    # fixed colours, bright enough to see on gray; label 0 (background) is not tinted
    palette = np.random.default_rng(0).integers(60, 256, size=(int(labels.max(initial=0)) + 1, 3))
    cells = labels > 0
    rgb[cells] = (1 - alpha) * rgb[cells] + alpha * palette[labels[cells]]
    return rgb.round().astype(np.uint8)


def write_png(path: str | Path, picture: np.ndarray) -> Path:
    """A PNG of an (H, W, 3) uint8 picture, written atomically; returns the path."""
    with atomic_file(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)


def write_overlay(path: str | Path, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A PNG of :func:`overlay`, for a quick look; returns the overlay."""
    picture = overlay(image, labels)
    write_png(path, picture)
    return picture
