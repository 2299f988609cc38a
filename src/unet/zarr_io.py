"""Lazily read the input of a streamed prediction: one 2D image, or a stack of sections.

An input is a list of equally sized 2D **sections** (:class:`Sections`), each read on demand
(:class:`ImageSource`: nothing is read until a window is asked for):

- an OME-Zarr image (NGFF 0.4 or 0.5; one resolution level). Axes other than y and x have
  length 1, except at most one z or t axis: its planes are the sections. A channel axis
  longer than 1 is refused (the network takes one gray channel);
- a TIFF read through tifffile's zarr interface (a pyramidal TIFF's levels are levels here
  too); a multi-page stack's pages are the sections;
- a folder of 2D frames (TIFF or PNG; sorted by name, as ``unet.data.frames`` lists them),
  one section per file, all of one size;
- any other 2D image ``unet.data.frames`` reads (read whole: it has to fit).

One 2D image has no stack axis (``Sections.axis`` is None); a stack's axis is carried over to
the output store (``unet.prediction_store``) with its name, unit and scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from unet.data.frames import FrameSource, read_image
from unet.data.readers import DataError

ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup")  # a zarr v3 or v2 group, whatever its name


@dataclass
class ImageSource:
    """A 2D image read on demand (``unet.streaming.LazyImage``) and what to carry over."""

    array: object  # zarr array (any number of axes) or NumPy array
    index: tuple  # fixed indices of the axes other than y and x ("y" and "x" where they go)
    shape: tuple[int, int]
    dtype: np.dtype
    scale: tuple[float, float]  # pixel size along y and x (1.0 where unknown)
    units: tuple[str | None, str | None]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        full = tuple(ys if i == "y" else xs if i == "x" else i for i in self.index)
        return np.asarray(self.array[full])


@dataclass
class StackAxis:
    """The axis along which sections are stacked, as the output store will carry it."""

    name: str  # "z" or "t"
    unit: str | None
    scale: float  # spacing of the sections (1.0 where unknown)

    @property
    def type(self) -> str:
        return "time" if self.name == "t" else "space"


@dataclass
class Sections:
    """Equally sized 2D sections of one input, opened one at a time by :meth:`open`."""

    names: list[str]
    shape: tuple[int, int]  # (H, W) of every section
    axis: StackAxis | None  # None: one 2D image
    opener: Callable[[int], ImageSource]
    scale: tuple[float, float] = (1.0, 1.0)  # pixel size along y and x
    units: tuple[str | None, str | None] = (None, None)

    def __len__(self) -> int:
        return len(self.names)

    def open(self, index: int) -> ImageSource:
        """Section ``index``, read lazily."""
        return self.opener(index)


def _ome_metadata(attrs: dict) -> dict | None:
    """The first multiscales entry of NGFF 0.5 (under ``ome``) or 0.4 (top level)."""
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    return multiscales[0] if multiscales else None


def open_image(path: str | Path, level: int = 0) -> ImageSource:
    """The one 2D image at ``path`` (OME-Zarr, TIFF or another 2D image), at ``level``."""
    sections = open_sections(path, level)
    if sections.axis is not None:
        raise DataError(
            f"{path}: found {len(sections)} section(s) along {sections.axis.name}; expected one 2D "
            "image"
        )
    return sections.open(0)


def open_sections(path: str | Path, level: int = 0) -> Sections:
    """The sections of the input ``path`` (module docstring), at resolution ``level``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"input={path}: no such file or folder")
    if path.suffix.lower() == ".zarr" or any((path / f).exists() for f in ZARR_MARKERS):
        return _open_ome_zarr(path, level)
    if path.is_dir():
        return _open_folder(path, level)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path, level)
    if level != 0:
        raise DataError(f"{path}: level={level} asked for, but the image has only level 0")
    image = read_image(path)
    if image.ndim != 2:
        raise DataError(f"{path}: expected one 2D gray-value image, found shape {image.shape}")
    source = ImageSource(image, ("y", "x"), image.shape, image.dtype, (1.0, 1.0), (None, None))
    return Sections([path.stem], image.shape, None, lambda i: source)


def _stack_axis(path: Path, sizes: dict[str, int], channel_axes: set[str]) -> str | None:
    """The one axis besides y and x longer than 1 (None if there is none), after refusing
    channels and a second such axis."""
    long = [a for a, n in sizes.items() if a not in "yx" and n > 1]
    found = ", ".join(f"{a}={n}" for a, n in sizes.items())
    if any(a in channel_axes for a in long):
        raise DataError(
            f"{path}: found axes {found}; the network takes one gray channel: expected a "
            "channel axis of length 1"
        )
    if len(long) > 1:
        raise DataError(
            f"{path}: found axes {found}; expected at most one axis besides y and x longer "
            "than 1 (the sections: z or t)"
        )
    return long[0] if long else None


