"""Lazily read the input of a streamed prediction: one 2D image, or a stack of sections.

An input is a list of equally sized 2D **sections** (:class:`Sections`), each read on demand
(:class:`ImageSource`: nothing is read until a window is asked for):

- an OME-Zarr image (NGFF 0.4 or 0.5; one resolution level). Axes other than y and x have
  length 1, except at most one z or t axis, whose planes are the sections, and the
  channel axis of a network of C > 1 channels, of length C;
- a TIFF read through tifffile's zarr interface (a pyramidal TIFF's levels are levels here
  too); a multi-page stack's pages are the sections; samples or channels (RGB) are the
  channel axis;
- a folder of 2D frames (TIFF or PNG; sorted by name, as ``unet.data.frames`` lists them),
  one section per file, all of one size; colour frames are read whole, as a folder output
  reads them;
- any other 2D image ``unet.data.frames`` reads (read whole: it has to fit).

Windows of a section are (h, w) for a gray network, (C, h, w) for a network of C channels.

One 2D image has no stack axis (``Sections.axis`` is None); a stack's axis is carried over to
the output store (``unet.predict.zarr.store``) with its name, unit and scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr

from unet.data.frames import (
    FrameSource,
    check_input_axes,
    read_channels,
    read_image,
    samples_hint,
)
from unet.data.readers import DataError, checked_tiff
from unet.io.pixel_size import PixelSize, read_pixel_size, read_tiff_pixel_size
from unet.predict.zarr.chunk_checks import failed_chunk, first_line, warn_missing_chunks

ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup")  # a zarr v3 or v2 group, whatever its name


@dataclass
class ImageSource:
    """A 2D image read on demand (``unet.predict.zarr.bands.LazyImage``) and what to carry over:
    windows are (h, w), or (C, h, w) where ``index`` keeps a channel axis ("c")."""

    array: object  # zarr array (any number of axes) or NumPy array
    index: tuple  # per axis: "y", "x", "c" (kept whole) or the fixed index of another axis
    shape: tuple[int, int]
    dtype: np.dtype
    scale: tuple[float, float]  # pixel size along y and x (1.0 where unknown)
    units: tuple[str | None, str | None]
    where: str = ""  # the file or store level read, for messages

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        where = {"y": ys, "x": xs, "c": slice(None)}
        selection = tuple(where.get(i, i) for i in self.index)
        try:
            window = np.asarray(self.array[selection])
        except Exception as err:  # zarr codecs and tifffile raise many types
            raise DataError(
                f"{self.where}: {failed_chunk(self.array, selection)}cannot be decoded "
                f"({type(err).__name__}: {first_line(err)}); expected a complete image: "
                "copy or write it again"
            ) from None
        kept = [i for i in self.index if i in where]  # the window's axes, in stored order
        return np.moveaxis(window, kept.index("c"), 0) if "c" in kept else window


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


def open_image(
    path: str | Path, level: int = 0, channels: int = 1, input_axes: str = "auto"
) -> ImageSource:
    """The one 2D image at ``path`` (OME-Zarr, TIFF or another 2D image), at ``level``."""
    sections = open_sections(path, level, channels, input_axes)
    if sections.axis is not None:
        raise DataError(
            f"{path}: found {len(sections)} section(s) along {sections.axis.name}; expected one 2D "
            "image"
        )
    return sections.open(0)


def open_sections(
    path: str | Path, level: int = 0, channels: int = 1, input_axes: str = "auto"
) -> Sections:
    """The sections of the input ``path`` (module docstring), at resolution ``level``, for a
    network of ``channels`` input channels (more than 1: a channel axis of that length).
    ``input_axes="zyx"``: a TIFF's colour samples are sections (``unet.data.frames``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"input={path}: no such file or folder")
    check_input_axes(input_axes, channels)
    if path.suffix.lower() == ".zarr" or any((path / f).exists() for f in ZARR_MARKERS):
        return _open_zarr(path, level, channels)
    if path.is_dir():
        return _open_folder(path, level, channels)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path, level, channels, input_axes)
    if level != 0:
        raise DataError(f"{path}: level={level} asked for, but the image has only level 0")
    source = _in_memory(path, channels)
    return Sections([path.stem], source.shape, None, lambda i: source)


def _in_memory(path: Path, channels: int) -> ImageSource:
    """A PNG (or a frame of a folder of colour frames), read whole."""
    if channels == 1:
        image = read_image(path)
        if image.ndim != 2:
            raise DataError(f"{path}: expected one 2D gray-value image, found shape {image.shape}")
        return ImageSource(image, ("y", "x"), image.shape, image.dtype, (1.0, 1.0), (None, None))
    image = read_channels(path)  # (C, H, W), as unet.data.frames reads colour frames
    if image.ndim != 3 or image.shape[0] != channels:
        raise DataError(
            f"{path}: an image of shape {image.shape}; the network takes {channels} channels"
        )
    return ImageSource(
        image, ("c", "y", "x"), image.shape[1:], image.dtype, (1.0, 1.0), (None, None)
    )


