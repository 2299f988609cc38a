"""The OME-Zarr store of a streamed prediction: written in chunk rows, resumable, shareable.

An OME-Zarr 0.5 image (zarr v3) holding the cell probability at ``0``: float16, float32
(the labels then equal a folder output's) or uint8 (``round(255 p)``). Axes (y, x) for one
2D input, (z, y, x) or (t, y, x) for a stack of sections (``unet.predict.zarr.source.Sections``;
chunks of one section each), with the input's pixel size, units and section spacing.
With labels, an OME-Zarr label image ``labels/cells`` (uint32, chunked alike; a stack's
instances are numbered per section, 1..n in each).

Its ``unet`` attributes record which network wrote it (SHA-256 of architecture and weights),
the tiling, shape, chunk side and section names. ``unet-progress/`` holds one empty file per
finished chunk row (``unet-progress/<row>``, or ``unet-progress/<section>/<row>`` for a
stack) and small JSON notes per section: its image statistics (``statistics.json``) and,
once labelled, its post-processing and object count (``labels.json``). So a rerun
continues where a killed one stopped, and several ranks fill disjoint chunk rows.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from unet.errors import OutputExistsError, UserError
from unet.io.output_safety import check_free_space, check_replaceable
from unet.predict.zarr.source import Sections

PROBABILITY_DTYPES = ("float16", "float32", "uint8")
PROGRESS = "unet-progress"
LABELS_DONE = "labels.json"  # a section's note: its labels are written (with what)


class StoreError(UserError, ValueError):
    """An output store that cannot be used for this prediction."""


def _axis(name: str, kind: str, unit: str | None) -> dict:
    return {"name": name, "type": kind, **({"unit": unit} if unit else {})}


def _multiscales(name: str, sections: Sections) -> dict:
    """The OME-Zarr multiscales entry: (y, x), or the stack axis first; one level."""
    axes = [_axis(a, "space", u) for a, u in zip("yx", sections.units, strict=True)]
    scale = list(sections.scale)
    if (stack := sections.axis) is not None:
        axes.insert(0, _axis(stack.name, stack.type, stack.unit))
        scale.insert(0, stack.scale)
    transform = {"type": "scale", "scale": scale}
    return {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [transform]}],
    }


class PlaneView:
    """One section of a (Z, H, W) array as a 2D array (``shape``, ``chunks``, slicing), for
    code written for 2D arrays (``unet.predict.zarr.labels``); a 2D array is passed through."""

    def __init__(self, array: zarr.Array, index: int | None):
        self.array, self.index = array, index
        self.shape, self.chunks = array.shape[-2:], array.chunks[-2:]
        self.dtype = array.dtype

    def _key(self, key):
        return key if self.index is None else (self.index, *key)

    def __getitem__(self, key):
        return self.array[self._key(key)]

    def __setitem__(self, key, value) -> None:
        self.array[self._key(key)] = value


@dataclass
class Plane:
    """One section of the store (the whole store for a 2D input): its chunk rows, progress
    marks and labels."""

    store: PredictionStore
    index: int | None  # None: the store is 2D

    @property
    def probability(self) -> PlaneView:
        return PlaneView(self.store.probability, self.index)

    @property
    def chunk(self) -> int:
        return self.store.chunk

    @property
    def progress(self) -> Path:
        folder = self.store.path / PROGRESS
        return folder if self.index is None else folder / str(self.index)

    def done_rows(self) -> set[int]:
        """Indices of the chunk rows already written."""
        folder = self.progress
        if not folder.is_dir():
            return set()
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}

    def complete(self) -> bool:
        """Whether every chunk row is written."""
        return len(self.done_rows()) == -(-self.probability.shape[0] // self.chunk)

    def write_rows(self, y0: int, y1: int, prob: np.ndarray) -> None:
        """Rows y0..y1-1 (whole chunk rows) of cell probability; then marks them done."""
        self.write_block(y0, y1, 0, prob)
        self.mark_rows(y0, y1)

    def write_block(self, y0: int, y1: int, x0: int, prob: np.ndarray) -> None:
        """Rows y0..y1-1, columns from ``x0`` (whole chunks) of cell probability, unmarked."""
        dtype = self.probability.dtype
        encoded = np.rint(prob * 255) if dtype == np.uint8 else prob
        encoded = encoded.astype(dtype)
        self.probability[y0:y1, x0 : x0 + prob.shape[1]] = encoded

    def mark_rows(self, y0: int, y1: int) -> None:
        """Mark the chunk rows of rows y0..y1-1 as written."""
        self.progress.mkdir(parents=True, exist_ok=True)
        for k in range(y0 // self.chunk, -(-y1 // self.chunk)):
            (self.progress / str(k)).touch()

    def read_probability(self, key) -> np.ndarray:
        """Cell probability as float32 (uint8 stores decoded as value / 255)."""
        values = np.asarray(self.probability[key])
        return values / np.float32(255) if values.dtype == np.uint8 else values.astype(np.float32)

    def labels(self) -> PlaneView:
        """This section's labels (:meth:`PredictionStore.create_labels` made the array)."""
        return PlaneView(self.store.group["labels/cells/0"], self.index)

    def note(self, name: str) -> dict | list | None:
        """The JSON note ``name`` of this section (``labels.json``, ``statistics.json``), or
        None."""
        file = self.progress / name
        return json.loads(file.read_text()) if file.exists() else None

    def write_note(self, name: str, value: dict | list) -> None:
        """Write the note ``name`` atomically (a temporary file renamed): ranks and killed
        runs never leave half a note."""
        self.progress.mkdir(parents=True, exist_ok=True)
        temporary = self.progress / f".{name}.{os.getpid()}"
        temporary.write_text(json.dumps(value))
        temporary.replace(self.progress / name)