def _open_ome_zarr(path: Path, level: int) -> Sections:
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise DataError(f"{path}: not a readable zarr group ({err})") from None
    meta = _ome_metadata(dict(group.attrs))
    if meta is None:
        raise DataError(f"{path}: found no OME-Zarr 'multiscales' metadata; expected an image")
    described = [a if isinstance(a, dict) else {"name": a} for a in meta.get("axes", [])]
    axes = [a["name"] for a in described]
    if "y" not in axes or "x" not in axes:
        raise DataError(f"{path}: found axes {axes}; expected an image with axes y and x")
    datasets = meta["datasets"]
    if not 0 <= level < len(datasets):
        raise DataError(
            f"{path}: resolution level {level} does not exist; it has levels 0-{len(datasets) - 1}"
        )
    array = group[datasets[level]["path"]]
    sizes = dict(zip(axes, array.shape, strict=True))
    channels = {a["name"] for a in described if a.get("type") == "channel" or a["name"] == "c"}
    stack = _stack_axis(path, sizes, channels)
    scale = [1.0] * len(axes)
    for t in datasets[level].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t["scale"]
    units = {a["name"]: a.get("unit") for a in described}
    iy, ix = axes.index("y"), axes.index("x")
    shape, dtype = (array.shape[iy], array.shape[ix]), np.dtype(array.dtype)
    yx_scale, yx_units = (float(scale[iy]), float(scale[ix])), (units.get("y"), units.get("x"))

    def section(i: int) -> ImageSource:
        index = tuple(a if a in "yx" else i if a == stack else 0 for a in axes)
        return ImageSource(array, index, shape, dtype, yx_scale, yx_units)

    if stack is None:
        return Sections([path.stem], shape, None, section, yx_scale, yx_units)
    n = sizes[stack]
    name = "t" if stack == "t" else "z"  # an axis of another name is stacked as z
    axis = StackAxis(name, units.get(stack), float(scale[axes.index(stack)]))
    return Sections(_numbered(name, n), shape, axis, section, yx_scale, yx_units)


def _numbered(prefix: str, n: int) -> list[str]:
    digits = max(3, len(str(n - 1)))
    return [f"{prefix}{i:0{digits}d}" for i in range(n)]


def _open_tiff(path: Path, level: int) -> Sections:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            levels = len(series.levels)
            chosen = series.levels[min(level, levels - 1)]
            shape, axes = tuple(chosen.shape), chosen.axes
        if not 0 <= level < levels:
            raise DataError(
                f"{path}: resolution level {level} does not exist; it has levels 0-{levels - 1}"
            )
        array = zarr.open_array(tifffile.imread(path, aszarr=True, level=level), mode="r")
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise DataError(f"{path}: not a readable TIFF ({err})") from None
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: found axes {axes} of shape {shape}; expected y and x")
    names = [a.lower() for a in axes]  # tifffile's axis letters, one per axis
    sizes = dict(zip(names, shape, strict=True))
    stack = _stack_axis(path, sizes, {"s", "c"})  # S: colour samples, C: channels
    iy, ix = axes.index("Y"), axes.index("X")
    yx = (shape[iy], shape[ix])

    def section(i: int) -> ImageSource:
        index = tuple(n if n in "yx" else i if n == stack else 0 for n in names)
        return ImageSource(array, index, yx, np.dtype(array.dtype), (1.0, 1.0), (None, None))

    if stack is None:
        return Sections([path.stem], yx, None, section)
    n = sizes[stack]
    axis = StackAxis("t" if stack == "t" else "z", None, 1.0)  # pages (I, Q, Z): z
    digits = max(3, len(str(n - 1)))  # the names of unet.data.frames.FrameSource
    return Sections([f"{path.stem}_{i:0{digits}d}" for i in range(n)], yx, axis, section)


def _open_folder(path: Path, level: int) -> Sections:
    frames = FrameSource(path)  # lists the 2D frames and checks their headers
    shapes = frames.shapes
    if level != 0:  # each frame's size at that level (TIFF headers; the others refuse it)
        shapes = [open_image(file, level).shape for file in frames.files]
    sizes = sorted(set(shapes))
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise DataError(
            f"{path}: frames of {len(sizes)} sizes ({found}); a .zarr output stacks them "
            "along z and needs one size: use a folder output, or one .zarr per frame"
        )
    return Sections(
        frames.names,
        sizes[0],
        StackAxis("z", None, 1.0),
        lambda i: open_image(frames.files[i], level),
    )