def _roles(
    path: Path, sizes: dict[str, int], channel_axes: set[str], channels: int
) -> tuple[str | None, str | None]:
    """(stack axis, channel axis) among the axes besides y and x, each None if absent,
    after refusing a channel axis whose length is not the network's ``channels`` and more
    than one other axis longer than 1."""
    found = ", ".join(f"{a}={n}" for a, n in sizes.items())
    channel = next((a for a in sizes if a in channel_axes and sizes[a] > 1), None)
    if channels > 1:
        channel = next((a for a in sizes if a in channel_axes), None)
    if (sizes[channel] if channel else 1) != channels:
        expected = "one gray channel" if channels == 1 else f"{channels} channels"
        raise DataError(
            f"{path}: found axes {found}; the network takes {expected}: expected a channel "
            f"axis of length {channels}"
        )
    long = [a for a, n in sizes.items() if a not in "yx" and a != channel and n > 1]
    if len(long) > 1:
        raise DataError(
            f"{path}: found axes {found}; expected at most one axis besides y, x and channels "
            "longer than 1 (the sections: z or t)"
        )
    return (long[0] if long else None), (channel if channels > 1 else None)


def _open_zarr(path: Path, level: int, channels: int) -> Sections:
    """An OME-Zarr image, or a plain zarr array of 2 or 3 axes, as sections."""
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise DataError(f"{path}: not a readable zarr group ({first_line(err)})") from None
    if isinstance(node, zarr.Array):
        array, described, scale = _plain_level(path, node, level, channels)
        where = str(path)
    else:
        array, described, scale, key = _ome_level(path, node, level)
        where = f"{path}/{key}"
    warn_missing_chunks(array, where)
    return _zarr_sections(path, array, described, scale, where, channels)


def _plain_level(path: Path, array, level: int, channels: int) -> tuple:
    """(array, axes, scale) of a plain zarr array (no OME-Zarr group around it): read as
    one image, (y, x), or a stack, (z, y, x), or (c, y, x) for a network of C channels."""
    if level != 0:
        raise DataError(
            f"{path}: a plain zarr array has only level 0 (no OME-Zarr multiscales); "
            f"level={level} asked for: set zarr.level=0"
        )
    first = "c" if channels > 1 and array.ndim == 3 and array.shape[0] == channels else "z"
    names = {2: ["y", "x"], 3: [first, "y", "x"]}.get(array.ndim)
    if names is None:
        raise DataError(
            f"{path}: a plain zarr array of shape {array.shape}; expected (y, x) or (z, y, x) "
            "(or (c, y, x) for a network of c channels), or an OME-Zarr image whose axes "
            "metadata names its axes"
        )
    described = [{"name": n, "type": "channel" if n == "c" else "space"} for n in names]
    return array, described, [1.0] * array.ndim


def _ome_level(path: Path, group, level: int) -> tuple:
    """(array, axes, scale, its path in the store) of resolution ``level`` of an OME-Zarr
    group, after checking the metadata and that the listed array is there."""
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
    key = datasets[level]["path"]
    array = group.get(key)
    if not isinstance(array, zarr.Array):
        found = ", ".join(sorted(group.array_keys())) or "none"
        raise DataError(
            f"{path}: the OME-Zarr metadata lists resolution level {level} at '{key}', but the "
            f"store holds no array {path / key} (arrays found: {found}); expected every listed "
            "level: copy the store again, or choose another zarr.level"
        )
    scale = [1.0] * len(axes)
    for t in datasets[level].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t["scale"]
    return array, described, scale, key


def _zarr_sections(path: Path, array, described: list, scale: list, where: str, channels: int):
    """The sections of one zarr array whose axes are ``described`` (OME-Zarr axes)."""
    axes = [a["name"] for a in described]
    sizes = dict(zip(axes, array.shape, strict=True))
    channel_axes = {a["name"] for a in described if a.get("type") == "channel" or a["name"] == "c"}
    stack, channel = _roles(path, sizes, channel_axes, channels)
    units = {a["name"]: a.get("unit") for a in described}
    iy, ix = axes.index("y"), axes.index("x")
    shape, dtype = (array.shape[iy], array.shape[ix]), np.dtype(array.dtype)
    yx_scale, yx_units = (float(scale[iy]), float(scale[ix])), (units.get("y"), units.get("x"))

    roles = {"y": "y", "x": "x", channel: "c"}

    def section(i: int) -> ImageSource:
        index = tuple(roles.get(a, i if a == stack else 0) for a in axes)
        return ImageSource(array, index, shape, dtype, yx_scale, yx_units, where)

    if stack is None:
        return Sections([path.stem], shape, None, section, yx_scale, yx_units)
    n = sizes[stack]
    name = "t" if stack == "t" else "z"  # an axis of another name is stacked as z
    axis = StackAxis(name, units.get(stack), float(scale[axes.index(stack)]))
    return Sections(_numbered(name, n), shape, axis, section, yx_scale, yx_units)


