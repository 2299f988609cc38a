"""Streamed prediction within the memory budget: column windows, the plan, its refusal."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from unet.data.samples import standardize  # noqa: E402
from unet.inference.image import predict_image  # noqa: E402
from unet.inference.tiler import Tiler  # noqa: E402
from unet.model import shapes  # noqa: E402
from unet.model.network import NetConfig, UNet  # noqa: E402
from unet.predict.zarr.bands import image_statistics  # noqa: E402
from unet.predict.zarr.plan import (  # noqa: E402
    StreamMemoryError,
    band_bytes,
    plan_stream,
    tile_bytes,
)
from unet.predict.zarr.route import predict_to_zarr  # noqa: E402
from unet.predict.zarr.store import StoreError  # noqa: E402

CHUNK = 64
TILE = {"valid": 124, "same": 128}


def tiny_net(padding: str) -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=2, depth=2, padding=padding, dropout=0.0).eval()


def wide_image(h: int = 96, w: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 1000 + 300 * np.sin(yy / 23.0) * np.cos(xx / 31.0)
    return (image + rng.normal(0, 40, (h, w))).astype(np.uint16)


def budget_for_columns(net: UNet, columns: int) -> float:
    """A budget (GB) with room for one tile and about ``columns`` chunk columns of band."""
    tile = TILE[net.config.padding]
    halo = tile - len(Tiler(tile_size=tile).plan(net, (200, 200)).rows.weights[0])
    one = tile_bytes(net, tile, tile, 1, 4)
    band = band_bytes(net.config.num_classes, CHUNK + tile - halo, columns * CHUNK, CHUNK)
    return (one + band + 1) / 2**30


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_column_windows_give_the_same_store(tmp_path, padding):
    net, image = tiny_net(padding), wide_image()
    tifffile.imwrite(tmp_path / "wide.tif", image)
    small = Tiler(tile_size=TILE[padding], batch_size=1, memory_gb=budget_for_columns(net, 3))
    plan = plan_stream(net, small, image.shape, CHUNK)
    assert len(plan.windows) >= 4  # 1,500 px in windows of 3 to 5 chunk columns
    assert all(c0 % CHUNK == 0 for c0, _ in plan.windows)
    stores = {}
    for name, tiler in [("split", small), ("whole", Tiler(TILE[padding], batch_size=1))]:
        out = tmp_path / f"{name}.zarr"
        predict_to_zarr(
            net,
            tmp_path / "wide.tif",
            out,
            chunk=CHUNK,
            tiler=tiler,
            probability_dtype="float32",
            labels=False,
            progress=False,
        )
        stores[name] = np.asarray(zarr.open_array(str(out / "0"), mode="r"))
    assert len(plan_stream(net, Tiler(TILE[padding]), image.shape, CHUNK).windows) == 1
    np.testing.assert_array_equal(stores["split"], stores["whole"])  # bit for bit
    expected = predict_image(net, image, Tiler(tile_size=TILE[padding]))[1]
    np.testing.assert_allclose(stores["split"], expected, rtol=1e-5, atol=1e-5)


def test_statistics_read_in_column_blocks_equal_standardize():
    image = wide_image(70, 333)
    mean, std = image_statistics(image, rows_per_read=32, cols_per_read=40)
    got = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(got, standardize(image), rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 70_000),
    w=st.integers(1, 70_000),
    depth=st.integers(1, 5),
    padding=st.sampled_from(["valid", "same"]),
    base=st.sampled_from([2, 4, 16, 64]),
    classes=st.integers(2, 4),
    chunk=st.sampled_from([64, 256, 1024]),
    megabytes=st.floats(1, 4096),
    tile=st.booleans(),
)
def test_planned_tiles_and_band_stay_within_the_budget(
    h, w, depth, padding, base, classes, chunk, megabytes, tile
):
    config = NetConfig(depth=depth, padding=padding, base_channels=base, num_classes=classes)
    net = SimpleNamespace(config=config)  # planning reads the architecture record only
    smallest, step = shapes.size_rule(depth, padding)
    tiler = Tiler(tile_size=smallest + 32 * step if tile else None, memory_gb=megabytes / 1024)
    try:
        plan = plan_stream(net, tiler, (h, w), chunk)
    except StreamMemoryError as err:
        assert "\n" not in str(err) and "tiler.memory_gb" in str(err)
        return
    # the memory is recounted from the plan itself, not taken from the planner's sums
    rows, cols = plan.tiles.rows, plan.tiles.cols
    tiles = plan.tiles.batch_size * tile_bytes(net, max(rows.in_sizes), max(cols.in_sizes), 1, 4)
    widest = max(c1 - c0 for c0, c1 in plan.windows)
    band_rows = chunk + max(len(r) for r in rows.weights)
    assert tiles + band_bytes(classes, band_rows, widest, chunk) <= tiler.memory_budget(net)
    edges = [c for window in plan.windows for c in window]
    assert edges[0] == 0 and edges[-1] == w and edges[1:-1:2] == edges[2:-1:2]  # abutting
    assert all(c % chunk == 0 for c in edges[:-1])
    assert plan.row_group % chunk == 0 or plan.row_group == h


def test_a_budget_below_one_tile_is_refused_in_one_line(tmp_path):
    net, image = tiny_net("valid"), wide_image(96, 300)
    tifffile.imwrite(tmp_path / "in.tif", image)
    with pytest.raises(StreamMemoryError, match="too small") as err:
        plan_stream(net, Tiler(tile_size=92, memory_gb=1e-5), image.shape, CHUNK)
    assert "\n" not in str(err.value) and "at least" in str(err.value)
    with pytest.raises(StoreError, match="tiler.memory_gb"):
        predict_to_zarr(
            net,
            tmp_path / "in.tif",
            tmp_path / "out.zarr",
            chunk=CHUNK,
            tiler=Tiler(memory_gb=1e-5),
            labels=False,
            progress=False,
        )
