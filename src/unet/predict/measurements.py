"""Per-object measurements of a label image: one table row per object per frame.

Every object (label > 0) of a frame gets its area, centroid and bounding box in pixels and,
through the pixel size, in physical units, the mean cell probability over its pixels and
whether it touches the image border. :func:`measure_frame` computes them with scikit-image's
``regionprops_table`` on a whole frame; ``unet.predict.zarr.measurements`` gives the same columns
chunk by chunk for label images too large for memory. :class:`MeasurementsWriter` appends
the rows of frame after frame to one CSV file that appears only when complete
(``unet.io.atomic``).

Choices: coordinates are (row, column) = (y, x) with pixel centres at integers, as in
scikit-image; the bounding box is half-open (``bbox_max_*`` is one past the last pixel);
``touches_border`` says that some pixel lies in the first or last row or column (such
objects are usually cut by the image edge, so their area understates the cell's). Where the
pixel size is unknown it is 1 with unit ``pixel``, so the physical columns equal the pixel
ones.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from skimage.measure import regionprops_table

from unet.io.atomic import atomic_file
from unet.io.pixel_size import PIXELS, PixelSize

MEASUREMENTS = "measurements.csv"
COLUMNS = (
    "frame",
    "label",
    "area_px",
    "centroid_y_px",
    "centroid_x_px",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_y",
    "bbox_max_x",
    "area",  # in unit^2
    "centroid_y",  # in unit
    "centroid_x",
    "unit",
    "mean_probability",
    "touches_border",
)
# regionprops_table's names of the pixel columns
REGIONPROPS = {
    "label": "label",
    "area_px": "area",
    "centroid_y_px": "centroid-0",
    "centroid_x_px": "centroid-1",
    "bbox_min_y": "bbox-0",
    "bbox_min_x": "bbox-1",
    "bbox_max_y": "bbox-2",
    "bbox_max_x": "bbox-3",
    "mean_probability": "intensity_mean",
}


def measure_frame(
    labels: np.ndarray,
    probability: np.ndarray,
    frame: str,
    pixel_size: PixelSize = PIXELS,
) -> dict[str, np.ndarray]:
    """The :data:`COLUMNS` of every object of one frame (one entry per object, by label).

    Args:
        labels: (H, W) integer instance labels, 0 = background.
        probability: (H, W) cell probability, the intensity averaged per object.
        frame: the frame's name (the ``frame`` column).
        pixel_size: for the physical columns.
    """
    props = regionprops_table(
        np.asarray(labels),
        intensity_image=np.asarray(probability),
        properties=("label", "area", "centroid", "bbox", "intensity_mean"),
    )
    columns = {ours: np.asarray(props[theirs]) for ours, theirs in REGIONPROPS.items()}
    return finish_columns(columns, labels.shape, frame, pixel_size)


def finish_columns(
    columns: dict[str, np.ndarray], shape: tuple[int, int], frame: str, pixel_size: PixelSize
) -> dict[str, np.ndarray]:
    """Add the frame, physical and border columns to the pixel columns of one frame."""
    n = len(columns["label"])
    columns["frame"] = np.full(n, frame, dtype=object)
    columns["area"] = columns["area_px"] * (pixel_size.y * pixel_size.x)
    columns["centroid_y"] = columns["centroid_y_px"] * pixel_size.y
    columns["centroid_x"] = columns["centroid_x_px"] * pixel_size.x
    columns["unit"] = np.full(n, pixel_size.unit, dtype=object)
    columns["touches_border"] = (
        (columns["bbox_min_y"] == 0)
        | (columns["bbox_min_x"] == 0)
        | (columns["bbox_max_y"] == shape[0])
        | (columns["bbox_max_x"] == shape[1])
    )
    return {name: columns[name] for name in COLUMNS}


def rows(columns: dict[str, np.ndarray]) -> list[list]:
    """The table rows (lists in :data:`COLUMNS` order) of a frame's columns; integers stay
    integers and floats keep every digit (``repr``), so the CSV reads back exactly."""
    values = [np.asarray(columns[name]).tolist() for name in COLUMNS]
    return [list(row) for row in zip(*values, strict=True)]


class MeasurementsWriter:
    """``measurements.csv`` in ``folder``, filled frame by frame (:meth:`add`), written under
    a temporary name and renamed when the ``with`` block ends normally; nothing is written
    when not ``enabled``.

    Args:
        folder: where the table goes (a staged output folder, or a store).
        enabled: write the table at all (``measurements=true``).
        pixel_size: for the physical columns.
    """

    def __init__(self, folder: str | os.PathLike, enabled: bool, pixel_size: PixelSize = PIXELS):
        self.path, self.enabled, self.pixel_size = Path(folder) / MEASUREMENTS, enabled, pixel_size
        self._atomic = self._file = self._csv = None
        self.objects = 0

    def __enter__(self) -> MeasurementsWriter:
        if self.enabled:
            self._atomic = atomic_file(self.path)
            self._file = open(self._atomic.__enter__(), "w", newline="")
            self._csv = csv.writer(self._file)
            self._csv.writerow(COLUMNS)
        return self

    def add(self, frame: str, labels: np.ndarray, probability: np.ndarray) -> None:
        """Measure the objects of one frame and append their rows."""
        if self.enabled:
            self.add_columns(measure_frame(labels, probability, frame, self.pixel_size))

    def add_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Append the rows of one frame's columns (:func:`measure_frame`)."""
        table = rows(columns)
        self._csv.writerows(table)
        self.objects += len(table)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._atomic is None:
            return
        if exc_type is None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()
        self._atomic.__exit__(exc_type, exc, tb)  # renames, or deletes after an error
