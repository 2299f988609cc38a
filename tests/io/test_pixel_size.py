"""Pixel size end to end: read from inputs, written into every output, recorded with a model
(checkpoint, rdf.yaml), a predict override, and the warning on a mismatch."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
import zarr

from unet.config.checks import ConfigError
from unet.inference.checkpoint import load_trained
from unet.inference.formats.loading import load_for_prediction
from unet.io.pixel_size import (
    PixelSize,
    from_record,
    mismatch_warning,
    read_pixel_size,
    record_pixel_size,
)
from unet.model.fingerprint import record_probe
from unet.model.network import UNet
from unet.predict.task import predict

UM = "micrometer"


def blobs(h: int = 80, w: int = 90) -> np.ndarray:
    """uint16 gray values with bright round blobs (objects for labels and the table)."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = 100 + 800 * ((np.sin(yy / 6.0) * np.cos(xx / 7.0)) > 0.3)
    return (image + np.random.default_rng(0).normal(0, 20, (h, w))).astype(np.uint16)


def imagej_tiff(path: Path, size: float, unit: str = "um", image=None) -> Path:
    image = blobs() if image is None else image
    resolution = (1 / size, 1 / size)
    tifffile.imwrite(path, image, imagej=True, resolution=resolution, metadata={"unit": unit})
    return path


def ome_zarr(path: Path, scale=(0.5, 0.25)) -> Path:
    """An OME-Zarr 0.5 image with micrometer axes, written by hand as the spec lays it out."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    transform = {"type": "scale", "scale": list(scale)}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": UM} for a in "yx"],
                "datasets": [{"path": "0", "coordinateTransformations": [transform]}],
            }
        ],
    }
    image = blobs()
    group.create_array("0", shape=image.shape, chunks=(64, 64), dtype=image.dtype)[:] = image
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny same-padded net whose training data had 0.004 um pixels."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, padding="same", dropout=0.0)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    checkpoint = {"state_dict": state, "net_config": net.config.to_dict()}
    checkpoint["net_probe"] = record_probe(net)  # as training stores it
    record_pixel_size(checkpoint, PixelSize(0.004, 0.004, UM))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(checkpoint, path)
    return path


def run(compose_predict, ckpt, input, output, *extra) -> dict:
    settings = [f"ckpt_path={ckpt}", f"input={input}", f"output={output}", "measurements=true"]
    settings += ["tiler.tile_size=64", "overlays=false", "postprocess.threshold=0.5"]
    if str(output).endswith(".zarr"):
        settings.append("zarr.chunk=64")
    return predict(compose_predict([*settings, *extra]))


def table(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_table_in(rows: list[dict], size: PixelSize) -> None:
    assert rows, "the test image should give objects"
    for row in rows:
        assert row["unit"] == size.unit
        assert float(row["area"]) == pytest.approx(float(row["area_px"]) * size.y * size.x)
        assert float(row["centroid_x"]) == pytest.approx(float(row["centroid_x_px"]) * size.x)


def store_scale(path: Path) -> tuple[list, list]:
    """(scale, axis units) of a store's probability and of its labels."""
    found = []
    for group in (
        zarr.open_group(str(path), mode="r"),
        zarr.open_group(str(path / "labels/cells")),
    ):
        meta = group.attrs["ome"]["multiscales"][0]
        scale = meta["datasets"][0]["coordinateTransformations"][0]["scale"]
        found.append((scale, [a.get("unit") for a in meta["axes"]]))
    assert found[0] == found[1]
    return found[0]


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])  # ImageJ escapes the micro sign
def test_imagej_tiff_sizes_are_read_in_every_spelling(unit, tmp_path):
    path = imagej_tiff(tmp_path / "a.tif", 0.004, unit)
    assert read_pixel_size(path) == PixelSize(0.004, 0.004, UM)


