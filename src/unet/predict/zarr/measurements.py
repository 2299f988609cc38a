"""Per-object measurements of a label image too large for memory, one chunk at a time.

The same columns as ``unet.predict.measurements.measure_frame`` (which uses ``regionprops_table`` on
a whole frame), from one pass over the chunks that adds up, per label, the pixel count, the
sums of row and column coordinates and of probability, and keeps the smallest and largest
row and column. Memory is one chunk plus eight numbers per label, whatever the image size;
objects crossing chunk borders need no joining because the labels are already global
(``unet.predict.zarr.labels``). The border flag follows from the bounding box, as for a whole
frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from unet.predict.measurements import PIXELS, MeasurementsWriter, PixelSize, finish_columns


class Sums:
    """Per-label running sums (index = label; grown as larger labels appear)."""

    def __init__(self, size: int = 1):
        self.area = np.zeros(size, dtype=np.int64)
        self.sum_y = np.zeros(size)
        self.sum_x = np.zeros(size)
        self.sum_p = np.zeros(size)
        self.min_y = np.full(size, np.iinfo(np.int64).max)
        self.min_x = np.full(size, np.iinfo(np.int64).max)
        self.max_y = np.full(size, -1)
        self.max_x = np.full(size, -1)

    def grow(self, size: int) -> None:
        """Make room for labels below ``size``."""
        old = len(self.area)
        if size <= old:
            return
        size = max(size, 2 * old)  # doubling: a few copies in all, not one per chunk
        for name, value in vars(self).items():
            fill = value[0] if name.startswith(("min", "max")) else 0
            setattr(self, name, np.concatenate([value, np.full(size - old, fill, value.dtype)]))

    def add(self, labels: np.ndarray, probability: np.ndarray, y0: int, x0: int) -> None:
        """Add one block of labels and its probability, whose top-left pixel is (y0, x0)."""
        labels = np.asarray(labels)
        ys, xs = np.nonzero(labels)
        if len(ys) == 0:
            return
        ids = labels[ys, xs].astype(np.int64)
        self.grow(int(ids.max()) + 1)
        size = len(self.area)
        self.area += np.bincount(ids, minlength=size)
        self.sum_y += np.bincount(ids, weights=ys + y0, minlength=size)
        self.sum_x += np.bincount(ids, weights=xs + x0, minlength=size)
        p = np.asarray(probability)[ys, xs].astype(np.float64)
        self.sum_p += np.bincount(ids, weights=p, minlength=size)
        np.minimum.at(self.min_y, ids, ys + y0)
        np.minimum.at(self.min_x, ids, xs + x0)
        np.maximum.at(self.max_y, ids, ys + y0)
        np.maximum.at(self.max_x, ids, xs + x0)

    def columns(self) -> dict[str, np.ndarray]:
        """The pixel columns of ``unet.predict.measurements`` for every label present, in order."""
        present = np.flatnonzero(self.area)
        present = present[present > 0]
        area = self.area[present]
        return {
            "label": present,
            "area_px": area.astype(np.float64),  # as regionprops_table gives it
            "centroid_y_px": self.sum_y[present] / area,
            "centroid_x_px": self.sum_x[present] / area,
            "bbox_min_y": self.min_y[present],
            "bbox_min_x": self.min_x[present],
            "bbox_max_y": self.max_y[present] + 1,  # half-open, as regionprops
            "bbox_max_x": self.max_x[present] + 1,
            "mean_probability": self.sum_p[present] / area,
        }


def measure_chunks(
    read_labels: Callable[[slice, slice], np.ndarray],
    read_probability: Callable[[slice, slice], np.ndarray],
    shape: tuple[int, int],
    chunk: tuple[int, int],
    frame: str,
    pixel_size: PixelSize = PIXELS,
) -> dict[str, np.ndarray]:
    """The columns of :func:`unet.predict.measurements.measure_frame` for an (H, W) label image read
    block by block.

    Args:
        read_labels, read_probability: (row slice, column slice) -> block.
        shape: (H, W) of the image.
        chunk: (height, width) of the blocks read (best the arrays' chunks).
        frame, pixel_size: as in :func:`unet.predict.measurements.measure_frame`.
    """
    sums = Sums()
    (h, w), (ch, cw) = shape, chunk
    for y in range(0, h, ch):
        for x in range(0, w, cw):
            ys, xs = slice(y, min(y + ch, h)), slice(x, min(x + cw, w))
            sums.add(read_labels(ys, xs), read_probability(ys, xs), y, x)
    return finish_columns(sums.columns(), shape, frame, pixel_size)


def write_store_measurements(store, names: list[str], pixel_size: PixelSize) -> int:
    """``measurements.csv`` inside a labelled prediction store
    (``unet.predict.zarr.store.PredictionStore``): the rows of every section, named by
    ``names``; returns the number of rows."""
    with MeasurementsWriter(store.path, True, pixel_size) as table:
        for index, name in enumerate(names):
            table.add_columns(measure_plane(store.plane(index), name, pixel_size))
    return table.objects


def measure_plane(plane, name: str, pixel_size: PixelSize) -> dict[str, np.ndarray]:
    """The columns of one labelled section of a store (``unet.predict.zarr.store.Plane``)."""
    labels = plane.labels()
    return measure_chunks(
        lambda ys, xs: labels[ys, xs],
        lambda ys, xs: plane.read_probability((ys, xs)),
        tuple(labels.shape),
        tuple(labels.chunks),
        name,
        pixel_size,
    )
