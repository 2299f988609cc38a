"""Stacks of sections streamed into one OME-Zarr store: TIFF stacks, folders of frames and
OME-Zarr images with a z or t axis (README, "Large images")."""

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given
from hypothesis import strategies as st

zarr = pytest.importorskip("zarr")
ome_zarr_writer = pytest.importorskip("ome_zarr.writer")

from PIL import Image  # noqa: E402

import unet.predict.zarr.section_labels as section_labels  # noqa: E402
from unet.data.readers import DataError  # noqa: E402
from unet.inference.image import predict_image  # noqa: E402
from unet.inference.postprocess import PostProcessing  # noqa: E402
from unet.inference.tiler import Tiler  # noqa: E402
from unet.model.network import UNet  # noqa: E402
from unet.predict.zarr.bands import rank_share  # noqa: E402
from unet.predict.zarr.route import predict_to_zarr  # noqa: E402
from unet.predict.zarr.source import open_image, open_sections  # noqa: E402
from unet.predict.zarr.store import StoreError  # noqa: E402

HALF_ULP = 2**-11  # float16 spacing at 1 is 2**-10
SHAPE = (150, 130)  # 3 chunk rows of 64 per section
OPTIONS = dict(chunk=64, tiler=Tiler(tile_size=92), progress=False)
FILLED = PostProcessing(min_area=5, fill_holes=True)


def tiny_net(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=2, depth=2, padding="valid", dropout=0.0).eval()