def test_ome_tiff_and_unknown_inputs(tmp_path):
    meta = {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "nm"}
    meta["PhysicalSizeYUnit"] = "nm"
    tifffile.imwrite(tmp_path / "ome.tif", blobs(), ome=True, metadata=meta)
    assert read_pixel_size(tmp_path / "ome.tif") == PixelSize(0.5, 0.25, "nanometer")
    tifffile.imwrite(tmp_path / "plain.tif", blobs())
    assert read_pixel_size(tmp_path / "plain.tif") is None  # no resolution written
    imagej_tiff(tmp_path / "px.tif", 2.0, unit="pixel")
    assert read_pixel_size(tmp_path / "px.tif") is None  # a unit that is no length


def test_folder_output_carries_the_imagej_size_everywhere(ckpt, compose_predict, tmp_path):
    image = imagej_tiff(tmp_path / "cells.tif", 0.004)
    run(compose_predict, ckpt, image, tmp_path / "out")
    size = PixelSize(0.004, 0.004, UM)
    assert read_pixel_size(tmp_path / "out" / "probabilities.tif") == size
    assert read_pixel_size(tmp_path / "out" / "labels" / "cells.tif") == size
    assert_table_in(table(tmp_path / "out" / "measurements.csv"), size)


def test_store_from_an_ome_zarr_keeps_its_scale_and_unit(ckpt, compose_predict, tmp_path):
    source = ome_zarr(tmp_path / "in.zarr")
    run(compose_predict, ckpt, source, tmp_path / "out.zarr")
    assert store_scale(tmp_path / "out.zarr") == ([0.5, 0.25], [UM, UM])
    assert_table_in(table(tmp_path / "out.zarr" / "measurements.csv"), PixelSize(0.5, 0.25, UM))


def test_store_from_an_imagej_tiff_gets_its_size(ckpt, compose_predict, tmp_path):
    image = imagej_tiff(tmp_path / "cells.tif", 0.004)
    run(compose_predict, ckpt, image, tmp_path / "out.zarr")
    assert store_scale(tmp_path / "out.zarr") == ([0.004, 0.004], [UM, UM])


def test_the_pixel_size_setting_wins(ckpt, compose_predict, tmp_path):
    image = imagej_tiff(tmp_path / "cells.tif", 0.004)
    run(compose_predict, ckpt, image, tmp_path / "out", "pixel_size=[0.2,0.3]")
    size = PixelSize(0.2, 0.3, UM)
    assert read_pixel_size(tmp_path / "out" / "probabilities.tif") == size
    assert read_pixel_size(tmp_path / "out" / "labels" / "cells.tif") == size
    assert_table_in(table(tmp_path / "out" / "measurements.csv"), size)
    source = ome_zarr(tmp_path / "in.zarr")
    run(compose_predict, ckpt, source, tmp_path / "out.zarr", "pixel_size=[0.2,0.3]")
    assert store_scale(tmp_path / "out.zarr") == ([0.2, 0.3], [UM, UM])
    with pytest.raises(ConfigError, match=r"pixel_size=\[0.2\]: expected null or \[y, x\]"):
        run(compose_predict, ckpt, image, tmp_path / "other", "pixel_size=[0.2]")


@pytest.mark.parametrize("output", ["out", "out.zarr"])
def test_a_2x_input_warns_and_a_matching_one_does_not(
    output, ckpt, compose_predict, tmp_path, capsys
):
    run(compose_predict, ckpt, imagej_tiff(tmp_path / "same.tif", 0.004), tmp_path / "a" / output)
    assert "pixel size" not in capsys.readouterr().out
    run(compose_predict, ckpt, imagej_tiff(tmp_path / "big.tif", 0.008), tmp_path / "b" / output)
    lines = [line for line in capsys.readouterr().out.splitlines() if "pixel size" in line]
    assert lines == [
        f"warning: {tmp_path / 'big.tif'}: pixel size 0.008 um differs from the training "
        "data's 0.004 um by 2x; the network sees objects at another scale -- resample the "
        "image or fine-tune"
    ]