@dataclass
class PredictionStore:
    """The OME-Zarr output: cell probability at ``0``, labels at ``labels/cells/0``."""

    path: Path
    group: zarr.Group

    @property
    def probability(self) -> zarr.Array:
        return self.group["0"]

    @property
    def stacked(self) -> bool:
        """Whether the store holds a stack of sections (Z, H, W)."""
        return self.probability.ndim == 3

    @property
    def chunk(self) -> int:
        return self.probability.chunks[-1]

    @property
    def record(self) -> dict:
        return dict(self.group.attrs["unet"])

    def __len__(self) -> int:
        """The number of sections (1 for a 2D store)."""
        return self.probability.shape[0] if self.stacked else 1

    def plane(self, index: int) -> Plane:
        """Section ``index`` (0 for a 2D store)."""
        return Plane(self, index if self.stacked else None)

    def create_labels(self) -> None:
        """The label image ``labels/cells`` (uint32, chunked like the probability), unless it
        exists; a new one has no section marked as labelled."""
        if "labels" in self.group and "cells" in self.group["labels"]:
            return
        for done in (self.path / PROGRESS).rglob(LABELS_DONE):
            done.unlink()
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
        cells.create_array("0", shape=shape, chunks=chunks, dtype="uint32")


def open_store(
    path: str | Path,
    sections: Sections,
    record: dict,
    chunk: int,
    dtype: str,
    overwrite: bool,
) -> PredictionStore:
    """The output store: new, or an existing one of the same prediction to continue.

    ``record`` (network hash, tiling) is stored in the ``unet`` attributes with the shape,
    chunk side, dtype and section names; an existing store whose record differs is refused
    unless ``overwrite``.
    """
    path = Path(path)
    if dtype not in PROBABILITY_DTYPES:
        raise StoreError(f"probability_dtype={dtype!r}: expected one of {PROBABILITY_DTYPES}")
    shape, chunks = tuple(sections.shape), (chunk, chunk)
    expected = {**record, "shape": list(shape), "chunk": chunk, "dtype": dtype}
    if sections.axis is not None:
        shape, chunks = (len(sections), *shape), (1, *chunks)
        expected.update(shape=list(shape), sections=list(sections.names))
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"output={path} exists and is a file, not a .zarr store; choose a new output or "
            "move that file away"
        )
    if path.exists() and not overwrite:
        return _continue(path, expected)
    # before anything is deleted; the space of a store it replaces counts as free
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize  # uncompressed: an upper bound
    old = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
    check_free_space(path, need - old, "the store's probability map")
    if path.exists():
        check_replaceable(path)  # overwrite replaces only a store unet wrote
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [_multiscales(path.stem, sections)]}
    group.attrs["unet"] = expected
    group.create_array("0", shape=shape, chunks=chunks, dtype=dtype)
    return PredictionStore(path, group)


def _shown(value) -> str:
    """A stored value for a one-line message (a long list by its length and ends)."""
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} sections ({value[0]} .. {value[-1]})"
    return repr(value)


def _continue(path: Path, expected: dict) -> PredictionStore:
    try:
        group = zarr.open_group(str(path), mode="r+")
        stored = dict(group.attrs["unet"])
    except Exception:
        raise OutputExistsError(
            f"output={path} exists and is not a prediction store of unet; choose a new output "
            "or pass overwrite=true"
        ) from None
    if (theirs := stored.get("network_sha256", "?")) != expected["network_sha256"]:
        raise StoreError(
            f"{path} was written by another network (sha256 {theirs[:12]}, this checkpoint's is "
            f"{expected['network_sha256'][:12]}); choose a new output or pass overwrite=true"
        )
    for key, value in expected.items():
        if stored.get(key) != value:
            raise StoreError(
                f"{path} was written with {key}={_shown(stored.get(key))}, this run has "
                f"{_shown(value)}; continue with the same settings, choose a new output or "
                "pass overwrite=true"
            )
    return PredictionStore(path, group)
