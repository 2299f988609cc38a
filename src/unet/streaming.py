"""Streaming overlap-tile prediction: images larger than memory, read and written in bands.

    lazy source (H, W) -> image statistics (one pass) -> tiles of one tile row, read with
    mirrored context -> network -> stitched logits of a band of rows -> softmax -> the rows
    that no later tile touches, whole chunk rows at a time -> sink (a chunked store)

The tiles and their stitching weights are ``unet.tiler.Tiler.plan``'s, so the result equals
the in-memory ``Tiler`` (and a whole-image pass) to float rounding, for ``valid`` and
``same`` networks alike. Memory holds one tile row's batch and a band of stitched logits
(K x (chunk height + tile output height) x W floats), not the image: tile row ``i`` is the
last to touch the rows above ``out_starts[i + 1]``, so those rows are complete once it is
done, and whole chunk rows of them are handed to the sink.

Output rows ``[start, stop)`` (multiples of the chunk height) can be asked for alone: the
tile rows that touch them are run and nothing else is written. That is how a killed run
resumes (``start`` = the rows already written) and how ranks share one image (disjoint
chunk rows each, :func:`rank_share`).

Plain torch and NumPy; imports neither Lightning nor zarr (``unet.zarr_io`` reads the
inputs, ``unet.prediction_store`` writes the stores).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from unet.inference import autocast_dtype, net_device
from unet.labels import foreground_probability
from unet.mirror import reflect_indices
from unet.tiler import Tiler


class LazyImage(Protocol):
    """A 2D image read on demand: ``shape`` (H, W), ``dtype`` and 2D slicing to NumPy
    windows, (h, w) for one channel or (C, h, w) for several."""

    shape: tuple[int, int]
    dtype: np.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


def image_statistics(image: LazyImage, rows_per_read: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of all pixels per channel, arrays of shape (C,) (C = 1 for
    a gray image), read a band of rows at a time.

    Sums in float64 over bands, the deviations in a second pass about the mean (no
    cancellation for large means): the same numbers as ``unet.data.samples.standardize``
    computes on the whole image in float32, channel by channel, to float32 rounding (its
    per-image zero mean, unit variance is what the network was trained on).
    """
    h, w = image.shape

    def bands():
        for y in range(0, h, rows_per_read):
            band = np.asarray(image[y : y + rows_per_read, 0:w]).astype(np.float32)
            yield (band[None] if band.ndim == 2 else band).astype(np.float64)  # (C, rows, W)

    mean = sum(band.sum(axis=(1, 2)) for band in bands()) / (h * w)
    var = sum(np.square(band - mean[:, None, None]).sum(axis=(1, 2)) for band in bands())
    return mean, np.sqrt(var / (h * w))


