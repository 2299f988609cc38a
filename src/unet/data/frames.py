"""The frames of a prediction input: a 2D image, a multi-page TIFF stack or a folder of
frames, listed and checked from their headers before anything is predicted, then read one
file at a time. (Training data has its own readers, ``unet.data.isbi`` and ``unet.data.ctc``,
on the same TIFF reader, ``unet.data.readers.read_tiff``.)"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet.data.readers import INPUT_AXES, DataError, DataNotFoundError, read_tiff

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png")


def _unreadable(path: Path, err: Exception) -> DataError:
    return DataError(
        f"{path}: cannot be read as an image ({type(err).__name__}: {err}). "
        f"Expected a TIFF or PNG file."
    )


def probe_image(path: Path, input_axes: str = "auto") -> tuple[int, ...]:
    """Shape of an image file from its header: (H, W) or (N, H, W); checks it is gray.
    With ``input_axes="zyx"`` the colour samples of a TIFF are its frames (N, H, W)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
        else:
            with Image.open(path) as im:
                shape, axes, mode = (im.height, im.width), "YX", im.mode
            if mode not in ("1", "L", "I", "I;16", "F"):  # colour modes: gray in RGB is common
                read_image(path)  # decodes and checks that the channels are equal
    except DataError:
        raise
    except Exception as err:  # tifffile and PIL raise many types
        raise _unreadable(path, err) from None
    if "S" in axes and len(shape) == 3 and input_axes == "zyx":
        return (shape[axes.index("S")], *(n for a, n in zip(axes, shape, strict=True) if a != "S"))
    if "S" in axes or len(shape) not in (2, 3):  # S: colour samples
        raise DataError(
            f"{path}: found an image of shape {shape} (axes {axes}); expected gray values: "
            "one 2D image (height, width) or a stack (slices, height, width)"
            + samples_hint(shape, axes)
        )
    return shape


def samples_hint(shape: tuple[int, ...], axes: str) -> str:
    """The hint for a TIFF that tifffile reads as one RGB(A) image whose 3 or 4 planes may
    be gray frames (samples stored plane by plane: axes SYX), else ""."""
    if axes != "SYX" or shape[0] not in (3, 4):
        return ""
    return (
        f"; tifffile reads its {shape[0]} planes as the colour samples of one "
        f"{'RGB' if shape[0] == 3 else 'RGBA'} image (as it saves a ({shape[0]}, H, W) array "
        "without photometric='minisblack'): if they are gray frames, set input_axes=zyx"
    )


def samples_as_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """(N, H, W) frames of a TIFF read with ``input_axes="zyx"``: its samples axis (first
    for planes stored one by one, last for interleaved RGB) moved to the front."""
    if array.ndim == 3 and array.shape[0] != frames and array.shape[-1] == frames:
        return np.moveaxis(array, -1, 0)
    return array


def read_image(path: Path, nonfinite: str = "refuse") -> np.ndarray:
    """Pixels of a TIFF (any page count) or PNG; a PNG with identical RGB channels is gray.
    ``nonfinite``: what to do with NaN or infinite pixels (``unet.data.readers``)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return read_tiff(path, nonfinite)
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except Exception as err:
        raise _unreadable(path, err) from None
    if array.ndim == 3:  # RGB(A) PNGs of gray images are common: accept them if gray
        color = array[..., :3]
        if not (
            np.array_equal(color[..., 0], color[..., 1])
            and np.array_equal(color[..., 0], color[..., 2])
        ):
            raise DataError(f"{path}: a colour image of shape {array.shape}; expected gray values")
        array = color[..., 0]
    return array


def read_channels(path: Path, nonfinite: str = "refuse", setting: str = "nonfinite") -> np.ndarray:
    """Pixels of a TIFF or PNG as (H, W) for one channel or (C, H, W) for several.

    Colour images (H, W, 3 or 4: RGB, RGBA, TIFF samples) become (C, H, W), the alpha
    channel dropped; a colour image whose channels are equal is gray (H, W), as
    :func:`read_image` reads it; a 3D TIFF whose first axis is the short one (C, H, W:
    fluorescence channels) is kept as it is; palette PNGs become RGB. ``nonfinite``: what to
    do with NaN or infinite pixels (``unet.data.readers``).
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = read_tiff(path, nonfinite, setting)
    else:
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB") if im.mode == "P" else im)
        except Exception as err:
            raise _unreadable(path, err) from None
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise DataError(
            f"{path}: found an image of shape {array.shape}; expected (height, width), "
            "(height, width, RGB) or (channels, height, width)"
        )
    if array.shape[-1] in (3, 4) and array.shape[0] > 4:  # (H, W, RGB[A])
        array = np.moveaxis(array[..., :3], -1, 0)
    if all(np.array_equal(array[0], c) for c in array[1:]):
        return array[0]  # gray values saved as colour
    return np.ascontiguousarray(array)


