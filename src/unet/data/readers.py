"""Reading image files, with messages that name the file, what was found and what was expected."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from unet.errors import UserError
from unet.labels import binary_cells


class DataError(UserError, ValueError):
    """Input data that is missing or not in the expected form."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or folder that does not exist."""


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file, else raise DataNotFoundError saying what it should be."""
    path = Path(path)
    if not path.is_file():
        where = "a folder" if path.is_dir() else "missing"
        raise DataNotFoundError(
            f"{what} not found: {path} is {where}, expected a file.{' ' + hint if hint else ''}"
        )
    return path


class _Collect(logging.Handler):
    """Keeps the error records tifffile logs (it logs damage instead of raising)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _promised_pages(tif: tifffile.TiffFile) -> int | None:
    """The page count that the file's own metadata announces (ImageJ's ``images=`` or
    tifffile's shaped description of a single series), or None when it announces none."""
    if tif.is_imagej and tif.imagej_metadata and "images" in tif.imagej_metadata:
        return int(tif.imagej_metadata["images"])
    shaped = tif.shaped_metadata
    if shaped and len(shaped) == 1 and "shape" in shaped[0]:
        values = int(np.prod(shaped[0]["shape"], dtype=np.int64))
        per_page = int(np.prod(tif.pages.first.shape, dtype=np.int64))
        return values // per_page if per_page else None
    return None


def _check_complete(tif: tifffile.TiffFile, path: Path, errors: list[str]) -> None:
    """Raise DataError if the file holds fewer pages or bytes than it promises, or if
    tifffile reported damage while reading it."""
    pages = len(tif.pages)  # walks every page header (IFD) of the file
    size = tif.filehandle.size
    promised = _promised_pages(tif)
    short = None  # index of the first page whose pixel data lies beyond the end of the file
    for index, page in enumerate(tif.pages):
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if ends and max(ends) > size:
            short = index
            break
    complete = pages if short is None else short
    if pages == 0:  # e.g. a copy cut before the page header at the end of the file
        raise DataError(
            f"{path}: truncated or damaged TIFF: no image page could be read "
            f"({size} bytes on disk). Expected a complete file: copy or download it again"
        )
    if (promised is not None and complete != promised) or short is not None or errors:
        expected = f"{promised} pages" if promised is not None else f"{pages} pages"
        detail = f"; tifffile reported: {errors[0]}" if errors else ""
        raise DataError(
            f"{path}: truncated or damaged TIFF: the file promises {expected}, "
            f"{complete} could be read completely ({size} bytes on disk){detail}. "
            "Expected a complete file: copy or download it again"
        )


@contextmanager
def checked_tiff(path: str | Path) -> Iterator[tifffile.TiffFile]:
    """An open TIFF, checked complete (every promised page present, its pixel data inside
    the file) before and after the body reads it; any failure is a DataError naming the
    file. Used by :func:`read_tiff` and by the streamed ``.zarr`` route
    (``unet.predict.zarr.source``),
    so both routes refuse the same damaged files with the same message."""
    path = Path(path)
    collect = _Collect()
    log = logging.getLogger("tifffile")
    log.addHandler(collect)
    propagate, log.propagate = log.propagate, False  # the message below says it once
    try:
        with tifffile.TiffFile(path) as tif:
            _check_complete(tif, path, collect.messages)
            yield tif
            if collect.messages:
                _check_complete(tif, path, collect.messages)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except DataError:
        raise
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, KeyError...)
        raise DataError(
            f"{path}: cannot be read as a TIFF image ({type(err).__name__}: {err}). "
            "Expected a TIFF file (LZW-compressed files need the 'imagecodecs' package)."
        ) from None
    finally:
        log.removeHandler(collect)
        log.propagate = propagate


def read_tiff(
    path: str | Path, nonfinite: str = "refuse", setting: str = "nonfinite"
) -> np.ndarray:
    """Read a (multi-page) TIFF into an array, checking that it is complete and finite.

    Checked against the file itself: every page the header chain or the metadata promises
    is present and its pixel data lies inside the file (a truncated copy is refused, not
    read as its first pages); the data type is numeric; float data holds no NaN or
    infinity, unless ``nonfinite`` asks for them to be replaced (:func:`require_finite`).
    Any decoding failure names the file.
    """
    with checked_tiff(path) as tif:
        array = tif.asarray()
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: pixel data type {array.dtype} is not supported; expected integer or "
            "float gray values"
        )
    return require_finite(array, path, nonfinite, setting)