def blobs(seed: int, shape=SHAPE) -> np.ndarray:
    """uint16 sections, each with its own brightness (so each has its own statistics)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    image = 1000 + 200 * seed + 300 * np.sin(yy / (17.0 + seed)) * np.cos(xx / 23.0)
    return (image + rng.normal(0, 40, shape)).astype(np.uint16)


def stack(n: int = 3) -> np.ndarray:
    return np.stack([blobs(seed) for seed in range(n)])  # (Z, H, W)


def write_stack_zarr(path, images, axis="z", scale=(2.0, 0.5, 0.25)):
    """An OME-Zarr (axis, y, x) input written by ome-zarr's own writer."""
    kind = "time" if axis == "t" else "space"
    unit = {"t": "second"}.get(axis, "micrometer")
    axes = [{"name": axis, "type": kind, "unit": unit}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    group = zarr.open_group(str(path), mode="w")
    ome_zarr_writer.write_image(
        images,
        group,
        scale_factors=[],
        axes=axes,
        scale=dict(zip((axis, "y", "x"), scale, strict=True)),
        storage_options={"chunks": (1, 64, 64)},
    )
    ome = dict(group.attrs["ome"])  # this writer drops the units: put them back
    ome["multiscales"][0]["axes"] = axes
    group.attrs["ome"] = ome
    return path


def read(path, name="0"):
    return zarr.open_array(str(path / name), mode="r")[:]


def test_tiff_stack_equals_each_section_predicted_alone(tmp_path):
    images = stack()
    tifffile.imwrite(tmp_path / "stack.tif", images, photometric="minisblack")  # 3 pages
    net = tiny_net()
    summary = predict_to_zarr(net, tmp_path / "stack.tif", tmp_path / "out.zarr", **OPTIONS)
    assert summary["shape"] == (3, *SHAPE) and summary["sections"] == 3
    got, labels = read(tmp_path / "out.zarr"), read(tmp_path / "out.zarr", "labels/cells/0")
    count = 0
    for z, image in enumerate(images):
        # each section standardised with its own statistics, as predict.py does per frame
        expected = predict_image(net, image, OPTIONS["tiler"])[1]
        np.testing.assert_allclose(got[z].astype(np.float32), expected, atol=HALF_ULP + 1e-5)
        # and its labels are those of the section streamed alone into a 2D store
        tifffile.imwrite(tmp_path / f"section{z}.tif", image)
        alone = tmp_path / f"section{z}.zarr"
        count += predict_to_zarr(net, tmp_path / f"section{z}.tif", alone, **OPTIONS)["objects"]
        np.testing.assert_array_equal(labels[z], read(alone, "labels/cells/0"))
    assert summary["objects"] == count > 3  # ids restart in each section
    assert all(labels[z].max() == len(np.unique(labels[z])) - 1 for z in range(3))


def test_folder_ome_zarr_and_tiff_stack_write_one_store(tmp_path):
    images = stack()
    net = tiny_net()
    tifffile.imwrite(tmp_path / "stack.tif", images, photometric="minisblack")
    folder = tmp_path / "frames"
    folder.mkdir()
    for z, image in enumerate(images):  # TIFF and PNG frames, sorted by name
        if z == 1:
            Image.fromarray(image).save(folder / f"s{z:02d}.png")
        else:
            tifffile.imwrite(folder / f"s{z:02d}.tif", image, tile=(64, 64))
    (folder / "notes.txt").write_text("not an image")
    write_stack_zarr(tmp_path / "stack.ome.zarr", images)
    stores = {}
    for name, source in [
        ("tiff", tmp_path / "stack.tif"),
        ("folder", folder),
        ("zarr", tmp_path / "stack.ome.zarr"),
    ]:
        stores[name] = tmp_path / f"{name}.zarr"
        predict_to_zarr(net, source, stores[name], **OPTIONS)
    for key in ("0", "labels/cells/0"):
        np.testing.assert_array_equal(read(stores["folder"], key), read(stores["tiff"], key))
        np.testing.assert_array_equal(read(stores["zarr"], key), read(stores["tiff"], key))
    names = zarr.open_group(str(stores["folder"]), mode="r").attrs["unet"]["sections"]
    assert names == ["s00", "s01", "s02"]


@pytest.mark.parametrize("axis", ["z", "t"])
def test_output_opens_with_ome_zarr_reader_with_the_stack_axis(tmp_path, axis):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    source = write_stack_zarr(tmp_path / "in.zarr", stack(2), axis=axis, scale=(3.0, 0.5, 0.25))
    predict_to_zarr(tiny_net(), source, tmp_path / "out.zarr", **OPTIONS)
    nodes = list(Reader(parse_url(str(tmp_path / "out.zarr")))())
    image = nodes[0]
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == [axis, "y", "x"]
    assert axes[0]["type"] == ("time" if axis == "t" else "space")
    assert axes[0]["unit"] == ("second" if axis == "t" else "micrometer")
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [3.0, 0.5, 0.25]
    assert image.data[0].shape == (2, *SHAPE)
    labels = next(iter(Reader(parse_url(str(tmp_path / "out.zarr" / "labels" / "cells")))()))
    assert [a["name"] for a in labels.metadata["axes"]] == [axis, "y", "x"]
    assert labels.data[0].shape == (2, *SHAPE) and labels.data[0].dtype == np.uint32


@given(
    sections=st.integers(1, 6),
    height=st.integers(1, 400),
    chunk=st.sampled_from([16, 64, 100]),
    world_size=st.integers(1, 7),
)
def test_rank_shares_cover_every_chunk_row_once_in_order(sections, height, chunk, world_size):
    per = -(-height // chunk)
    shares = [rank_share(sections, height, chunk, r, world_size) for r in range(world_size)]
    rows = [(s, k) for share in shares for s, a, b in share for k in range(a, b)]
    assert rows == [(s, k) for s in range(sections) for k in range(per)]  # once, in order
    sizes = [sum(b - a for _, a, b in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_two_ranks_write_the_store_of_one_process(tmp_path):
    # 3 sections of 3 chunk rows: rank 0 gets 4, rank 1 gets 5
    tifffile.imwrite(tmp_path / "stack.tif", stack(), photometric="minisblack")
    net, source = tiny_net(), tmp_path / "stack.tif"
    one = predict_to_zarr(net, source, tmp_path / "one.zarr", postprocess=FILLED, **OPTIONS)
    two = tmp_path / "two.zarr"
    # ranks without a process group: first the rows of both (rank 1 first, any order
    # works), then the labels (section s by rank s mod 2; rank 0 last, as after a barrier)
    shares = {}
    for rank in (1, 0):
        summary = predict_to_zarr(
            net, source, two, rank=rank, world_size=2, labels=False, **OPTIONS
        )
        shares[rank] = summary["rows_predicted"]
    assert shares == {0: 150 + 64, 1: 150 - 64 + 150}  # section 1 is split
    for rank in (1, 0):
        summary = predict_to_zarr(
            net, source, two, postprocess=FILLED, rank=rank, world_size=2, **OPTIONS
        )
        assert summary["rows_predicted"] == 0
    assert summary["objects"] == one["objects"]
    for key in ("0", "labels/cells/0"):
        np.testing.assert_array_equal(read(two, key), read(tmp_path / "one.zarr", key))


class Killed(Exception):
    pass


def test_killed_stack_resumes_and_labels_are_not_redone(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "stack.tif", stack(), photometric="minisblack")
    net, source = tiny_net(), tmp_path / "stack.tif"
    options = dict(OPTIONS, probability_dtype="uint8")
    passes = []
    predict_to_zarr(net, source, tmp_path / "whole.zarr", on_batch=passes.append, **options)
    calls = []

    def kill_in_section_1(n):
        calls.append(n)
        if len(calls) == len(passes) // 2:  # section 0 is written, section 1 is not
            raise Killed

    with pytest.raises(Killed):
        predict_to_zarr(
            net, source, tmp_path / "resumed.zarr", on_batch=kill_in_section_1, **options
        )
    summary = predict_to_zarr(net, source, tmp_path / "resumed.zarr", **options)
    assert 150 < summary["rows_predicted"] < 3 * 150  # it continued, not started over
    for key in ("0", "labels/cells/0"):
        resumed, whole = read(tmp_path / "resumed.zarr", key), read(tmp_path / "whole.zarr", key)
        np.testing.assert_array_equal(resumed, whole)

    labelled = []
    original = section_labels.write_labels
    monkeypatch.setattr(
        section_labels,
        "write_labels",
        lambda plane, post: labelled.append(plane.index) or original(plane, post),
    )
    again = predict_to_zarr(net, source, tmp_path / "resumed.zarr", **options)
    assert again["rows_predicted"] == 0 and labelled == []  # nothing to do
    assert again["objects"] == summary["objects"]

    fewer = predict_to_zarr(
        net, source, tmp_path / "resumed.zarr", postprocess=PostProcessing(min_area=50), **options
    )
    assert labelled == [0, 1, 2] and fewer["objects"] < summary["objects"]


def test_bad_stacks_give_one_line_messages(tmp_path):
    images = stack(2)
    rgb = zarr.open_group(str(tmp_path / "rgb.zarr"), mode="w")
    ome_zarr_writer.write_image(np.stack([images[0]] * 3), rgb, scale_factors=[], axes="cyx")
    tz = zarr.open_group(str(tmp_path / "tz.zarr"), mode="w")
    ome_zarr_writer.write_image(np.stack([images] * 2), tz, scale_factors=[], axes="tzyx")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a.tif", images[0])
    tifffile.imwrite(mixed / "b.tif", images[0][:100])
    cases = [
        (tmp_path / "rgb.zarr", "one gray channel: expected a channel axis of length 1"),
        (tmp_path / "tz.zarr", "expected at most one axis besides y, x and channels longer than 1"),
        (mixed, "frames of 2 sizes (100x130, 150x130)"),
    ]
    for source, message in cases:
        with pytest.raises(DataError) as err:
            open_sections(source)
        assert message in str(err.value) and "\n" not in str(err.value)
    tifffile.imwrite(tmp_path / "stack.tif", images, photometric="minisblack")
    with pytest.raises(DataError, match=r"found 2 section\(s\) along z; expected one 2D image"):
        open_image(tmp_path / "stack.tif")

    # a store of one image is not continued with a stack, nor one stack with other sections
    net = tiny_net()
    tifffile.imwrite(tmp_path / "one.tif", images[0])
    predict_to_zarr(net, tmp_path / "one.tif", tmp_path / "out.zarr", **OPTIONS)
    with pytest.raises(StoreError, match="shape=") as err:
        predict_to_zarr(net, tmp_path / "stack.tif", tmp_path / "out.zarr", **OPTIONS)
    assert "\n" not in str(err.value)
    folder = tmp_path / "frames"
    folder.mkdir()
    for z in range(2):
        tifffile.imwrite(folder / f"a{z}.tif", images[z])
    predict_to_zarr(net, folder, tmp_path / "frames.zarr", labels=False, **OPTIONS)
    (folder / "a1.tif").rename(folder / "b1.tif")
    with pytest.raises(StoreError, match=r"sections=\['a0', 'a1'\], this run has \['a0', 'b1'\]"):
        predict_to_zarr(net, folder, tmp_path / "frames.zarr", labels=False, **OPTIONS)


def test_predict_entry_streams_a_stack(tmp_path, compose_predict, save_checkpoint):
    from unet.predict.task import predict

    net = tiny_net()
    ckpt = tmp_path / "tiny.ckpt"
    save_checkpoint(net, ckpt)
    tifffile.imwrite(tmp_path / "stack.tif", stack(2), photometric="minisblack")
    settings = [f"ckpt_path={ckpt}", f"input={tmp_path / 'stack.tif'}", "progress=false"]
    settings += [f"output={tmp_path / 'out.zarr'}", "zarr.chunk=64", "tiler.tile_size=92"]
    summary = predict(compose_predict(settings))
    assert summary["shape"] == (2, *SHAPE) and summary["rows_predicted"] == 300
    np.testing.assert_allclose(
        read(tmp_path / "out.zarr")[1].astype(np.float32),
        predict_image(net, stack(2)[1], Tiler(tile_size=92))[1],
        atol=HALF_ULP + 1e-5,
    )


def test_nan_pixels_are_refused_naming_the_section(tmp_path, compose_predict, save_checkpoint):
    from unet.predict.request import PredictionSettingError
    from unet.predict.task import predict

    images = stack(2).astype(np.float32)
    images[1, 10, 20] = np.nan
    tifffile.imwrite(tmp_path / "stack.tif", images, photometric="minisblack")
    with pytest.raises(DataError, match="section stack_001: NaN or infinite pixels") as err:
        predict_to_zarr(tiny_net(), tmp_path / "stack.tif", tmp_path / "out.zarr", **OPTIONS)
    assert "\n" not in str(err.value)
    ckpt = tmp_path / "tiny.ckpt"
    net = tiny_net()
    save_checkpoint(net, ckpt)
    settings = [f"ckpt_path={ckpt}", f"input={tmp_path / 'stack.tif'}", "nonfinite=zero"]
    with pytest.raises(PredictionSettingError, match="nonfinite=zero: a .zarr output refuses"):
        predict(compose_predict([*settings, f"output={tmp_path / 'new.zarr'}"]))


@pytest.mark.parametrize("regrow", ["distance", "probability"])
def test_regrow_labels_each_section_whole_from_the_stored_map(tmp_path, regrow):
    # the settings our recipes choose at validation; not chunk-local, so a section that fits
    # in memory is post-processed whole, from the stored (float16) probability
    tifffile.imwrite(tmp_path / "stack.tif", stack(), photometric="minisblack")
    net = tiny_net()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # sharper probabilities than a random net's, for some objects
        last.weight *= 40
        last.bias *= 40
    post = PostProcessing(
        threshold=0.6, min_area=4, regrow=regrow, grow_threshold=0.55, border_min_area=10
    )
    summary = predict_to_zarr(
        net, tmp_path / "stack.tif", tmp_path / "out.zarr", postprocess=post, **OPTIONS
    )
    stored = read(tmp_path / "out.zarr").astype(np.float32)
    labels = read(tmp_path / "out.zarr", "labels/cells/0")
    expected = [post(section) for section in stored]
    for got, want in zip(labels, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert summary["objects"] == sum(int(e.max()) for e in expected) > 3


def test_whole_section_settings_are_refused_when_a_section_does_not_fit(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "stack.tif", stack(2), photometric="minisblack")
    monkeypatch.setattr(section_labels, "available_memory_bytes", lambda device: 2**20)
    post = PostProcessing(regrow="distance")
    with pytest.raises(StoreError, match="regrow='distance' labels a whole section") as err:
        predict_to_zarr(
            tiny_net(), tmp_path / "stack.tif", tmp_path / "out.zarr", postprocess=post, **OPTIONS
        )
    assert "\n" not in str(err.value) and not (tmp_path / "out.zarr").exists()
    summary = predict_to_zarr(  # chunk-wise settings need no whole section
        tiny_net(), tmp_path / "stack.tif", tmp_path / "out.zarr", postprocess=FILLED, **OPTIONS
    )
    assert summary["objects"] > 0


def rgb_net(num_classes: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(
        in_channels=3, num_classes=num_classes, base_channels=2, depth=2, padding="valid"
    ).eval()


def rgb_stack(n: int = 2) -> np.ndarray:
    """(Z, 3, H, W) uint8 colour sections, channels of different brightness."""
    gray = np.stack([blobs(seed) for seed in range(n)]).astype(np.float32)
    channels = [(gray - 700) / (4 + k) + 40 * k for k in range(3)]
    return np.clip(np.stack(channels, axis=1), 0, 255).astype(np.uint8)


def test_colour_sections_stream_as_predict_image_reads_them(tmp_path):
    images = rgb_stack()  # (Z, C, H, W)
    net = rgb_net()
    group = zarr.open_group(str(tmp_path / "czyx.zarr"), mode="w")  # NGFF: c before z
    ome_zarr_writer.write_image(np.moveaxis(images, 1, 0), group, scale_factors=[], axes="czyx")
    folder = tmp_path / "frames"
    folder.mkdir()
    for z, image in enumerate(images):  # RGB PNG frames, (H, W, 3) on disk
        Image.fromarray(np.moveaxis(image, 0, -1)).save(folder / f"f{z}.png")
    tifffile.imwrite(tmp_path / "one.tif", np.moveaxis(images[1], 0, -1), photometric="rgb")
    for name, source in [("zarr", tmp_path / "czyx.zarr"), ("folder", folder)]:
        predict_to_zarr(net, source, tmp_path / f"{name}.zarr", **OPTIONS)
    got = read(tmp_path / "zarr.zarr")
    np.testing.assert_array_equal(read(tmp_path / "folder.zarr"), got)
    for z, image in enumerate(images):  # standardised per channel, as in training
        expected = predict_image(net, image, OPTIONS["tiler"])[1]
        np.testing.assert_allclose(got[z].astype(np.float32), expected, atol=HALF_ULP + 1e-5)
    predict_to_zarr(net, tmp_path / "one.tif", tmp_path / "one.zarr", **OPTIONS)  # YXS
    np.testing.assert_array_equal(read(tmp_path / "one.zarr"), got[1])


def test_k_class_networks_store_the_probability_their_labels_use(tmp_path):
    from unet.labels import foreground_probability

    tifffile.imwrite(tmp_path / "stack.tif", stack(2), photometric="minisblack")
    torch.manual_seed(0)
    net = UNet(num_classes=3, base_channels=2, depth=2, padding="valid").eval()
    for instance_class, name in [(None, "foreground.zarr"), (2, "class2.zarr")]:
        predict_to_zarr(
            net,
            tmp_path / "stack.tif",
            tmp_path / name,
            instance_class=instance_class,
            **OPTIONS,
        )
        for z, image in enumerate(stack(2)):
            probabilities = predict_image(net, image, OPTIONS["tiler"])  # (K, H, W)
            expected = foreground_probability(probabilities, instance_class)
            got = read(tmp_path / name)[z].astype(np.float32)
            np.testing.assert_allclose(got, expected, atol=HALF_ULP + 1e-5)
    record = zarr.open_group(str(tmp_path / "class2.zarr"), mode="r").attrs["unet"]
    assert record["probability"] == "class 2"
    with pytest.raises(StoreError, match="probability='class 2', this run has 'class 1'"):
        predict_to_zarr(
            net, tmp_path / "stack.tif", tmp_path / "class2.zarr", instance_class=1, **OPTIONS
        )


def test_channel_mismatches_give_one_line_messages(tmp_path):
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, blobs(0))
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    ome_zarr_writer.write_image(rgb_stack(1)[0, :2], two, scale_factors=[], axes="cyx")
    for source in (gray, tmp_path / "two.zarr"):
        with pytest.raises(
            DataError, match="takes 3 channels: expected a channel axis of length 3"
        ) as err:
            predict_to_zarr(rgb_net(), source, tmp_path / "out.zarr", **OPTIONS)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="instance_class=3: expected a foreground class"):
        predict_to_zarr(tiny_net(), gray, tmp_path / "out.zarr", instance_class=3, **OPTIONS)


def test_float32_store_keeps_the_in_memory_probability(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", stack(2), photometric="minisblack")
    net = tiny_net()
    predict_to_zarr(
        net, tmp_path / "stack.tif", tmp_path / "out.zarr", probability_dtype="float32", **OPTIONS
    )
    got = read(tmp_path / "out.zarr")
    assert got.dtype == np.float32
    for z, image in enumerate(stack(2)):
        expected = predict_image(net, image, OPTIONS["tiler"])[1]
        np.testing.assert_allclose(got[z], expected, rtol=1e-5, atol=1e-5)
