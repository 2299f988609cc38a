"""Streamed prediction's working set does not grow with the image's width."""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")

from unet.inference.tiler import Tiler  # noqa: E402
from unet.model.network import NetConfig, UNet  # noqa: E402
from unet.predict.zarr.plan import BAND_SHARE, band_bytes, plan_stream  # noqa: E402
from unet.predict.zarr.route import predict_to_zarr  # noqa: E402

GB = 2**30
# (base channels, depth) of the benchmark's nets: small, isbi_cpu, paper
NETS = [(4, 2), (16, 4), (64, 4)]


def planned_band(net, shape: tuple[int, int], gb: float, chunk: int = 1024) -> int:
    """Bytes of the widest window's band and emitted chunk row, recounted from the plan."""
    plan = plan_stream(net, Tiler(memory_gb=gb), shape, chunk)
    rows = chunk + max(len(r) for r in plan.tiles.rows.weights)
    widest = max(c1 - c0 for c0, c1 in plan.windows)
    return band_bytes(net.config.num_classes, rows, widest, chunk)


@pytest.mark.parametrize(("base", "depth"), NETS)
def test_the_band_stops_growing_with_the_width(base, depth):
    net = SimpleNamespace(config=NetConfig(depth=depth, base_channels=base))
    bands = {w: planned_band(net, (2048, w), 1.0) for w in (2048, 12288, 65536, 262144)}
    # whole chunk columns up to the share; then more windows, not a wider band
    assert bands[65536] <= max(bands[2048], BAND_SHARE * GB + band_bytes(2, 3072, 1024, 1024))
    assert bands[262144] == bands[65536]
    assert bands[65536] - bands[2048] < 200 * 2**20  # the benchmark's goal, in the plan


def test_the_streamed_plan_keeps_a_tile_cap():
    net = SimpleNamespace(config=NetConfig(depth=4, base_channels=16))
    free = plan_stream(net, Tiler(memory_gb=8.0), (8192, 8192), 1024)
    capped = plan_stream(net, Tiler(memory_gb=8.0, max_tile=700), (8192, 8192), 1024)
    assert max(free.tiles.rows.in_sizes) > 700  # the cap is what holds it
    assert max(capped.tiles.rows.in_sizes + capped.tiles.cols.in_sizes) <= 700


def wide_store(path, h: int, w: int, chunk: int) -> None:
    """A (y, x) OME-Zarr uint16 image written chunk by chunk."""
    group = zarr.open_group(str(path), mode="w")
    axes = [{"name": a, "type": "space"} for a in "yx"]
    scale = [{"type": "scale", "scale": [1.0, 1.0]}]
    datasets = [{"path": "0", "coordinateTransformations": scale}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    array = group.create_array("0", shape=(h, w), chunks=(chunk, chunk), dtype="uint16")
    rng = np.random.default_rng(0)
    for x in range(0, w, chunk):
        array[:, x : x + chunk] = rng.integers(900, 1100, (h, min(chunk, w - x)), np.uint16)


def test_a_wide_short_image_streams_without_whole_width_buffers(tmp_path):
    """64 x 20,000 px with a budget that once made one window of the whole width: the
    traced (NumPy, zarr) peak stays below two float32 row bands of the whole width."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, dropout=0.0).eval()
    h, w, chunk = 64, 20_000, 64
    wide_store(tmp_path / "in.zarr", h, w, chunk)
    tiler = Tiler(memory_gb=0.25)
    plan = plan_stream(net, tiler, (h, w), chunk)
    assert len(plan.windows) > 1
    tracemalloc.start()
    try:
        predict_to_zarr(
            net,
            tmp_path / "in.zarr",
            tmp_path / "out.zarr",
            chunk=chunk,
            tiler=tiler,
            probability_dtype="float32",
            labels=False,
            progress=False,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one float32 band of the whole width is 5.1 MB; a whole-width window held three such
    # arrays at once (probabilities, the stored copy, zarr's buffers): 16 MB traced, against
    # 9 MB in two windows (5.5 MB of it the statistics pass's blocks, independent of width)
    whole_row_band = 4 * h * w
    assert peak < 2 * whole_row_band, f"traced peak {peak / 2**20:.1f} MB"
    out = np.asarray(zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r"))
    assert out.shape == (h, w) and np.isfinite(out).all()