def _numbered(prefix: str, n: int) -> list[str]:
    """``prefix`` + index, zero-padded to at least 3 digits, for n sections."""
    digits = max(3, len(str(n - 1)))
    return [f"{prefix}{i:0{digits}d}" for i in range(n)]


def _open_tiff(path: Path, level: int, channels: int, input_axes: str = "auto") -> Sections:
    import tifffile

    with checked_tiff(path) as tif:  # a truncated or damaged file: refused as a folder output is
        series = tif.series[0]
        levels = len(series.levels)
        chosen = series.levels[min(level, levels - 1)]
        shape, axes = tuple(chosen.shape), chosen.axes
        scale, units = scale_and_units(read_tiff_pixel_size(tif))
        full_width = series.levels[0].shape[series.levels[0].axes.index("X")]
    if not 0 <= level < levels:
        raise DataError(
            f"{path}: resolution level {level} does not exist; it has levels 0-{levels - 1}"
        )
    if level > 0 and units[0] is not None:  # a level's pixels: larger by the width ratio
        scale = tuple(s * full_width / shape[axes.index("X")] for s in scale)
    try:
        array = zarr.open_array(tifffile.imread(path, aszarr=True, level=level), mode="r")
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise DataError(f"{path}: not a readable TIFF ({err})") from None
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: found axes {axes} of shape {shape}; expected y and x")
    names = [a.lower() for a in axes]  # tifffile's axis letters, one per axis
    sizes = dict(zip(names, shape, strict=True))
    samples = set() if input_axes == "zyx" else {"s"}  # zyx: colour samples are sections
    try:
        stack, channel = _roles(path, sizes, samples | {"c"}, channels)  # S: colour samples
    except DataError as err:
        raise DataError(f"{err}{samples_hint(shape, axes)}") from None
    iy, ix = axes.index("Y"), axes.index("X")
    yx = (shape[iy], shape[ix])
    roles = {"y": "y", "x": "x", channel: "c"}

    def section(i: int) -> ImageSource:
        index = tuple(roles.get(n, i if n == stack else 0) for n in names)
        dtype = np.dtype(array.dtype)
        return ImageSource(array, index, yx, dtype, scale, units, str(path))

    if stack is None:
        return Sections([path.stem], yx, None, section, scale, units)
    n = sizes[stack]
    axis = StackAxis("t" if stack == "t" else "z", None, 1.0)  # pages (I, Q, Z): z
    # <stem>_NNN: the names unet.data.frames.FrameSource gives a stack's frames
    return Sections(_numbered(f"{path.stem}_", n), yx, axis, section, scale, units)


def _open_folder(path: Path, level: int, channels: int) -> Sections:
    frames = FrameSource(path, channels)  # lists the 2D frames and checks them
    shapes = [tuple(shape) for shape in frames.shapes]
    if level != 0:  # each frame's size at that level (TIFF headers; the others refuse it)
        shapes = [open_image(file, level, channels).shape for file in frames.files]
    sizes = sorted(set(shapes))
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise DataError(
            f"{path}: frames of {len(sizes)} sizes ({found}); a .zarr output stacks them "
            "along z and needs one size: use a folder output, or one .zarr per frame"
        )

    def section(i: int) -> ImageSource:
        file = frames.files[i]
        if channels > 1 and level == 0:  # colour frames are read whole, as for a folder output
            return _in_memory(file, channels)
        return open_image(file, level, channels)

    scale, units = scale_and_units(read_pixel_size(path))  # its first TIFF frame's
    return Sections(frames.names, sizes[0], StackAxis("z", None, 1.0), section, scale, units)


def scale_and_units(pixel_size: PixelSize | None) -> tuple[tuple, tuple]:
    """(scale, units) along (y, x) of a pixel size read from a file (None: unknown)."""
    if pixel_size is None:
        return (1.0, 1.0), (None, None)
    return (pixel_size.y, pixel_size.x), (pixel_size.unit, pixel_size.unit)


def with_pixel_size(sections: Sections, pixel_size: PixelSize | None) -> Sections:
    """``sections`` with another pixel size (predict's ``pixel_size`` setting); as they
    are for None."""
    if pixel_size is None:
        return sections
    scale, units = scale_and_units(pixel_size)
    return replace(sections, scale=scale, units=units)
