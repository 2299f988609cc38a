"""Reading image files, with messages that name the file, what was found and what was expected."""

from __future__ import annotations

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


def read_tiff(path: str | Path) -> np.ndarray:
    """Read a (multi-page) TIFF into an array; any decoding failure names the file."""
    path = Path(path)
    try:
        return tifffile.imread(path)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, KeyError...)
        raise DataError(
            f"{path}: cannot be read as a TIFF image ({type(err).__name__}: {err}). "
            "Expected a TIFF file (LZW-compressed files need the 'imagecodecs' package)."
        ) from None


def binary_labels(labels: np.ndarray, path: str | Path) -> np.ndarray:
    """Class indices (uint8: 0 = membrane/background, 1 = cell) of a two-valued label image.

    Accepts {0, 1} or {0, 255} (either may be missing from a given image); anything else is
    a DataError naming ``path`` (:func:`unet.labels.binary_cells`).
    """
    return binary_cells(labels, str(path), DataError).astype(np.uint8)


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
