"""How a streamed prediction spends its memory budget: tiles, band of stitched rows, windows.

    budget (``Tiler.memory_budget``) = tiles in flight (batch x forward pass + input and
    logits) + band of stitched logits ((K + 1) x (chunk + tile output height) x window
    width, float32) + the probabilities of one chunk row of the window on its way to the store

The band grows with the image's width, so a wide image is cut into column windows (whole
chunk columns of the store) whose band takes at most ``BAND_SHARE`` of the budget (one
chunk column at least): the working set does not grow with the width. Each window runs
its own tiles, with their mirrored context, top to bottom over a group of chunk rows
(``row_group``), and the tiles that straddle a window's (or a group's) edge are computed
once for each side. Every output pixel still
sums the same tiles' outputs, with the same weights, in the same order (tile rows, then
tile columns), so the stitched result is the same as one window of the whole width.

The tile size is chosen with the band: among the square tiles that leave room for at least
one chunk column of band, the one with the least network work (context the tiles read
twice, and tiles computed for two windows, counted) wins. An explicit ``tile_size`` or
``batch_size`` is kept. Plain arithmetic over tile layouts; no prediction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from unet.errors import UserError
from unet.inference.tiler import TilePlan, Tiler, axis_layout, tile_memory_bytes
from unet.model import shapes

# A group of chunk rows, when windows split the width, spans this many tile output heights:
# the tile rows on a group's edge, computed twice, then cost at most about 1/16 more.
ROW_GROUP_TILES = 16
# bytes per pixel of a chunk row of the window on its way out: float32 probability,
# float16 (or uint8) copy for the store, the finiteness mask, and zarr's chunk buffers
EMIT_BYTES_PER_PIXEL = 12
TILE_CANDIDATES = 48  # square tile sides compared (geometric spacing)
# The band (with its chunk row on the way out) gets at most this share of the budget,
# whatever the image's width: a wider image gets more windows, not a wider band, so the
# working set stays near what a narrow image uses instead of growing to fill the budget.
BAND_SHARE = 1 / 8
# The forward pass of a narrow network costs more per pixel than the tiler's per-channel
# estimate says (the input, the first and last maps, oneDNN copies). Measured peak resident
# memory on CPU, valid nets of depth 2-4: 192-230 bytes per pixel at 4 base channels, 472 at
# 16, 1,330-1,580 at 64; the planner counts at least this many:
FORWARD_BYTES_PER_PIXEL = 112
FORWARD_BYTES_PER_PIXEL_AND_CHANNEL = 24


class StreamMemoryError(UserError, ValueError):
    """The memory budget cannot hold one tile and one chunk column of stitched rows."""


@dataclass(frozen=True)
class StreamPlan:
    """Tiles, column windows and row groups of a streamed prediction, and their memory.

    Attributes:
        tiler: the tiler to stream with (explicit tile size and batch size).
        tiles: its tile plan for the whole image.
        windows: output column ranges [c0, c1), whole chunk columns, left to right.
        row_group: output rows per group (a multiple of the chunk; the image height when
            there is one window).
        tile_bytes: memory of the tiles in flight; band_bytes: of one window's band.
        budget: the budget both share.
    """

    tiler: Tiler
    tiles: TilePlan
    windows: tuple[tuple[int, int], ...]
    row_group: int
    tile_bytes: int
    band_bytes: int
    budget: int


def tile_bytes(net: nn.Module, height: int, width: int, channels: int, itemsize: int) -> int:
    """Memory of one tile in flight: forward pass, raw and float32 input, float32 logits."""
    config = net.config
    halo = shapes.halo(config.depth, config.padding)
    logits = 4 * config.num_classes * (height - halo) * (width - halo)
    per_pixel = FORWARD_BYTES_PER_PIXEL + FORWARD_BYTES_PER_PIXEL_AND_CHANNEL * config.base_channels
    forward = max(tile_memory_bytes(net, height, width), per_pixel * height * width)
    return forward + height * width * channels * (itemsize + 4) + logits


def band_bytes(num_classes: int, rows: int, width: int, chunk: int) -> int:
    """Memory of a band of ``rows`` x ``width`` stitched logits and weight sums (float32)
    plus one chunk row of the window on its way to the store."""
    return 4 * (num_classes + 1) * rows * width + EMIT_BYTES_PER_PIXEL * chunk * width


def plan_stream(
    net: nn.Module,
    tiler: Tiler,
    shape: tuple[int, int],
    chunk: int,
    channels: int = 1,
    itemsize: int = 4,
) -> StreamPlan:
    """The streamed prediction of an image of ``shape`` (H, W) into ``chunk`` x ``chunk``
    chunks within ``tiler``'s memory budget; ``channels`` and ``itemsize`` describe the
    input pixels. Raises :class:`StreamMemoryError` when nothing fits."""
    budget = tiler.memory_budget(net)
    best = None
    for side in _candidate_sides(net, tiler, shape, channels, itemsize, budget):
        option = _option(net, tiler, shape, chunk, side, (channels, itemsize), budget)
        if option is not None and (best is None or option[0] < best[0]):
            best = option
    if best is None:
        raise _too_small(net, tiler, shape, chunk, (channels, itemsize), budget)
    _, tile, batch, windows, group, tiles_b, band_b = best
    explicit = dataclasses.replace(tiler, tile_size=tuple(tile), batch_size=batch)
    plan = explicit.plan(net, shape)
    return StreamPlan(explicit, plan, windows, group, tiles_b, band_b, budget)


def _net_settings(net: nn.Module) -> tuple[int, str, str]:
    config = net.config
    return config.depth, config.padding, config.up_mode


def _candidate_sides(net, tiler, shape, channels, itemsize, budget) -> list:
    """Tile shapes to compare: the explicit one, or square ones (capped at what covers
    the image) from the smallest with a stride to the largest within the budget."""
    if tiler.tile_size is not None:
        tile = tiler.tile_size
        return [[int(t) for t in ([tile] * 2 if isinstance(tile, int) else tile)]]
    depth, padding, _ = _net_settings(net)
    smallest, step = shapes.size_rule(depth, padding)
    low = max(
        smallest, shapes.smallest_input_covering(tiler.overlap_for(net) + step, depth, padding)
    )
    cover = [shapes.smallest_input_covering(s, depth, padding) for s in shape]
    high = low
    while (
        high < max(cover)
        and (tiler.max_tile is None or high + step <= tiler.max_tile)
        and tile_bytes(net, high + step, high + step, channels, itemsize) <= budget
    ):
        high += step
    ratio = (high / low) ** (1 / max(1, TILE_CANDIDATES - 1))
    sides = {low + round((low * ratio**k - low) / step) * step for k in range(TILE_CANDIDATES)}
    return [[min(s, c) for c in cover] for s in sorted(sides | {high})]


def _option(net, tiler, shape, chunk, tile, pixel, budget):
    """(work, tile, batch, windows, row group, tile bytes, band bytes) for one tile shape,
    or None when not even one chunk column of band fits beside one batch."""
    h, w = shape
    settings, overlap = _net_settings(net), tiler.overlap_for(net)
    try:
        rows = axis_layout(h, tile[0], overlap, settings)
        cols = axis_layout(w, tile[1], overlap, settings)
    except shapes.InvalidInputSizeError:
        return None
    halo = shapes.halo(settings[0], settings[1])
    one = tile_bytes(net, max(rows[1]), max(cols[1]), *pixel)
    batch = tiler.batch_size or 1
    band_rows = chunk + max(rows[1]) - halo
    room = budget - batch * one
    per_column = band_bytes(net.config.num_classes, band_rows, 1, chunk)
    width = room // per_column // chunk * chunk if room > 0 else 0
    if width < min(chunk, w):
        return None
    width = min(width, max(chunk, int(BAND_SHARE * budget) // per_column // chunk * chunk))
    if width >= w:
        windows, group = ((0, w),), h
    else:
        count = math.ceil(w / width)
        step = math.ceil(math.ceil(w / chunk) / count) * chunk
        windows = tuple((c, min(c + step, w)) for c in range(0, w, step))
        group = chunk * max(1, math.ceil(ROW_GROUP_TILES * (max(rows[1]) - halo) / chunk))
    widest = max(c1 - c0 for c0, c1 in windows)
    band = band_bytes(net.config.num_classes, band_rows, widest, chunk)
    if tiler.batch_size is None:  # what the band leaves, for more tiles at once
        batch = max(1, (budget - band) // one)
    work = _work(rows, [(0, h)] if group >= h else _spans(h, group), halo)
    work *= _work(cols, windows, halo)
    return work, list(tile), int(batch), windows, group, int(batch * one), int(band)


def _spans(size: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def _work(layout, spans, halo: int) -> int:
    """Input pixels along one axis that the tiles touching each span read, summed."""
    out_starts, in_sizes, shift = layout
    total = 0
    for a, b in spans:
        for start, size in zip(out_starts, in_sizes, strict=True):
            lo = start - shift
            if lo < b and lo + size - halo > a:
                total += size
    return total


def _too_small(net, tiler, shape, chunk, pixel, budget) -> StreamMemoryError:
    """The one-line refusal: what the smallest tile and one chunk column of band need."""
    depth, padding, _ = _net_settings(net)
    sides = _candidate_sides(net, tiler, shape, *pixel, budget)
    tile = sides[0]
    halo = shapes.halo(depth, padding)
    need = (tiler.batch_size or 1) * tile_bytes(net, *tile, *pixel)
    need += band_bytes(net.config.num_classes, chunk + tile[0] - halo, min(chunk, shape[1]), chunk)
    return StreamMemoryError(
        f"tiler.memory_gb: a budget of {budget / 2**20:.1f} MB is too small to stream a "
        f"{shape[0]}x{shape[1]} image in chunks of {chunk}: one {tile[0]}x{tile[1]} tile and "
        f"one chunk column of stitched rows need {need / 2**20:.1f} MB; set tiler.memory_gb "
        f"to at least {math.ceil(need / 2**30 * 100) / 100:g} or use a smaller chunk or tile"
    )
