"""Open what unet writes as napari layers: a ``.zarr`` store of a streamed prediction
(``unet.predict.zarr.store``) or a prediction folder (``probabilities.tif`` + ``labels/``).

Both come back as a probability image layer and, where written, a labels layer, with the
pixel size the outputs carry (the store's scale, the TIFFs' resolution:
``unet.io.pixel_size``) as the layers' scale, so they overlay the input opened at its own
scale. Store arrays stay lazy (zarr), so a store larger than memory opens at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from unet.io.pixel_size import read_pixel_size

PROBABILITIES = "probabilities.tif"
LayerData = tuple  # (data, kwargs, layer type), as napari readers return


def get_reader(path: str | list[str]):
    """The reader function for ``path`` if it is a unet output, else None (napari then
    asks the next reader)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if is_store(path) or is_prediction_folder(path):
        return read
    return None


def is_store(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr store written by a streamed prediction."""
    return path.suffix == ".zarr" and (path / "zarr.json").is_file()


def is_prediction_folder(path: Path) -> bool:
    """Whether ``path`` is a prediction folder (it holds ``probabilities.tif``)."""
    return path.is_dir() and (path / PROBABILITIES).is_file()


def read(path: str | list[str]) -> list[LayerData]:
    """Layers of a store or a prediction folder (see :func:`get_reader`)."""
    path = Path(path[0] if isinstance(path, list) else path)
    return read_store(path) if is_store(path) else read_folder(path)


def store_scale(group) -> tuple[list[float], list[str], list[str | None]]:
    """(scale, axis names, units) of a store's first multiscales entry."""
    meta = group.attrs["ome"]["multiscales"][0]
    scale = meta["datasets"][0]["coordinateTransformations"][0]["scale"]
    axes = meta["axes"]
    return [float(s) for s in scale], [a["name"] for a in axes], [a.get("unit") for a in axes]


def read_store(path: Path) -> list[LayerData]:
    """The cell probability (uint8 stores read as round(255 p), shown on 0..255) and, if
    written, the labels ``labels/cells`` of a streamed prediction's store."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    scale, axes, units = store_scale(group)
    probability = group["0"]
    limits = (0, 255) if probability.dtype == np.uint8 else (0.0, 1.0)
    common = {"scale": scale, "axis_labels": axes, "units": [u or "pixel" for u in units]}
    layers = [
        (
            probability,
            {"name": f"{path.stem} probability", "contrast_limits": limits, **common},
            "image",
        )
    ]
    if "labels" in group and "cells" in group["labels"]:
        layers.append(
            (group["labels"]["cells"]["0"], {"name": f"{path.stem} labels", **common}, "labels")
        )
    return layers


def folder_scale(path: Path, ndim: int) -> tuple[list[float], list[str]]:
    """(scale, units) of a prediction folder's TIFFs for ``ndim`` axes; 1 pixel where
    they carry no pixel size."""
    size = read_pixel_size(path)
    yx, unit = (
        ([1.0, 1.0], "pixel")
        if size is None or not size.known
        else (list(size.micrometers()), "micrometer")
    )
    return [1.0] * (ndim - 2) + yx, ["pixel"] * (ndim - 2) + [unit] * 2


def read_folder(path: Path) -> list[LayerData]:
    """``probabilities.tif`` (one page per frame; K pages per frame for K > 2 classes) and
    ``labels/*.tif`` (sorted by name, stacked when there are several) of a prediction
    folder."""
    probability = tifffile.imread(path / PROBABILITIES)
    scale, units = folder_scale(path / PROBABILITIES, probability.ndim)
    layers = [
        (
            probability,
            {"name": f"{path.name} probability", "scale": scale, "units": units,
             "contrast_limits": (0.0, 1.0)},
            "image",
        )
    ]  # fmt: skip
    frames = sorted((path / "labels").glob("*.tif"))
    if frames:
        labels = np.stack([tifffile.imread(f) for f in frames])
        labels = labels[0] if len(frames) == 1 else labels
        scale, units = folder_scale(frames[0], labels.ndim)
        kwargs = {"name": f"{path.name} labels", "scale": scale, "units": units}
        layers.append((labels, kwargs, "labels"))
    return layers