# How the axes of a TIFF input are read (predict's ``input_axes``): "auto" as tifffile
# describes the file; "zyx" reads the colour samples of an image (3 or 4 planes that
# tifffile takes for one RGB(A) image, e.g. a (3, H, W) array saved without
# photometric="minisblack") as that many gray frames.
INPUT_AXES = ("auto", "zyx")

# What a reader does with NaN or infinite pixels: refuse the file (the default: one such
# pixel makes the prediction of its whole image NaN), or, only when the user asks, replace
# them with the median of the finite pixels of their 2D image, or with 0.
NONFINITE_CHOICES = ("refuse", "median", "zero")


def require_finite(
    array: np.ndarray, path: str | Path, nonfinite: str = "refuse", setting: str = "nonfinite"
) -> np.ndarray:
    """``array`` if it is finite; otherwise refused or repaired as ``nonfinite`` says.

    ``setting`` is the name under which the user sets ``nonfinite`` (``data.nonfinite`` for
    training data), quoted in the refusal. A repair prints one warning naming the file.
    """
    if nonfinite not in NONFINITE_CHOICES:
        raise DataError(f"{setting}={nonfinite!r}: expected one of {', '.join(NONFINITE_CHOICES)}")
    if array.dtype.kind != "f":
        return array
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if not count:
        return array
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    found = f"{count} of {array.size} pixels are NaN or infinite (the first at index {first})"
    if nonfinite == "refuse":
        raise DataError(
            f"{path}: {found}; expected finite gray values. Replace them and save the file "
            f"again, or set {setting}=median (or zero) to have them replaced when read"
        )
    array = array.copy()
    planes = array.reshape(-1, *array.shape[-2:]) if array.ndim >= 2 else array[None]
    for k, plane in enumerate(planes):
        wrong = ~np.isfinite(plane)
        if not wrong.any():
            continue
        if wrong.all():
            raise DataError(
                f"{path}: image {k} has no finite pixel at all; expected gray values "
                f"({setting}={nonfinite} replaces only some pixels)"
            )
        plane[wrong] = np.median(plane[~wrong]) if nonfinite == "median" else 0
    how = "the median of the finite pixels of its image" if nonfinite == "median" else "0"
    print(f"warning: {path}: {found}; replaced with {how} ({setting}={nonfinite})")
    return array


def require_contrast(image: np.ndarray, where: str) -> np.ndarray:
    """Refuse an image with one gray value everywhere: it holds nothing to learn."""
    if image.size and image.min() == image.max():
        raise DataError(
            f"{where}: every pixel has the value {image.flat[0]}; expected an image with "
            "gray-value contrast (an empty or blank frame?)"
        )
    return image


def binary_labels(labels: np.ndarray, path: str | Path) -> np.ndarray:
    """Class indices (uint8: 0 = membrane/background, 1 = cell) of a two-valued label image.

    Accepts {0, 1} or {0, 255} (either may be missing from a given image); anything else is
    a DataError naming ``path`` (:func:`unet.labels.binary_cells`).
    """
    return binary_cells(labels, str(path), DataError).astype(np.uint8)


def require_two_classes(classes: np.ndarray, path: str | Path) -> np.ndarray:
    """Refuse a training label set in which one class is missing everywhere: the network
    would learn to answer that class alone, and every metric would look perfect."""
    present = np.unique(classes)
    if len(present) < 2:
        name = {0: "membrane/background (0)", 1: "cell interior (255 or 1)"}
        raise DataError(
            f"{path}: every label pixel is {name.get(int(present[0]), present[0])}; expected "
            "both classes, 0 = membrane/background and 255 (or 1) = cell interior, in the "
            "training labels"
        )
    return classes


def instance_labels(labels: np.ndarray, path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """Check an instance label image (integer ids, 0 = background) of a frame of ``shape``."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: expected an integer label image (one id per cell, 0 = background), "
            f"found data type {labels.dtype}"
        )
    if labels.shape != tuple(shape):
        raise DataError(
            f"{path}: label image shape {labels.shape} does not match its frame's shape "
            f"{tuple(shape)}; expected one label per frame pixel"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: expected non-negative instance ids, found {labels.min()}")
    return labels