def read_window(image: LazyImage, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Window of the mirror-extended image (as ``unet.mirror.crop_with_mirror``), reading
    only the part of ``image`` it needs; (height, width) or (C, height, width)."""
    h, w = image.shape
    rows = reflect_indices(top, top + height, h)
    cols = reflect_indices(left, left + width, w)
    r0, c0 = int(rows.min()), int(cols.min())
    block = np.asarray(image[r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1])
    return block[(..., *np.ix_(rows - r0, cols - c0))]


def network_hash(net: nn.Module) -> str:
    """SHA-256 of a network's architecture record and weights: which model wrote a store."""
    digest = hashlib.sha256(repr(net.config).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_share(
    sections: int, height: int, chunk: int, rank: int, world_size: int
) -> list[tuple[int, int, int]]:
    """Rank ``rank``'s share of a stack of ``sections`` images of ``height`` rows: a
    contiguous run of the stack's chunk rows (section by section, top to bottom), as
    (section, first chunk row, stop chunk row) runs. Shares are equal to one chunk row, for
    one huge image as for many small ones; no two ranks get one chunk row."""
    per = -(-height // chunk)  # chunk rows per section
    total = sections * per
    first, last = total * rank // world_size, total * (rank + 1) // world_size
    share = []
    for s in range(first // per, -(-last // per)):
        a, b = max(first, s * per) - s * per, min(last, (s + 1) * per) - s * per
        if a < b:
            share.append((s, a, b))
    return share


Sink = Callable[[int, int, np.ndarray], None]  # (first row, stop row, (rows, W) float32)


@torch.inference_mode()
def predict_streaming(
    net: nn.Module,
    image: LazyImage,
    sink: Sink,
    *,
    chunk_rows: int,
    tiler: Tiler | None = None,
    precision: str | int = 32,
    rows: tuple[int, int] | None = None,
    statistics: tuple | None = None,
    instance_class: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Cell probability of ``image``, handed to ``sink`` band by band, top to bottom.

    Args:
        net: the trained network, in ``eval()`` mode, on the device to use.
        image: the gray-value image, read lazily (:class:`LazyImage`).
        sink: called with (y0, y1, cell probability of rows y0..y1-1, float32 (rows, W)); y0
            and y1 are multiples of ``chunk_rows`` (or the image height).
        chunk_rows: the output store's chunk height; bands are whole chunk rows.
        tiler: tile size, overlap and memory budget, as for the in-memory tiler.
        precision: ``32`` or ``bf16`` (autocast).
        rows: output rows [start, stop) to predict (multiples of ``chunk_rows``); default all.
        statistics: the image's (mean, std) per channel if known; default
            :func:`image_statistics`.
        instance_class: which probability is handed on, as in
            :func:`unet.labels.foreground_probability`: None, the cell class of a two-class
            network or 1 - p(background) of a K-class one; k, class k.
        on_batch: called with the number of tiles after every forward pass.
    """
    h, w = image.shape
    start, stop = rows if rows is not None else (0, h)
    if start >= stop:
        return
    tiler = tiler or Tiler()
    plan = tiler.plan(net, (h, w))
    mean, std = statistics if statistics is not None else image_statistics(image)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)  # (C,)
    scale = np.where(std > 0, std, 1.0)
    dtype = autocast_dtype(precision)
    device = net_device(net)
    tile_rows, cols = plan.rows, plan.cols
    lo = start  # first row not yet handed to the sink; the band holds rows lo..lo+len
    band = total = None  # (K, rows, W) stitched logits, (rows, W) sum of weights
    for i in range(len(tile_rows)):
        oh = len(tile_rows.weights[i])
        y0 = tile_rows.out_starts[i]
        top, bottom = max(0, lo - y0), min(oh, stop - y0)  # rows of the output window used
        if bottom <= top:
            if y0 >= stop:
                break
            continue  # this tile row ends above the rows asked for
        x = [
            read_window(image, tile_rows.in_starts[i], cols.in_starts[j], tile_rows.in_sizes[i], s)
            for j, s in enumerate(cols.in_sizes)
        ]
        outs = _run_tiles(net, x, mean, scale, plan.batch_size, device, dtype, on_batch)
        need = y0 + bottom - lo  # the band must reach the last row used
        if band is None:
            band = torch.zeros(outs[0].shape[0], need, w)
            total = torch.zeros(need, w)
        elif band.shape[1] < need:
            grow = need - band.shape[1]
            band = torch.cat([band, band.new_zeros(band.shape[0], grow, w)], dim=1)
            total = torch.cat([total, total.new_zeros(grow, w)])
        rw = tile_rows.weights[i][top:bottom, None]
        for j, out in enumerate(outs):  # out: (K, oh, ow)
            x0 = cols.out_starts[j]
            left, right = max(0, -x0), min(out.shape[-1], w - x0)
            weight = rw * cols.weights[j][None, left:right]
            window = (slice(y0 + top - lo, y0 + bottom - lo), slice(x0 + left, x0 + right))
            band[(slice(None), *window)] += out[:, top:bottom, left:right] * weight
            total[window] += weight
        # rows above the next tile row's output window are complete
        done = stop if i + 1 == len(tile_rows) else min(stop, max(lo, tile_rows.out_starts[i + 1]))
        if done < stop:
            done = done // chunk_rows * chunk_rows
        if done > lo:
            n = done - lo
            probabilities = (band[:, :n] / total[:n]).softmax(dim=0)  # (K, n, W)
            sink(lo, done, foreground_probability(probabilities, instance_class).numpy())
            band, total, lo = band[:, n:].clone(), total[n:].clone(), done
        if lo >= stop:
            break


def _run_tiles(net, tiles, mean, scale, batch_size, device, dtype, on_batch) -> list:
    """Logits (K, h', w') of each tile (a list of raw (h, w) or (C, h, w) windows), float32,
    on the CPU. Tiles of one shape go through the network ``batch_size`` at a time."""
    outs: list = [None] * len(tiles)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, t in enumerate(tiles):
        by_shape.setdefault(t.shape, []).append(j)
    # standardised as unet.data.samples.standardize does, with the whole image's statistics
    mean32 = mean.astype(np.float32)[:, None, None]  # (C, 1, 1)
    scale32 = scale.astype(np.float32)[:, None, None]
    for group in by_shape.values():
        for first in range(0, len(group), batch_size):
            part = group[first : first + batch_size]
            x = np.stack([(tiles[j].astype(np.float32) - mean32) / scale32 for j in part])
            x = torch.from_numpy(x).to(device)  # (B, C, h, w)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = net(x).float().cpu()  # (B, K, h', w')
            for k, j in enumerate(part):
                outs[j] = logits[k]
            if on_batch is not None:
                on_batch(len(part))
    return outs
