"""Lazily read input images (OME-Zarr, big TIFFs) and the chunked OME-Zarr prediction store.

Input: an OME-Zarr image (NGFF 0.4 or 0.5; one resolution level; axes other than y and x
must have length 1), a TIFF read through tifffile's zarr interface (nothing is read until a
window is asked for; a pyramidal TIFF's levels are levels here too), or any other 2D image
``unet.data.frames`` reads (read whole: it has to fit).

Output: an OME-Zarr 0.5 image (zarr v3) holding the cell probability, float16 or uint8
(``round(255 p)``), axes (y, x) with the input level's pixel size; with labels, an OME-Zarr
label image ``labels/cells``. Its ``unet`` attributes record which network wrote it (SHA-256
of architecture and weights), the image statistics and the tiling, and the folder
``unet-progress/`` holds one empty file per finished chunk row, so that a rerun continues
where a killed one stopped and several ranks can fill disjoint chunk rows of one store.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from unet.data.frames import read_image
from unet.data.readers import DataError
from unet.errors import OutputExistsError, UserError

PROBABILITY_DTYPES = ("float16", "uint8")
PROGRESS = "unet-progress"


class StoreError(UserError, ValueError):
    """An output store that cannot be used for this prediction."""


@dataclass
class ImageSource:
    """A 2D image read on demand (``unet.streaming.LazyImage``) and what to carry over."""

    array: object  # zarr array (any number of axes) or NumPy array
    index: tuple  # fixed indices of the axes other than y and x (None where y and x go)
    shape: tuple[int, int]
    dtype: np.dtype
    scale: tuple[float, float]  # pixel size along y and x (1.0 where unknown)
    units: tuple[str | None, str | None]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        full = tuple(ys if i == "y" else xs if i == "x" else i for i in self.index)
        return np.asarray(self.array[full])


def _ome_metadata(attrs: dict) -> dict | None:
    """The first multiscales entry of NGFF 0.5 (under ``ome``) or 0.4 (top level)."""
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    return multiscales[0] if multiscales else None


def open_image(path: str | Path, level: int = 0) -> ImageSource:
    """The image at ``path`` (OME-Zarr, TIFF or another 2D image), resolution ``level``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"input={path}: no such file or folder")
    if path.suffix.lower() == ".zarr" or (path / "zarr.json").exists():
        return _open_ome_zarr(path, level)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path, level)
    if level != 0:
        raise DataError(f"{path}: level={level} asked for, but the image has only level 0")
    image = read_image(path)
    if image.ndim != 2:
        raise DataError(f"{path}: expected one 2D gray-value image, found shape {image.shape}")
    return ImageSource(image, ("y", "x"), image.shape, image.dtype, (1.0, 1.0), (None, None))


def _open_ome_zarr(path: Path, level: int) -> ImageSource:
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise DataError(f"{path}: not a readable zarr group ({err})") from None
    meta = _ome_metadata(dict(group.attrs))
    if meta is None:
        raise DataError(f"{path}: found no OME-Zarr 'multiscales' metadata; expected an image")
    axes = [a["name"] if isinstance(a, dict) else a for a in meta.get("axes", [])]
    if "y" not in axes or "x" not in axes:
        raise DataError(f"{path}: found axes {axes}; expected an image with axes y and x")
    datasets = meta["datasets"]
    if not 0 <= level < len(datasets):
        raise DataError(
            f"{path}: resolution level {level} does not exist; it has levels 0-{len(datasets) - 1}"
        )
    array = group[datasets[level]["path"]]
    others = {a: n for a, n in zip(axes, array.shape, strict=True) if a not in "yx"}
    if any(n != 1 for n in others.values()):
        raise DataError(
            f"{path}: found axes {dict(zip(axes, array.shape, strict=True))}; expected one 2D "
            "image (every axis but y and x of length 1)"
        )
    scale = [1.0] * len(axes)
    for t in datasets[level].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t["scale"]
    units = {a["name"]: a.get("unit") for a in meta.get("axes", []) if isinstance(a, dict)}
    iy, ix = axes.index("y"), axes.index("x")
    return ImageSource(
        array,
        tuple(a if a in "yx" else 0 for a in axes),
        (array.shape[iy], array.shape[ix]),
        np.dtype(array.dtype),
        (float(scale[iy]), float(scale[ix])),
        (units.get("y"), units.get("x")),
    )


def _open_tiff(path: Path, level: int) -> ImageSource:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            levels = len(series.levels)
            shape = series.levels[min(level, levels - 1)].shape
        if not 0 <= level < levels:
            raise DataError(
                f"{path}: resolution level {level} does not exist; it has levels 0-{levels - 1}"
            )
        store = tifffile.imread(path, aszarr=True, level=level)
        array = zarr.open_array(store, mode="r")
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise DataError(f"{path}: not a readable TIFF ({err})") from None
    kept = [n for n in shape if n != 1]
    if len(kept) != 2:
        raise DataError(f"{path}: expected one 2D gray-value image, found shape {shape}")
    index, seen = [], 0
    for n in shape:
        if n == 1:
            index.append(0)
        else:
            index.append("yx"[seen])
            seen += 1
    return ImageSource(
        array, tuple(index), tuple(kept), np.dtype(array.dtype), (1.0, 1.0), (None, None)
    )


