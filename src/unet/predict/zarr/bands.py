"""Streaming overlap-tile prediction: images larger than memory, read and written in bands.

    lazy source (H, W) -> image statistics (one pass) -> tiles of one tile row, read with
    mirrored context -> network -> stitched logits of a band of rows -> softmax -> the rows
    that no later tile touches, whole chunk rows at a time -> sink (a chunked store)

The tiles and their stitching weights are ``unet.inference.tiler.Tiler.plan``'s, so the result
equals
the in-memory ``Tiler`` (and a whole-image pass) to float rounding, for ``valid`` and
``same`` networks alike. Memory holds one tile row's batch and a band of stitched logits
(K x (chunk height + tile output height) x W floats), not the image: tile row ``i`` is the
last to touch the rows above ``out_starts[i + 1]``, so those rows are complete once it is
done, and whole chunk rows of them are handed to the sink.

Output rows ``[start, stop)`` (multiples of the chunk height) can be asked for alone: the
tile rows that touch them are run and nothing else is written. That is how a killed run
resumes (``start`` = the rows already written) and how ranks share one image (disjoint
chunk rows each, :func:`rank_share`).

Plain torch and NumPy; imports neither Lightning nor zarr (``unet.predict.zarr.source`` reads the
inputs, ``unet.predict.zarr.store`` writes the stores).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from unet.data.mirror import reflect_indices
from unet.inference.image import autocast_dtype, net_device
from unet.inference.tiler import Tiler
from unet.labels import foreground_probability
from unet.predict.zarr.plan import StreamPlan


class LazyImage(Protocol):
    """A 2D image read on demand: ``shape`` (H, W), ``dtype`` and 2D slicing to NumPy
    windows, (h, w) for one channel or (C, h, w) for several."""

    shape: tuple[int, int]
    dtype: np.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


def image_statistics(
    image: LazyImage, rows_per_read: int = 1024, cols_per_read: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of all pixels per channel, arrays of shape (C,) (C = 1 for
    a gray image), read a block of rows and columns at a time (memory independent of the
    image's size).

    Sums in float64 over blocks, the deviations in a second pass about the mean (no
    cancellation for large means): the same numbers as ``unet.data.samples.standardize``
    computes on the whole image in float32, channel by channel, to float32 rounding (its
    per-image zero mean, unit variance is what the network was trained on).
    """
    h, w = image.shape

    def blocks():
        for y in range(0, h, rows_per_read):
            for x in range(0, w, cols_per_read):
                block = np.asarray(image[y : y + rows_per_read, x : x + cols_per_read])
                block = block.astype(np.float32).astype(np.float64)
                yield block[None] if block.ndim == 2 else block  # (C, rows, cols)

    mean = sum(block.sum(axis=(1, 2)) for block in blocks()) / (h * w)
    var = 0.0
    for block in blocks():
        block -= mean[:, None, None]
        var = var + np.square(block, out=block).sum(axis=(1, 2))
    return mean, np.sqrt(var / (h * w))


