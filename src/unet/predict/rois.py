"""Object outlines for Fiji and QuPath: an ImageJ ROI set and a GeoJSON file per frame.

Each object of a label image becomes one polygon, traced with
``skimage.measure.find_contours`` at level 0.5 on its mask, padded by one pixel of
background so that objects touching the image border still give closed outlines. The
outline runs along pixel edges, cutting corners (through the midpoints between an object
pixel and its background neighbour).

Coordinates: Fiji and QuPath put a pixel's top-left corner at integer coordinates (pixel
(x, y) covers [x, x + 1) x [y, y + 1)); scikit-image puts its centre there. Outlines are
therefore shifted by half a pixel and given as (x, y) pairs in the image's pixel frame.

Holes and parts: one outer polygon per object. An object with holes gets the polygon of its
outer boundary (holes are filled in the ROI, as Fiji and QuPath fill a polygon); an object
of several parts (possible after watershed regrowth) gets the outline enclosing the largest
area, so every object has exactly one ROI named by its label.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
from roifile import ROI_TYPE, ImagejRoi
from scipy import ndimage
from skimage.measure import find_contours

from unet.io.atomic import atomic_file, write_text

ROIS = "rois"
OBJECT_TYPES = ("detection", "annotation")


def polygon_area(points: np.ndarray) -> float:
    """The area enclosed by a closed (N, 2) polygon (shoelace formula)."""
    a, b = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(a, np.roll(b, -1)) - np.dot(b, np.roll(a, -1))))


def outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """One outline per object of an (H, W) label image, by label (ascending): an (N, 2)
    float array of (x, y) vertices in Fiji's and QuPath's pixel frame, not repeating the
    first vertex at the end."""
    labels = np.asarray(labels)
    found: dict[int, np.ndarray] = {}
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        # one pixel of background on every side: the contour closes around border objects
        mask = np.pad(labels[box] == label, 1).astype(np.float32)
        contours = find_contours(mask, 0.5)
        outer = max(contours, key=polygon_area)  # (N, 2) (row, col), first == last
        y0, x0 = box[0].start, box[1].start
        # padded (row, col) -> image pixel centres (- 1 + offset) -> corner frame (+ 0.5)
        ys, xs = outer[:-1, 0] + (y0 - 0.5), outer[:-1, 1] + (x0 - 0.5)
        found[label] = np.stack([xs, ys], axis=1)
    return found


def write_roi_set(path: str | os.PathLike, shapes: dict[int, np.ndarray]) -> None:
    """An ImageJ ROI set (a .zip of .roi files, what Fiji's ROI Manager opens): one polygon
    ROI per outline, named by its label; an empty but valid zip without objects."""
    # written with zipfile (as roifile.roiwrite does), so that the file is atomic and an
    # empty set is still a zip
    with atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for label, points in shapes.items():
            roi = ImagejRoi.frompoints(points, name=str(label))
            # frompoints makes a freehand ROI; a polygon is what the outline is (both are
            # area ROIs that Fiji measures alike)
            roi.roitype = ROI_TYPE.POLYGON
            archive.writestr(f"{label}.roi", roi.tobytes())


def geojson(shapes: dict[int, np.ndarray], object_type: str = "detection") -> dict:
    """A GeoJSON FeatureCollection of one Polygon feature per outline, as QuPath imports it
    (``objectType`` detection or annotation, the label as name and as a measurement)."""
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type={object_type!r}: expected one of {OBJECT_TYPES}")
    features = []
    for label, points in shapes.items():
        ring = np.concatenate([points, points[:1]]).tolist()  # GeoJSON rings are closed
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "name": str(label),
                    "measurements": {"label": int(label)},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_frame_rois(
    folder: str | os.PathLike, frame: str, labels: np.ndarray, object_type: str = "detection"
) -> int:
    """``<folder>/<frame>.zip`` (ImageJ ROI set) and ``<folder>/<frame>.geojson`` (QuPath)
    for one frame's label image; returns the number of objects."""
    folder = Path(folder)
    shapes = outlines(labels)
    write_roi_set(folder / f"{frame}.zip", shapes)
    # plain json: GeoJSON is a small JSON schema; a geometry library would add a dependency
    # and nothing that the file needs
    write_text(folder / f"{frame}.geojson", json.dumps(geojson(shapes, object_type)))
    return len(shapes)
