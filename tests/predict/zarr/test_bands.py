import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")
ome_zarr_writer = pytest.importorskip("ome_zarr.writer")

from unet.data.samples import standardize  # noqa: E402
from unet.inference.image import predict_image  # noqa: E402
from unet.inference.tiler import Tiler  # noqa: E402
from unet.model.network import UNet  # noqa: E402
from unet.predict.zarr.bands import image_statistics, predict_streaming, rank_share  # noqa: E402
from unet.predict.zarr.route import predict_to_zarr  # noqa: E402
from unet.predict.zarr.source import open_image  # noqa: E402
from unet.predict.zarr.store import StoreError  # noqa: E402

from unet.data.readers import DataError  # noqa: E402  # isort: skip

# float32 convs on different batch shapes may sum in different orders (as in test_tiler)
CLOSE = dict(rtol=1e-5, atol=1e-5)
HALF_ULP = 2**-11  # float16 spacing at 1 is 2**-10: a stored value is within half of it


def tiny_net(padding: str, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=2, depth=2, padding=padding, dropout=0.0).eval()


def blobs(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint16 gray values with smooth structure (cells crossing tile and chunk borders)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 1000 + 300 * np.sin(yy / 23.0) * np.cos(xx / 31.0)
    return (image + rng.normal(0, 40, (h, w))).astype(np.uint16)


def write_ome_zarr(path, image, scale=(0.5, 0.25), levels=1):
    """An OME-Zarr input written by ome-zarr's own writer (an independent route)."""
    group = zarr.open_group(str(path), mode="w")
    ome_zarr_writer.write_image(
        image,
        group,
        scale_factors=[2**k for k in range(1, levels)],
        axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"],
        scale=dict(zip("yx", scale, strict=True)),
        storage_options={"chunks": (256, 256)},
    )
    return path


def test_image_statistics_equal_standardize():
    image = blobs(333, 257)
    mean, std = image_statistics(image, rows_per_read=50)
    expected = standardize(image)
    got = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("rows", [None, (128, 256)])
def test_streaming_equals_in_memory_tiler(padding, rows):
    net, image = tiny_net(padding), blobs(301, 437)
    tiler = Tiler(tile_size=92 if padding == "valid" else 64, batch_size=3)
    expected = predict_image(net, image, tiler)[1]  # (H, W) cell probability
    got = np.full(image.shape, np.nan, np.float32)
    bands = []

    def sink(y0, y1, prob):
        bands.append((y0, y1))
        got[y0:y1] = prob

    predict_streaming(net, image, sink, chunk_rows=64, tiler=tiler, rows=rows)
    start, stop = rows or (0, image.shape[0])
    assert all(y0 % 64 == 0 and (y1 % 64 == 0 or y1 == stop) for y0, y1 in bands)
    assert bands[0][0] == start and bands[-1][1] == stop  # nothing outside the rows asked
    np.testing.assert_allclose(got[start:stop], expected[start:stop], **CLOSE)
    assert np.isnan(got[:start]).all() and np.isnan(got[stop:]).all()


@pytest.mark.slow
def test_large_zarr_image_streams_to_the_in_memory_result(tmp_path):
    # the 2,048 x 3,000 image: same net, same tiles
    image = blobs(2048, 3000)
    source = write_ome_zarr(tmp_path / "in.zarr", image)
    net, tiler = tiny_net("valid"), Tiler(tile_size=508, batch_size=2)
    predict_to_zarr(net, source, tmp_path / "out.zarr", chunk=512, tiler=tiler, labels=False)
    got = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:]
    expected = predict_image(net, image, tiler)[1]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=0, atol=HALF_ULP + 1e-5)


def _store(path):
    return zarr.open_array(str(path / "0"), mode="r")[:]


class Killed(Exception):
    pass


def test_killed_prediction_resumes_to_the_uninterrupted_result(tmp_path):
    image = blobs(300, 200)
    source = write_ome_zarr(tmp_path / "in.zarr", image)
    net, tiler = tiny_net("same"), Tiler(tile_size=128, batch_size=2)
    options = dict(chunk=64, tiler=tiler, probability_dtype="uint8", progress=False)
    predict_to_zarr(net, source, tmp_path / "whole.zarr", **options)
    calls = []

    def kill_after_some(n):
        calls.append(n)
        if len(calls) == 5:  # in the third tile row: two chunk rows are written
            raise Killed

    with pytest.raises(Killed):
        predict_to_zarr(net, source, tmp_path / "resumed.zarr", on_batch=kill_after_some, **options)
    summary = predict_to_zarr(net, source, tmp_path / "resumed.zarr", **options)
    assert summary["rows_predicted"] == 300 - 128  # it continued, not started over
    np.testing.assert_array_equal(
        _store(tmp_path / "resumed.zarr"), _store(tmp_path / "whole.zarr")
    )
    labels = zarr.open_array(str(tmp_path / "resumed.zarr" / "labels/cells/0"), mode="r")[:]
    whole = zarr.open_array(str(tmp_path / "whole.zarr" / "labels/cells/0"), mode="r")[:]
    np.testing.assert_array_equal(labels, whole)


