"""Faults of a zarr input's chunks, found where the streamed ``.zarr`` route reads them.

- a chunk that cannot be decoded (a truncated or overwritten chunk file): named by its key
  in the store (:func:`failed_chunk`) in the reader's one-line error;
- a chunk missing from the store: zarr reads it as the fill value, silently; named in one
  warning when the input is opened (:func:`warn_missing_chunks`).

Plain zarr and NumPy; used by ``unet.predict.zarr.source``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def first_line(err: Exception) -> str:
    """The first line of an exception's message, shortened: one-line messages."""
    return (str(err).strip().splitlines() or [""])[0][:200]


def _chunk_ranges(array, selection: tuple) -> list[range]:
    """Per axis, the chunk indices that ``selection`` (ints and slices) touches."""
    ranges = []
    for index, size, side in zip(selection, array.shape, array.chunks, strict=True):
        start, stop = (index, index + 1) if isinstance(index, int) else index.indices(size)[:2]
        ranges.append(range(start // side, max(start, stop - 1) // side + 1))
    return ranges


def failed_chunk(array, selection: tuple) -> str:
    """ "chunk <key>: " for the first chunk of a zarr store's ``selection`` that cannot be
    read on its own, else "" (TIFFs, NumPy arrays). Only called once a read has failed."""
    encode = getattr(getattr(array, "metadata", None), "encode_chunk_key", None)
    if encode is None or getattr(array, "shards", None) is not None:
        return ""
    for coords in itertools.islice(itertools.product(*_chunk_ranges(array, selection)), 10_000):
        region = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, array.chunks, strict=True))
        try:
            array[region]
        except Exception:
            return f"chunk {encode(coords)}: "
    return ""


def warn_missing_chunks(array, where: str) -> None:
    """Print one warning naming the chunks of a zarr array that are not in its store.

    zarr reads a missing chunk as the array's fill value, so the area would be predicted
    as blank without a word. Not refused: zarr writers leave out chunks that hold only the
    fill value (zarr 3's default), so a sparse image is valid; a copy cut short looks the
    same, and the warning says which chunks to look at.
    """
    if getattr(array, "shards", None) is not None or array.nchunks_initialized >= array.nchunks:
        return
    root = getattr(array.store, "root", None)  # a local store: name the missing files
    missing = []
    if root is not None:
        folder = Path(root) / array.path
        for coords in np.ndindex(*array.cdata_shape):
            key = array.metadata.encode_chunk_key(coords)
            if not (folder / key).exists():
                missing.append(key)
    count = len(missing) or array.nchunks - array.nchunks_initialized
    shown = f" ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})" if missing else ""
    print(
        f"warning: {where}: {count} of {array.nchunks} chunks are not in the store{shown}; zarr "
        f"reads them as the fill value {array.fill_value}, so those areas are predicted as "
        "blank. If the store was copied, copy it again (writers that leave out empty chunks "
        "leave such gaps too)"
    )
