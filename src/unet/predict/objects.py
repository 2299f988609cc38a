"""The per-object outputs of a prediction: ``measurements.csv`` and ``rois/``.

A folder prediction (``unet.predict.files.predict_files``) hands every frame's labels and cell
probability to :class:`ObjectOutputs`, which appends the frame's rows to the table
(``unet.predict.measurements``) and writes its outlines (``unet.predict.rois``) inside the staged
output
folder, so they appear with the rest. A ``.zarr`` output gets the table from its stored
labels (``unet.predict.zarr.measurements``); ROI files are written for folder outputs only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unet.errors import UserError
from unet.predict.measurements import PIXELS, MeasurementsWriter, PixelSize
from unet.predict.rois import ROIS, write_frame_rois


class ObjectOutputError(UserError, ValueError):
    """measurements or rois asked of a prediction route that cannot write them."""


def check_object_outputs(
    measurements: bool, rois: bool, *, labels: bool, store: bool, ranks: bool
) -> None:
    """Refuse ``measurements``/``rois`` where they would not be written: with a trainer
    (``ranks``), ROIs of a ``.zarr`` output (``store``), or a table of a store without
    labels."""
    wanted = [name for name, on in (("measurements", measurements), ("rois", rois)) if on]
    if ranks and wanted:
        raise ObjectOutputError(
            f"{'/'.join(wanted)}=true: written by one-process prediction only, not with a "
            "trainer; drop trainer=..., or set them false"
        )
    if store and rois:
        raise ObjectOutputError(
            "rois=true: ROI sets are written for folder outputs only, not .zarr stores; set "
            "rois=false (measurements=true gives the table), or use a folder output"
        )
    if store and measurements and not labels:
        raise ObjectOutputError(
            "measurements=true measures the store's labels, but labels=false; set labels=true"
        )


class ObjectOutputs:
    """``measurements.csv`` and ``rois/<frame>.zip|.geojson`` of a folder prediction, as
    asked; use as a context manager around the frames (the table is renamed into place
    when the block ends normally).

    Args:
        folder: the (staged) output folder.
        measurements: write ``measurements.csv``.
        rois: write an ImageJ ROI set and a QuPath GeoJSON per frame under ``rois/``.
        pixel_size: for the table's physical columns (1 ``pixel`` where unknown).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        measurements: bool,
        rois: bool,
        pixel_size: PixelSize = PIXELS,
    ):
        self.rois = Path(folder) / ROIS if rois else None
        self.table = MeasurementsWriter(folder, measurements, pixel_size)

    @property
    def wanted(self) -> bool:
        """Whether any per-object output is asked for (the labels must then be computed)."""
        return self.table.enabled or self.rois is not None

    def __enter__(self) -> ObjectOutputs:
        if self.rois is not None:
            self.rois.mkdir(exist_ok=True)
        self.table.__enter__()
        return self

    def __call__(self, frame: str, labels: np.ndarray, probability: np.ndarray) -> None:
        """Write the outputs of one frame: (H, W) labels and cell probability."""
        self.table.add(frame, labels, probability)
        if self.rois is not None:
            write_frame_rois(self.rois, frame, labels)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.table.__exit__(exc_type, exc, tb)
