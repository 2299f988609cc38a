"""Running a U-Net on images of any size, on plain tensors (notebooks, validation, predict.py).

- ``predict_whole_image``: mirror-pad to the smallest input the network accepts, one
  forward pass, crop back. Simple; memory grows with the image.
- ``Tiler``: the overlap-tile strategy (paper, Fig. 2) for images of any size within a
  memory budget. It returns the same logits as ``predict_whole_image`` up to float rounding,
  for ``valid`` and ``same`` networks alike, because
  1. every tile starts on the max pools' grid of the whole-image input (a U-Net of depth d
     is shift-equivariant only for shifts that are multiples of ``2**depth``);
  2. tiles read their context from the mirror-extended image, exactly as the whole-image
     input does, and the last tile along an axis ends where the whole-image input ends;
  3. outputs near an inner tile edge, where a tile sees zero padding (``same`` convs) or a
     clamped bilinear upsampling that the whole image does not, are not used: neighbouring
     tiles overlap by at least twice that reach (``edge_reach``) and those pixels get
     weight 0 (for the paper's valid network the reach is 0 and the windows just abut).
Test-time augmentation (softmax averaged over flips and rotations) is ``unet.inference.tta``.

Nets in ``eval()`` mode only: dropout or batch statistics would differ from tile to tile.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unet.data.mirror import crop_with_mirror, mirror_pad
from unet.model import shapes


def _axis_plan(size: int, depth: int, padding: str) -> tuple[int, int, int]:
    """(input length, pad before, output offset) to predict ``size`` pixels in one pass."""
    in_size = shapes.smallest_input_covering(size, depth, padding)
    out_size = shapes.output_size(in_size, depth, padding)
    before = (in_size - out_size) // 2 if padding == "valid" else (in_size - size) // 2
    # Output pixel j sees input pixel j + (in - out) / 2; image pixel y is input y + before.
    offset = before - (in_size - out_size) // 2
    return in_size, before, offset


def predict_whole_image(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) for images (B, C, H, W) of any size, in one forward pass.

    The image is extended by mirroring to the smallest input the network accepts (paper,
    Fig. 2: missing context is extrapolated by mirroring) and the output cropped to (H, W).
    """
    h, w = image.shape[-2:]
    in_h, top, off_y = _axis_plan(h, net.config.depth, net.config.padding)
    in_w, left, off_x = _axis_plan(w, net.config.depth, net.config.padding)
    padded = mirror_pad(image, top, in_h - h - top, left, in_w - w - left)
    logits = net(padded)
    return logits[..., off_y : off_y + h, off_x : off_x + w]