def read_window(image: LazyImage, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Window of the mirror-extended image (as ``unet.data.mirror.crop_with_mirror``), reading
    only the part of ``image`` it needs; (height, width) or (C, height, width)."""
    h, w = image.shape
    rows = reflect_indices(top, top + height, h)
    cols = reflect_indices(left, left + width, w)
    r0, c0 = int(rows.min()), int(cols.min())
    block = np.asarray(image[r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1])
    return block[(..., *np.ix_(rows - r0, cols - c0))]


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


Sink = Callable[[int, int, np.ndarray], None]  # (first row, stop row, (rows, width) float32)
EMIT_ROWS = 128  # rows turned into probabilities at once: a small transient beside the band


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
    columns: tuple[int, int] | None = None,
    statistics: tuple | None = None,
    instance_class: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Cell probability of ``image``, handed to ``sink`` band by band, top to bottom.

    Args:
        net: the trained network, in ``eval()`` mode, on the device to use.
        image: the gray-value image, read lazily (:class:`LazyImage`).
        sink: called with (y0, y1, cell probability of rows y0..y1-1, float32 (rows, width)
            of the columns predicted); y0 and y1 are multiples of ``chunk_rows`` (or the
            image height).
        chunk_rows: the output store's chunk height; bands are whole chunk rows.
        tiler: tile size, overlap and memory budget, as for the in-memory tiler.
        precision: ``32`` or ``bf16`` (autocast).
        rows: output rows [start, stop) to predict (multiples of ``chunk_rows``); default all.
        columns: output columns [c0, c1) to predict (a window of
            :class:`unet.predict.zarr.plan.StreamPlan`): only the tiles that touch them run, and
            the band is as wide as the window; default all.
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
    plan = (tiler or Tiler()).plan(net, (h, w))
    mean, std = statistics if statistics is not None else image_statistics(image)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)  # (C,)
    scale = np.where(std > 0, std, 1.0)
    run = _TileRunner(net, mean, scale, plan.batch_size, autocast_dtype(precision), on_batch)
    c0, c1 = columns if columns is not None else (0, w)
    band = _Band(chunk_rows + max(len(r) for r in plan.rows.weights), c0, c1, start)
    _stream_rows(image, plan, run, band, sink, (stop, chunk_rows, instance_class))


def _stream_rows(image: LazyImage, plan, run, band, sink: Sink, settings) -> None:
    """The tile rows of ``plan`` that touch the band's rows up to ``stop``, stitched into
    ``band``; whole chunk rows handed to ``sink`` as soon as no later tile row touches them.
    ``settings`` = (stop, chunk_rows, instance_class)."""
    stop, chunk_rows, instance_class = settings
    tile_rows, cols = plan.rows, plan.cols
    used = [j for j in range(len(cols)) if _touches(cols, j, band.c0, band.c1)]
    for i in range(len(tile_rows)):
        oh, y0 = len(tile_rows.weights[i]), tile_rows.out_starts[i]
        top, bottom = max(0, band.lo - y0), min(oh, stop - y0)  # rows of the output window used
        if bottom <= top:
            if y0 >= stop:
                break
            continue  # this tile row ends above the rows asked for
        rw = tile_rows.weights[i][top:bottom, None]

        def read(j: int, i: int = i) -> np.ndarray:
            top_, left = tile_rows.in_starts[i], cols.in_starts[j]
            return read_window(image, top_, left, tile_rows.in_sizes[i], cols.in_sizes[j])

        for j, out in run(read, used, cols.in_sizes):  # out: (K, oh, ow), ascending columns
            band.add(out, y0, (top, bottom), rw, cols.out_starts[j], cols.weights[j])
        # rows above the next tile row's output window are complete
        done = (
            stop
            if i + 1 == len(tile_rows)
            else min(stop, max(band.lo, tile_rows.out_starts[i + 1]))
        )
        if done < stop:
            done = done // chunk_rows * chunk_rows
        if done > band.lo:
            lo = band.lo
            sink(lo, done, band.emit(done - lo, instance_class))
        if band.lo >= stop:
            break


def predict_windows(
    net: nn.Module,
    image: LazyImage,
    plan: StreamPlan,
    write: Callable[[int, int, int, np.ndarray], None],
    rows_done: Callable[[int, int], None],
    *,
    chunk_rows: int,
    rows: tuple[int, int],
    **options,
) -> None:
    """:func:`predict_streaming` of output rows ``rows`` through ``plan``'s column windows:
    ``write(y0, y1, x0, block)`` gets each block (whole chunks), ``rows_done(y0, y1)`` says
    when rows y0..y1-1 are written across the whole width. One window: band by band as
    :func:`predict_streaming` emits them; several: every window of a group of
    ``plan.row_group`` rows, left to right, then the group. ``options``: the remaining
    keywords of :func:`predict_streaming` (precision, statistics, ...)."""
    start, stop = rows
    if len(plan.windows) == 1:

        def sink(y0: int, y1: int, prob: np.ndarray) -> None:
            write(y0, y1, 0, prob)
            rows_done(y0, y1)

        predict_streaming(
            net, image, sink, chunk_rows=chunk_rows, tiler=plan.tiler, rows=rows, **options
        )
        return
    for a in range(start, stop, plan.row_group):
        b = min(a + plan.row_group, stop)
        for c0, c1 in plan.windows:

            def block(y0: int, y1: int, prob: np.ndarray, c0: int = c0) -> None:
                write(y0, y1, c0, prob)

            predict_streaming(
                net,
                image,
                block,
                chunk_rows=chunk_rows,
                tiler=plan.tiler,
                rows=(a, b),
                columns=(c0, c1),
                **options,
            )
        rows_done(a, b)


def _touches(cols, j: int, c0: int, c1: int) -> bool:
    """Whether tile column ``j``'s output window overlaps output columns [c0, c1)."""
    x0 = cols.out_starts[j]
    return x0 < c1 and x0 + len(cols.weights[j]) > c0


class _Band:
    """Stitched logits and weight sums of output rows lo.. (at most ``rows`` of them) and
    columns [c0, c1): allocated once, shifted up in place as rows are handed on."""

    def __init__(self, rows: int, c0: int, c1: int, lo: int):
        self.rows, self.c0, self.c1, self.lo = rows, c0, c1, lo
        self.logits = self.total = None  # (K, rows, width), (rows, width) once K is known
        self.used = 0  # rows touched so far

    def add(self, out, y0: int, span: tuple[int, int], rw, x0: int, cw) -> None:
        """Add tile output ``out`` (K, oh, ow) at (y0, x0), rows ``span`` of it, weighted by
        row weights ``rw`` (rows, 1) times column weights ``cw`` (ow,)."""
        top, bottom = span
        left, right = max(0, self.c0 - x0), min(out.shape[-1], self.c1 - x0)
        if right <= left:
            return
        if self.logits is None:
            width = self.c1 - self.c0
            self.logits, self.total = (
                torch.zeros(out.shape[0], self.rows, width),
                torch.zeros(self.rows, width),
            )
        need = y0 + bottom - self.lo  # the band must reach the last row used
        if need > self.rows:  # not expected (a tile row ends within chunk + oh rows)
            raise RuntimeError(f"band of {self.rows} rows cannot hold row {need}")
        self.used = max(self.used, need)
        weight = rw * cw[None, left:right]
        window = (slice(y0 + top - self.lo, need), slice(x0 + left - self.c0, x0 + right - self.c0))
        self.logits[(slice(None), *window)] += out[:, top:bottom, left:right] * weight
        self.total[window] += weight

    def emit(self, n: int, instance_class: int | None) -> np.ndarray:
        """Probabilities of the first ``n`` rows, float32 (n, width); then drops them."""
        prob = np.empty((n, self.c1 - self.c0), np.float32)
        for a in range(0, n, EMIT_ROWS):  # softmax per pixel: row pieces give the same values
            b = min(n, a + EMIT_ROWS)
            probabilities = (self.logits[:, a:b] / self.total[a:b]).softmax(
                dim=0
            )  # (K, rows, width)
            prob[a:b] = foreground_probability(probabilities, instance_class).numpy()
        rest = max(0, self.used - n)
        for a in range(0, rest, n):  # shift up in steps of n rows: source and target never overlap
            b = min(rest, a + n)
            self.logits[:, a:b] = self.logits[:, n + a : n + b]
            self.total[a:b] = self.total[n + a : n + b]
        self.logits[:, rest : self.used] = 0
        self.total[rest : self.used] = 0
        self.lo, self.used = self.lo + n, rest
        return prob


class _TileRunner:
    """Runs tiles through the network ``batch_size`` at a time, standardised as
    ``unet.data.samples.standardize`` does with the whole image's statistics."""

    def __init__(self, net, mean, scale, batch_size, dtype, on_batch):
        self.net, self.batch_size, self.dtype, self.on_batch = net, batch_size, dtype, on_batch
        self.device = net_device(net)
        self.mean32 = mean.astype(np.float32)[:, None, None]  # (C, 1, 1)
        self.scale32 = scale.astype(np.float32)[:, None, None]

    def __call__(self, read: Callable[[int], np.ndarray], tiles: list[int], widths):
        """Yields (j, logits (K, h', w') float32 on the CPU) for tile j of ``tiles`` (one tile
        row; input width ``widths[j]``), read with ``read(j)`` batch by batch. Tiles of one
        width go through the network together; only the last column can be narrower, so
        they come in ascending order."""
        by_width: dict[int, list[int]] = {}
        for j in tiles:
            by_width.setdefault(widths[j], []).append(j)
        for group in by_width.values():
            for first in range(0, len(group), self.batch_size):
                part = group[first : first + self.batch_size]
                x = np.stack(
                    [(read(j).astype(np.float32) - self.mean32) / self.scale32 for j in part]
                )
                x = torch.from_numpy(x).to(self.device)  # (B, C, h, w)
                with torch.autocast(
                    self.device.type,
                    dtype=self.dtype or torch.float32,
                    enabled=self.dtype is not None,
                ):
                    logits = self.net(x).float().cpu()  # (B, K, h', w')
                if self.on_batch is not None:
                    self.on_batch(len(part))
                yield from zip(part, logits, strict=True)