def test_mismatch_rule():
    trained = PixelSize(0.19, 0.19, UM)
    assert "by 1.9x" in mismatch_warning("a.tif", PixelSize(0.1, 0.1, UM), trained)
    assert mismatch_warning("a.tif", PixelSize(0.2, 0.2, UM), trained) is None  # within 1.25x
    assert mismatch_warning("a.tif", PixelSize(190, 190, "nanometer"), trained) is None
    assert mismatch_warning("a.tif", PixelSize(0.19, 0.5, UM), trained) is not None  # x only
    assert mismatch_warning("a.tif", None, trained) is None
    assert mismatch_warning("a.tif", PixelSize(), trained) is None  # 1 pixel: unknown
    assert mismatch_warning("a.tif", PixelSize(0.1, 0.1, UM), None) is None


def test_training_data_size_reaches_checkpoint_and_rdf_yaml(data_dir, compose_export, tmp_path):
    """A folder data set of ImageJ TIFFs at 0.5 um: the module's checkpoint hook records it,
    load_trained reads it, and the exported rdf.yaml's space axes carry it."""
    from unet.data.folder import FolderDataModule
    from unet.export.task import export
    from unet.training.module import SegmentationModule

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        image = np.roll(blobs(), 9 * i, axis=1)
        imagej_tiff(tmp_path / "data" / "images" / f"f{i}.tif", 0.5, image=image)
        tifffile.imwrite(tmp_path / "data" / "masks" / f"f{i}.tif", (image > 500).astype(np.uint8))
    data = FolderDataModule(str(tmp_path / "data"), tile_size=64, num_workers=0, summary=False)
    data.setup()
    assert data.pixel_size == PixelSize(0.5, 0.5, UM)

    net = UNet(base_channels=2, depth=2, padding="same", dropout=0.0)
    module = SegmentationModule(net, optimizer=torch.optim.Adam)
    module._trainer = SimpleNamespace(datamodule=data, loggers=[])  # what on_save_checkpoint reads
    checkpoint = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["pixel_size"] == {"y": 0.5, "x": 0.5, "unit": UM}
    torch.save(checkpoint, tmp_path / "model.ckpt")
    assert load_trained(tmp_path / "model.ckpt").pixel_size == PixelSize(0.5, 0.5, UM)

    image = tmp_path / "data" / "images" / "f0.tif"
    settings = [f"ckpt_path={tmp_path / 'model.ckpt'}", "format=bioimageio", f"image={image}"]
    settings += [f"output={tmp_path / 'model.zip'}", 'authors=["Test Author"]']
    export(compose_export([*settings, "training_data=isbi"]))
    from bioimageio.spec import load_description

    descr = load_description(tmp_path / "model.zip")
    for tensor in (*descr.inputs, *descr.outputs):
        space = {str(a.id): a for a in tensor.axes if a.type == "space"}
        assert [(space[a].scale, space[a].unit) for a in "yx"] == [(0.5, UM), (0.5, UM)]
    assert from_record(descr.config.unet["pixel_size"]) == PixelSize(0.5, 0.5, UM)
    assert load_for_prediction(tmp_path / "model.zip").pixel_size == PixelSize(0.5, 0.5, UM)


def test_ranks_route_and_class_images_carry_the_size(ckpt, compose_predict, tmp_path):
    # the trainer (ranks) route of a folder output writes the same resolutions
    image = imagej_tiff(tmp_path / "cells.tif", 0.004)
    settings = [f"ckpt_path={ckpt}", f"input={image}", f"output={tmp_path / 'ranks'}"]
    settings += ["tiler.tile_size=64", "overlays=false", "trainer=cpu", "progress=false"]
    predict(compose_predict(settings))
    size = PixelSize(0.004, 0.004, UM)
    assert read_pixel_size(tmp_path / "ranks" / "probabilities.tif") == size
    assert read_pixel_size(tmp_path / "ranks" / "labels" / "cells.tif") == size
    # the class images of a K-class network
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, padding="same", dropout=0.0, num_classes=3)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    checkpoint = {"state_dict": state, "net_config": net.config.to_dict()}
    torch.save(checkpoint | {"net_probe": record_probe(net)}, tmp_path / "k3.ckpt")
    run(compose_predict, tmp_path / "k3.ckpt", image, tmp_path / "k3")
    assert read_pixel_size(tmp_path / "k3" / "classes" / "cells.tif") == size