def test_two_ranks_write_the_store_of_one_process(tmp_path):
    image = blobs(330, 150)
    source = write_ome_zarr(tmp_path / "in.zarr", image)
    net, tiler = tiny_net("valid"), Tiler(tile_size=92)
    options = dict(chunk=64, tiler=tiler, labels=False, progress=False)
    predict_to_zarr(net, source, tmp_path / "one.zarr", **options)
    for rank in (1, 0):  # ranks write disjoint chunk rows, in any order
        predict_to_zarr(net, source, tmp_path / "two.zarr", rank=rank, world_size=2, **options)
    np.testing.assert_array_equal(_store(tmp_path / "two.zarr"), _store(tmp_path / "one.zarr"))
    shares = [rank_share(1, 330, 64, r, 2) for r in (0, 1)]
    assert shares == [[(0, 0, 3)], [(0, 3, 6)]]  # 6 chunk rows, 3 each


def test_output_opens_with_ome_zarr_reader_with_axes_and_scale(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    source = write_ome_zarr(tmp_path / "in.zarr", blobs(200, 140), scale=(0.5, 0.25))
    predict_to_zarr(
        tiny_net("valid"), source, tmp_path / "out.zarr", chunk=64, tiler=Tiler(tile_size=92)
    )
    nodes = list(Reader(parse_url(str(tmp_path / "out.zarr")))())
    image = nodes[0]
    axes = [a["name"] for a in image.metadata["axes"]]
    assert axes == ["y", "x"]
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [0.5, 0.25]
    assert image.data[0].shape == (200, 140)
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels/cells/0"), mode="r")
    assert labels.shape == (200, 140) and labels[:].max() > 0


def test_store_of_another_network_is_refused(tmp_path):
    source = write_ome_zarr(tmp_path / "in.zarr", blobs(100, 100))
    options = dict(chunk=64, tiler=Tiler(tile_size=92), labels=False, progress=False)
    predict_to_zarr(tiny_net("valid"), source, tmp_path / "out.zarr", **options)
    with pytest.raises(StoreError, match="another network") as err:
        predict_to_zarr(tiny_net("valid", seed=1), source, tmp_path / "out.zarr", **options)
    assert "\n" not in str(err.value)


def test_bad_inputs_give_one_line_messages(tmp_path):
    image = blobs(64, 64)
    no_yx = zarr.open_group(str(tmp_path / "cx.zarr"), mode="w")
    no_yx.create_array("0", data=image)
    axes = [{"name": "c", "type": "channel"}, {"name": "x", "type": "space"}]
    no_yx.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": []}]}
    no_yx = tmp_path / "cx.zarr"
    with pytest.raises(DataError, match="expected an image with axes y and x"):
        open_image(no_yx)
    good = write_ome_zarr(tmp_path / "good.zarr", image, levels=2)
    assert open_image(good, level=1).shape == (32, 32)
    assert open_image(good, level=1).scale == (1.0, 0.5)
    with pytest.raises(DataError, match="level 3 does not exist; it has levels 0-1"):
        open_image(good, level=3)
    with pytest.raises(StoreError, match="chunk=4096") as err:
        predict_to_zarr(
            tiny_net("valid"),
            good,
            tmp_path / "out.zarr",
            chunk=4096,
            tiler=Tiler(tile_size=92, memory_gb=1e-4),
        )
    assert "\n" not in str(err.value)


def test_predict_entry_writes_a_zarr_from_a_tiff_checkpoint(
    tmp_path, compose_predict, save_checkpoint
):
    import tifffile

    from unet.errors import UserError
    from unet.predict.task import predict

    net = tiny_net("valid")
    ckpt = tmp_path / "tiny.ckpt"
    save_checkpoint(net, ckpt)
    image = blobs(150, 170)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64))  # read lazily, tile by tile

    def run(*overrides):
        settings = [f"ckpt_path={ckpt}", f"input={tmp_path / 'big.tif'}"]
        settings += [f"output={tmp_path / 'out.zarr'}", "zarr.chunk=64", "tiler.tile_size=92"]
        return predict(compose_predict([*settings, *overrides]))

    with pytest.raises(UserError, match="tta=flips8"):
        run("tta=flips8")
    run()
    got = _store(tmp_path / "out.zarr").astype(np.float32)
    expected = predict_image(net, image, Tiler(tile_size=92))[1]
    np.testing.assert_allclose(got, expected, rtol=0, atol=HALF_ULP + 1e-5)
    assert run()["rows_predicted"] == 0  # a rerun of a complete store has nothing to do


def _gloo_rank(rank: int, world_size: int, init_file: str, source: str, output: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        predict_to_zarr(
            tiny_net("valid"), source, output, chunk=64, tiler=Tiler(tile_size=92), progress=False
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_write_the_store_of_one_process(tmp_path):
    import torch.multiprocessing as mp

    source = write_ome_zarr(tmp_path / "in.zarr", blobs(200, 120))
    predict_to_zarr(
        tiny_net("valid"),
        source,
        tmp_path / "one.zarr",
        chunk=64,
        tiler=Tiler(tile_size=92),
        progress=False,
    )
    args = (2, str(tmp_path / "init"), str(source), str(tmp_path / "two.zarr"))
    mp.spawn(_gloo_rank, args=args, nprocs=2, join=True)
    for name in ("0", "labels/cells/0"):
        two = zarr.open_array(str(tmp_path / "two.zarr" / name), mode="r")[:]
        one = zarr.open_array(str(tmp_path / "one.zarr" / name), mode="r")[:]
        np.testing.assert_array_equal(two, one)