def edge_reach(depth: int, padding: str = "valid", up_mode: str = "transpose") -> int:
    """How far (px) the edge of a tile changes the tile's output, compared with a whole image.

    Counted layer by layer as the width of the affected band at each map's edge: a padded
    3x3 conv widens it by 1 (its zero padding stands in for real context), a valid one
    keeps it (it only crops), a 2x2 max pool halves it (rounding up), a 2x2 up-convolution
    doubles it, a bilinear upsampling doubles it plus 1 (it clamps at the map edge). 0 for
    the paper's network; 94 for depth 4 with ``same`` padding.
    """
    grow = 1 if padding == "same" else 0
    band, skips = 0, []
    for _ in range(depth):
        band += 2 * grow  # two 3x3 convs
        skips.append(band)
        band = -(-band // 2)  # 2x2 max pool
    band += 2 * grow  # bottleneck
    for skip in reversed(skips):
        band = 2 * band + (1 if up_mode == "bilinear" else 0)
        band = max(band, skip) + 2 * grow  # concatenate the skip, two 3x3 convs
    return band


def _net_settings(net: nn.Module) -> tuple[int, str, str]:
    """(depth, padding, up_mode) from the network's architecture record (``UNet.config``)."""
    config = net.config
    return config.depth, config.padding, config.up_mode


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis, in image coordinates (negative or past the end: mirrored).

    Tile k reads input pixels ``in_starts[k] + [0, in_sizes[k])`` and its output pixel j
    belongs to image pixel ``out_starts[k] + j`` with stitching weight ``weights[k][j]``.
    """

    in_starts: tuple[int, ...]
    in_sizes: tuple[int, ...]
    out_starts: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.in_starts)


def _ramp(length: int, rising: bool, overlap: int, reach: int) -> torch.Tensor:
    """Weights over a tile's output along one axis, falling to 0 towards an inner edge.

    If the overlap leaves room (``overlap >= 2 * reach``), the first ``reach`` pixels get
    weight 0 and the weight rises linearly over the rest of the overlap: neighbouring
    weights sum to 1, and only exact outputs are used. With a smaller overlap the ramp spans
    the whole overlap: approximate, but without a visible step.
    """
    dead = reach if overlap >= 2 * reach else 0
    d = torch.arange(length, dtype=torch.float32)  # distance from the inner edge
    if not rising:
        d = d.flip(0)
    if overlap == 2 * dead:
        return (d >= dead).float()
    return ((d - dead + 0.5) / (overlap - 2 * dead)).clamp(0.0, 1.0)


def axis_layout(
    size: int, tile: int, overlap: int, net_settings: tuple[int, str, str]
) -> tuple[list[int], list[int], int]:
    """(output window starts, input lengths, shift) of the tiles :func:`plan_axis` lays out,
    without their weights (cheap enough to compare many tile sizes); output starts are in
    the output space, image coordinates after subtracting ``shift``."""
    depth, padding, _ = net_settings
    step = 2**depth
    if padding == "valid":
        extent, shift = size, 0  # output space = image coordinates
    else:  # output space = the whole-image input: mirrored to a multiple of 2**depth, centred
        extent = shapes.smallest_input_covering(size, depth, padding)
        shift = (extent - size) // 2
    out = shapes.output_size(tile, depth, padding)
    if out >= extent:
        n, stride = 1, 0
    else:
        stride = (out - overlap) // step * step
        if stride <= 0:
            smallest = shapes.smallest_input_covering(overlap + step, depth, padding)
            raise shapes.InvalidInputSizeError(
                f"tile size {tile} leaves no stride after an overlap of {overlap} px "
                f"(2**depth = {step}); use a tile size of at least {smallest}"
            )
        n = 1 + math.ceil((extent - out) / stride)
    out_starts = [k * stride for k in range(n)]
    in_sizes = [tile] * (n - 1) + [
        shapes.smallest_input_covering(extent - out_starts[-1], depth, padding)
    ]
    return out_starts, in_sizes, shift


def plan_axis(size: int, tile: int, overlap: int, net_settings: tuple[int, str, str]) -> AxisTiles:
    """Tiles of input length ``tile`` (the last one shrunk) covering ``size`` pixels.

    Output windows start at multiples of the stride (a multiple of ``2**depth``, so every
    tile sits on the whole-image pooling grid) and overlap by at least ``overlap``. The last
    tile is the smallest valid one that covers the rest: it ends where a whole-image input
    would end, so no compute goes far beyond the image.
    """
    depth, padding, up_mode = net_settings
    reach, halo = edge_reach(depth, padding, up_mode), shapes.halo(depth, padding)
    out_starts, in_sizes, shift = axis_layout(size, tile, overlap, net_settings)
    n = len(out_starts)
    weights = []
    for k, in_size in enumerate(in_sizes):
        length = in_size - halo
        w = torch.ones(length)
        if k > 0:
            w = w * _ramp(length, rising=True, overlap=overlap, reach=reach)
        if k < n - 1:
            w = w * _ramp(length, rising=False, overlap=overlap, reach=reach)
        weights.append(w)
    return AxisTiles(
        in_starts=tuple(s - halo // 2 - shift for s in out_starts),
        in_sizes=tuple(in_sizes),
        out_starts=tuple(s - shift for s in out_starts),
        weights=tuple(weights),
    )


@dataclass(frozen=True)
class TilePlan:
    """A grid of tiles (rows x cols) and how many go through the network at once."""

    rows: AxisTiles
    cols: AxisTiles
    batch_size: int

    @property
    def num_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    def tile_shapes(self) -> dict[tuple[int, int], int]:
        """Input tile shape -> number of tiles of that shape (one batch shape each)."""
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for th in self.rows.in_sizes:
            for tw in self.cols.in_sizes:
                counts[(th, tw)] += 1
        return dict(counts)

    def groups(self) -> Iterator[list[tuple[int, int]]]:
        """(row, col) indices of the tiles, grouped by input shape."""
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for i, th in enumerate(self.rows.in_sizes):
            for j, tw in enumerate(self.cols.in_sizes):
                by_shape[(th, tw)].append((i, j))
        yield from by_shape.values()


# Peak inference memory of one tile in float32, in bytes per input pixel and base channel:
# the skips (kept until the expanding path uses them) plus the working set of the first
# level's expanding convs (upsampled map, concatenation, conv outputs, oneDNN layout copies).
# Measured peak resident memory on CPU, paper net (64 base channels): 24.5-25.2 (valid,
# tiles of 572-1116 px), 30.6 (valid, 2124 px), 33-41 (same, 512-1024 px); with headroom:
BYTES_PER_PIXEL_AND_CHANNEL = {"valid": 32, "same": 44}


def tile_memory_bytes(net: nn.Module, height: int, width: int) -> int:
    """Estimated peak memory (bytes) of the forward pass of one tile of this size."""
    config = net.config
    per_pixel = BYTES_PER_PIXEL_AND_CHANNEL[config.padding] * config.base_channels
    return per_pixel * height * width


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of the device: GPU memory for CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume 8 GiB
        return 8 * 2**30


@dataclass(frozen=True)
class Tiler:
    """Predicts images of any size tile by tile; the stitched logits equal a whole-image pass.

    Args:
        tile_size: input tile side (or (height, width)); it must be a size the network
            accepts. None: the largest square tile within ``memory_gb`` (larger tiles waste
            less on the context the network consumes), no larger than the image needs.
        overlap: minimum overlap (px, a multiple of ``2**depth``) of neighbouring output
            windows. None: ``2 * edge_reach`` rounded up to a multiple of ``2**depth``
            (0 for the paper's valid network, 192 for depth 4 ``same``), which makes the
            result exact; smaller values are cheaper and blend approximately.
        batch_size: tiles per forward pass. None: as many as fit in ``memory_gb``.
        memory_gb: memory budget of one forward pass. None: 40% of the free memory of the
            network's device (free GPU memory, or available RAM).
        max_tile: with ``tile_size`` None, the largest tile side chosen (None: no cap).
    """

    tile_size: int | Sequence[int] | None = None
    overlap: int | None = None
    batch_size: int | None = None
    memory_gb: float | None = None
    max_tile: int | None = None

    def overlap_for(self, net: nn.Module) -> int:
        """The overlap (px) this tiler uses for ``net``."""
        return self._overlap(*_net_settings(net))

    def _overlap(self, depth: int, padding: str, up_mode: str) -> int:
        step = 2**depth
        if self.overlap is None:
            return -(-2 * edge_reach(depth, padding, up_mode) // step) * step
        if self.overlap < 0 or self.overlap % step:
            raise shapes.InvalidInputSizeError(
                f"overlap={self.overlap} must be a non-negative multiple of 2**depth = {step}"
            )
        return self.overlap

    def memory_budget(self, net: nn.Module) -> int:
        """The memory budget (bytes) for one forward pass of ``net``."""
        if self.memory_gb is not None:
            return int(self.memory_gb * 2**30)
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return int(0.4 * available_memory_bytes(device))

    def _auto_tile(self, net, size: tuple[int, int], overlap: int, budget: int) -> list[int]:
        """Largest tile within the budget, no larger than one tile covering the image."""
        depth, padding, _ = _net_settings(net)
        step = 2**depth
        smallest = shapes.smallest_input_covering(
            overlap + step, depth, padding
        )  # leaves a stride >= 2**depth

        def fits(height: int, width: int) -> bool:
            capped = self.max_tile is None or max(height, width) <= self.max_tile
            return capped and tile_memory_bytes(net, height, width) <= budget

        def largest(other: int) -> int:  # largest valid side t with t x other in the budget
            t = smallest  # valid sizes recur every 2**depth
            while fits(t + step, other):
                t += step
            return t

        cover = [shapes.smallest_input_covering(s, depth, padding) for s in size]
        side = smallest  # the largest square tile in the budget
        while fits(side + step, side + step):
            side += step
        tile = [min(side, c) for c in cover]
        # a short image leaves budget for longer tiles along the other axis
        for axis in (0, 1):
            if tile[1 - axis] == cover[1 - axis] and tile[axis] < cover[axis]:
                tile[axis] = min(cover[axis], largest(tile[1 - axis]))
        return tile

    def plan(self, net: nn.Module, size: tuple[int, int]) -> TilePlan:
        """The tiles for an image of ``size`` (H, W); checks an explicit tile size first."""
        depth, padding, up_mode = _net_settings(net)
        overlap = self._overlap(depth, padding, up_mode)
        budget = self.memory_budget(net)
        if self.tile_size is None:
            tile = self._auto_tile(net, size, overlap, budget)
        else:
            tile = [self.tile_size] * 2 if isinstance(self.tile_size, int) else self.tile_size
            tile = [int(t) for t in tile]
            try:
                shapes.check_input_shape(tile, depth, padding)
            except shapes.InvalidInputSizeError as err:
                raise shapes.InvalidInputSizeError(f"tile_size: {err}") from None
        settings = (depth, padding, up_mode)
        rows = plan_axis(size[0], tile[0], overlap, settings)
        cols = plan_axis(size[1], tile[1], overlap, settings)
        batch = self.batch_size
        if batch is None:
            biggest = tile_memory_bytes(net, max(rows.in_sizes), max(cols.in_sizes))
            batch = max(1, budget // biggest)
        return TilePlan(rows, cols, max(1, int(batch)))

    @torch.inference_mode()
    def __call__(
        self,
        net: nn.Module,
        image: torch.Tensor,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Logits (B, K, H, W), float32, for images (B, C, H, W) of any size.

        ``on_batch(n)`` is called after each forward pass with the number of tiles it
        covered (for a progress bar).
        """
        b, _, h, w = image.shape
        plan = self.plan(net, (h, w))
        rows, cols = plan.rows, plan.cols
        logits = None  # (B, K, H, W), allocated once K is known
        total = torch.zeros(h, w, device=image.device)  # sum of stitching weights
        for group in plan.groups():
            # (image, row, col) triples of one tile shape, batch_size at a time
            tiles = [(n, i, j) for i, j in group for n in range(b)]
            for first in range(0, len(tiles), plan.batch_size):
                chunk = tiles[first : first + plan.batch_size]
                x = torch.cat(
                    [
                        crop_with_mirror(
                            image[n : n + 1],
                            rows.in_starts[i],
                            cols.in_starts[j],
                            rows.in_sizes[i],
                            cols.in_sizes[j],
                        )
                        for n, i, j in chunk
                    ]
                )  # (len(chunk), C, th, tw)
                out = net(x).float()  # (len(chunk), K, th', tw')
                if logits is None:
                    logits = torch.zeros(b, out.shape[1], h, w, device=image.device)
                for k, (n, i, j) in enumerate(chunk):
                    y0, x0 = rows.out_starts[i], cols.out_starts[j]
                    # the part of the output window inside the image
                    top, left = max(0, -y0), max(0, -x0)
                    bottom = min(out.shape[-2], h - y0)
                    right = min(out.shape[-1], w - x0)
                    weight = rows.weights[i][top:bottom, None] * cols.weights[j][None, left:right]
                    weight = weight.to(image.device)
                    window = (slice(y0 + top, y0 + bottom), slice(x0 + left, x0 + right))
                    logits[(n, slice(None), *window)] += out[k, :, top:bottom, left:right] * weight
                    if n == 0:  # the weights are the same for every image
                        total[window] += weight
                if on_batch is not None:
                    on_batch(len(chunk))
        return logits / total