def _multiscales(name: str, source: ImageSource) -> dict:
    axes = [
        {"name": a, "type": "space", **({"unit": u} if u else {})}
        for a, u in zip("yx", source.units, strict=True)
    ]
    scale = {"type": "scale", "scale": list(source.scale)}
    return {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [scale]}],
    }


@dataclass
class PredictionStore:
    """The OME-Zarr output: cell probability at ``0``, labels at ``labels/cells/0``."""

    path: Path
    group: zarr.Group

    @property
    def probability(self) -> zarr.Array:
        return self.group["0"]

    @property
    def chunk(self) -> int:
        return self.probability.chunks[0]

    @property
    def record(self) -> dict:
        return dict(self.group.attrs["unet"])

    def done_rows(self) -> set[int]:
        """Indices of the chunk rows already written."""
        folder = self.path / PROGRESS
        return {int(p.name) for p in folder.iterdir()} if folder.is_dir() else set()

    def write_rows(self, y0: int, y1: int, prob: np.ndarray) -> None:
        """Rows y0..y1-1 (whole chunk rows) of cell probability; then marks them done."""
        encoded = (
            np.rint(prob * 255).astype(np.uint8)
            if self.probability.dtype == np.uint8
            else prob.astype(np.float16)
        )
        self.probability[y0:y1, :] = encoded
        folder = self.path / PROGRESS
        folder.mkdir(exist_ok=True)
        for k in range(y0 // self.chunk, -(-y1 // self.chunk)):
            (folder / str(k)).touch()

    def read_probability(self, key) -> np.ndarray:
        """Cell probability as float32 (uint8 stores decoded as value / 255)."""
        values = np.asarray(self.probability[key])
        return values / np.float32(255) if values.dtype == np.uint8 else values.astype(np.float32)

    def labels(self, create: bool = False) -> zarr.Array:
        """The label array (uint32, chunked like the probability); ``create`` makes it."""
        if not create:
            return self.group["labels/cells/0"]
        labels = self.group.require_group("labels")
        labels.attrs["ome"] = {"version": "0.5", "labels": ["cells"]}
        cells = labels.require_group("cells")
        meta = dict(self.group.attrs["ome"]["multiscales"][0], name="cells")
        cells.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [meta],
            "image-label": {"version": "0.5"},
        }
        shape, chunks = self.probability.shape, self.probability.chunks
        return cells.create_array("0", shape=shape, chunks=chunks, dtype="uint32", overwrite=True)


def open_store(
    path: str | Path,
    source: ImageSource,
    record: dict,
    chunk: int,
    dtype: str,
    overwrite: bool,
) -> PredictionStore:
    """The output store: new, or an existing one of the same prediction to continue.

    ``record`` (network hash, image statistics, tiling) is stored in the ``unet``
    attributes; an existing store whose record differs is refused unless ``overwrite``.
    """
    path = Path(path)
    if dtype not in PROBABILITY_DTYPES:
        raise StoreError(f"probability_dtype={dtype!r}: expected one of {PROBABILITY_DTYPES}")
    if path.exists() and overwrite:
        shutil.rmtree(path)
    if path.exists():
        return _continue(path, source, record, chunk, dtype)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [_multiscales(path.stem, source)]}
    group.attrs["unet"] = {**record, "shape": list(source.shape), "chunk": chunk, "dtype": dtype}
    group.create_array("0", shape=source.shape, chunks=(chunk, chunk), dtype=dtype)
    return PredictionStore(path, group)


def _continue(path: Path, source, record: dict, chunk: int, dtype: str) -> PredictionStore:
    try:
        group = zarr.open_group(str(path), mode="r+")
        stored = dict(group.attrs["unet"])
    except Exception:
        raise OutputExistsError(
            f"output={path} exists and is not a prediction store of unet; choose a new output "
            "or pass overwrite=true"
        ) from None
    if (theirs := stored.get("network_sha256", "?")) != record["network_sha256"]:
        raise StoreError(
            f"{path} was written by another network (sha256 {theirs[:12]}, this checkpoint's is "
            f"{record['network_sha256'][:12]}); choose a new output or pass overwrite=true"
        )
    expected = {**record, "shape": list(source.shape), "chunk": chunk, "dtype": dtype}
    for key, value in expected.items():
        if stored.get(key) != value:
            raise StoreError(
                f"{path} was written with {key}={stored.get(key)!r}, this run has {value!r}; "
                "continue with the same settings, choose a new output or pass overwrite=true"
            )
    return PredictionStore(path, group)