def check_input_axes(input_axes: str, channels: int) -> str:
    """``input_axes`` if it is one of :data:`INPUT_AXES` and fits a network of ``channels``."""
    if input_axes not in INPUT_AXES:
        raise DataError(f"input_axes={input_axes!r}: expected one of {', '.join(INPUT_AXES)}")
    if input_axes != "auto" and channels > 1:
        raise DataError(
            f"input_axes={input_axes}: reads colour samples as gray frames, but the network "
            f"takes {channels} channels; set input_axes=auto"
        )
    return input_axes


class FrameSource:
    """The 2D frames of a prediction input, listed (and their headers checked) up front.

    Args:
        path: a 2D image (TIFF or PNG), a multi-page TIFF stack (e.g. ISBI's
            ``test-volume.tif``) or a folder of 2D frames (e.g. a Cell Tracking Challenge
            sequence ``tNNN.tif``; other files in it are ignored).
        channels: the channels of one frame. With more than 1 every file is one frame
            (RGB, or a (C, H, W) TIFF), read by :func:`read_channels` (when listed and
            again when predicted).
        nonfinite: NaN or infinite pixels are refused ("refuse") or replaced by their
            frame's median ("median") or 0 ("zero").
        input_axes: ``auto``, or ``zyx``: the 3 or 4 colour samples of a TIFF that tifffile
            reads as one RGB(A) image are gray frames (:data:`INPUT_AXES`).
    """

    def __init__(
        self,
        path: str | Path,
        channels: int = 1,
        nonfinite: str = "refuse",
        input_axes: str = "auto",
    ):
        self.path = Path(path)
        self.channels = channels
        self.nonfinite = nonfinite
        self.input_axes = check_input_axes(input_axes, channels)
        if not self.path.exists():
            raise DataNotFoundError(f"input not found: {self.path} does not exist")
        if channels > 1:
            self._list_channel_frames()
        elif self.path.is_dir():
            self.files = sorted(
                p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self.files:
                raise DataError(
                    f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                )
            self.shapes = []
            for f in self.files:
                shape = probe_image(f)
                if len(shape) != 2:
                    raise DataError(
                        f"{f}: a stack of shape {shape} inside a folder of frames; expected "
                        "one 2D frame per file (or pass the stack file itself as input)"
                    )
                self.shapes.append(shape)
            self.names = [f.stem for f in self.files]
        else:
            if self.path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{self.path}: unsupported file type {self.path.suffix!r}; expected a "
                    f"{', '.join(IMAGE_SUFFIXES)} file or a folder of such frames"
                )
            shape = probe_image(self.path, self.input_axes)
            self.files = [self.path]
            if len(shape) == 2:
                self.shapes, self.names = [shape], [self.path.stem]
            else:
                digits = max(3, len(str(shape[0] - 1)))
                self.shapes = [shape[1:]] * shape[0]
                self.names = [f"{self.path.stem}_{i:0{digits}d}" for i in range(shape[0])]

    def _list_channel_frames(self) -> None:
        """Files of ``channels``-channel frames: each file one frame, checked by reading it."""
        if self.path.is_dir():
            self.files = sorted(
                p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self.files:
                raise DataError(
                    f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                )
        elif self.path.suffix.lower() in IMAGE_SUFFIXES:
            self.files = [self.path]
        else:
            raise DataError(f"{self.path}: unsupported file type {self.path.suffix!r}")
        self.shapes = []
        for f in self.files:
            frame = read_channels(f, self.nonfinite)
            if frame.ndim != 3 or frame.shape[0] != self.channels:
                raise DataError(
                    f"{f}: an image of shape {frame.shape}; the network takes "
                    f"{self.channels} channels: expected (height, width, {self.channels}) or "
                    f"({self.channels}, height, width)"
                )
            self.shapes.append(frame.shape[-2:])
        self.names = [f.stem for f in self.files]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, (H, W) array) per frame ((C, H, W) for ``channels`` > 1), read when
        needed (one file at a time)."""
        return self.frames(range(len(self)))

    def frames(self, indices: Sequence[int]) -> Iterator[tuple[str, np.ndarray]]:
        """(name, frame) of the frames ``indices`` only, in that order (a folder's other
        files are not read; a stack file is read once)."""
        if not indices:
            return
        if self.channels > 1:
            frames = (read_channels(self.files[i], self.nonfinite) for i in indices)
        elif self.path.is_dir():
            frames = (read_image(self.files[i], self.nonfinite) for i in indices)
        else:
            stack = read_image(self.path, self.nonfinite)
            stack = stack[None] if stack.ndim == 2 else stack
            if self.input_axes == "zyx":
                stack = samples_as_frames(stack, len(self))
            frames = (stack[i] for i in indices)
        names = [self.names[i] for i in indices]
        for name, frame in zip(names, frames, strict=True):
            if frame.size and frame.min() == frame.max():  # not an error: blank frames happen
                print(f"warning: {name}: every pixel is {frame.flat[0]}; nothing to segment")
            yield name, frame
