"""Export (unet.export, src/export.py): TorchScript, ONNX, bioimage.io, and back through predict.

One tiny net, trained for a few steps on a real ISBI crop, is exported once to every format
(module fixture); the tests compare the exported weights with PyTorch, validate the package,
and predict through each exported file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet.config.checks import ConfigError
from unet.config.cli import run_or_exit
from unet.errors import OutputExistsError
from unet.export.task import ExportSettingError, export
from unet.inference.checkpoint import CheckpointError, load_trained
from unet.inference.formats.check import largest_difference
from unet.inference.formats.loading import ExportedNet, load_for_prediction
from unet.inference.formats.onnx import onnx_session, run_session
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.torchscript import read_torchscript
from unet.inference.image import predict_image
from unet.inference.tiler import Tiler
from unet.model import shapes
from unet.model.network import UNet

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnxruntime")

POSTPROCESS = {
    "threshold": 0.7,
    "min_area": 5,
    "fill_holes": True,
    "regrow": "none",
    "grow_threshold": 0.5,
    "border_min_area": 0,
}


@pytest.fixture(scope="module")
def isbi_crop(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """(image, cell mask) 96x120 crops of the first ISBI training slice."""
    isbi = data_dir / "isbi2012"
    image = tifffile.imread(isbi / "train-volume.tif", key=0)[:96, :120]
    labels = tifffile.imread(isbi / "train-labels.tif", key=0)[:96, :120] > 0
    return image, labels


@pytest.fixture(scope="module")
def ckpt(isbi_crop, tmp_path_factory, save_checkpoint) -> Path:
    """A depth-2, 2-channel U-Net after 15 Adam steps on a real crop, saved as training
    saves it (weights under ``net.``, architecture, validated post-processing)."""
    image, labels = isbi_crop
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, dropout=0.0, batch_norm=True)
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    x = (x - x.mean()) / x.std()
    out = net.output_shape(image.shape)
    top, left = [(s - o) // 2 for s, o in zip(image.shape, out, strict=True)]
    target = torch.from_numpy(labels[top : top + out[0], left : left + out[1]]).long()[None]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), target).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    chosen_on = {"split": "val", "score": "labels_rand_error", "value": 0.25}
    save_checkpoint(net.eval(), path, postprocess=POSTPROCESS, postprocess_chosen_on=chosen_on)
    return path


@pytest.fixture(scope="module")
def exported(ckpt, isbi_crop, compose_export, tmp_path_factory) -> dict[str, Path]:
    """The checkpoint exported as a package (with ONNX weights), an ONNX and a .pt file."""
    folder = tmp_path_factory.mktemp("exported")
    image = folder / "image.tif"
    tifffile.imwrite(image, isbi_crop[0])
    files = {"bioimageio": folder / "model.zip", "onnx": folder / "model.onnx"}
    files["torchscript"] = folder / "model.pt"
    package = ["training_data=isbi", f"image={image}", "onnx=true", 'authors=["Test Author"]']
    for fmt, path in files.items():
        extra = package if fmt == "bioimageio" else []
        export(compose_export([f"ckpt_path={ckpt}", f"format={fmt}", f"output={path}", *extra]))
    return files


def test_size_rule_lists_every_valid_size():
    for depth in range(1, 6):
        for padding in shapes.PADDINGS:
            smallest, step = shapes.size_rule(depth, padding)
            valid = [s for s in range(1, smallest + 6 * step) if shapes.is_valid_input_size(
                s, depth, padding)]  # fmt: skip
            assert valid == list(range(smallest, smallest + 6 * step, step))
    assert shapes.size_rule(4, "valid") == (188, 16)


def test_onnx_and_torchscript_equal_pytorch_at_three_sizes(ckpt, exported):
    model = ProbabilityUNet.wrap(load_trained(ckpt).net)
    smallest, step = shapes.size_rule(2, "valid")
    # not the sizes the export checked itself; the last one is not square
    sizes = [(smallest + 3 * step,) * 2, (smallest + 7 * step,) * 2, (smallest + step, 200)]
    session = onnx_session(str(exported["onnx"]))
    traced, record = read_torchscript(str(exported["torchscript"]))
    for run in (
        lambda x: run_session(session, x),
        lambda x: traced(torch.from_numpy(x)).detach().numpy(),
    ):
        assert largest_difference(run, model, sizes) <= 1e-4
    assert record["postprocess"] == POSTPROCESS
    # and the comparison can fail: another net's weights differ
    torch.manual_seed(1)
    other = ProbabilityUNet.wrap(UNet(base_channels=2, depth=2, dropout=0.0, batch_norm=True))
    assert largest_difference(lambda x: run_session(session, x), other, sizes) > 1e-2


def test_package_validates_and_states_the_tiling_rule(exported):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_model_description(exported["bioimageio"], perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.format_version.startswith("0.5")
    assert {"torchscript", "pytorch_state_dict", "onnx"} <= set(descr.weights.available_formats)
    (inputs,), (outputs,) = descr.inputs, descr.outputs
    y = inputs.axes[2]
    # any size from the minimum on, output of the input's size (unet.inference.formats.any_size; the
    # bare network's valid-size rule is tests/export/test_zoo_package.py's any_size=false case)
    assert (y.size.min, y.size.step) == (44, 1)
    assert outputs.axes[2].size.offset == 0 and outputs.axes[2].halo == 20
    # per-image standardisation as in training (the spec adds dtype steps around it)
    (standardise,) = [p for p in inputs.preprocessing if p.id == "zero_mean_unit_variance"]
    assert list(map(str, standardise.kwargs.axes)) == ["y", "x"]  # per channel
    assert "10.1007/978-3-319-24574-4_28" in {str(c.doi) for c in descr.cite}
    assert descr.config.unet["postprocess"]["threshold"] == POSTPROCESS["threshold"]
    with zipfile.ZipFile(exported["bioimageio"]) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names


def test_bioimageio_core_reproduces_the_test_outputs(exported):
    from bioimageio.core import test_model

    summary = test_model(exported["bioimageio"], weight_format="torchscript")
    assert summary.status == "passed", summary.format()


@pytest.mark.slow
def test_bioimageio_core_passes_every_weight_format(exported):
    from bioimageio.core import test_model

    summary = test_model(exported["bioimageio"])
    assert summary.status == "passed", summary.format()


@pytest.mark.parametrize("fmt", ["bioimageio", "onnx", "torchscript"])
def test_predicting_through_the_export_equals_the_checkpoint(fmt, ckpt, exported, data_dir):
    image = tifffile.imread(data_dir / "isbi2012" / "test-volume.tif", key=3)[:110, :150]
    tiler = Tiler(tile_size=(64, 88))  # several tiles, of two shapes
    expected = predict_image(load_trained(ckpt).net, image, tiler)
    trained = load_for_prediction(exported[fmt])
    assert isinstance(trained.net, ExportedNet)
    assert trained.postprocess.to_dict() == POSTPROCESS
    found = predict_image(trained.net, image, tiler)
    assert found.shape == expected.shape == (2, 110, 150)
    assert np.abs(found - expected).max() <= 1e-4


def test_bad_export_settings_are_one_line(ckpt, exported, compose_export, tmp_path, capsys):
    def fails(overrides, error, match):
        cfg = compose_export(overrides)
        with pytest.raises(error, match=match):
            export(cfg)

    new = f"output={tmp_path / 'new.onnx'}"
    fails([f"ckpt_path={ckpt}", "format=keras", new], ConfigError, "format='keras': expected")
    fails([f"ckpt_path={ckpt}", "format=onnx", f"output={exported['onnx']}"],
          OutputExistsError, "already exists")  # fmt: skip
    fails([f"ckpt_path={ckpt}", "format=onnx", f"output={tmp_path / 'x.zip'}"],
          ExportSettingError, "expected a name ending in .onnx")  # fmt: skip
    fails([f"ckpt_path={ckpt}", f"output={tmp_path / 'x.zip'}"],
          ExportSettingError, "needs training_data=isbi")  # fmt: skip
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    fails([f"ckpt_path={bare}", "format=onnx", new], CheckpointError, "found none")
    assert not (tmp_path / "new.onnx").exists()

    # the entry point: one line, exit code 2
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(export, compose_export([f"ckpt_path={bare}", "format=onnx", new]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bare.ckpt" in err


def test_onnx_file_without_the_unet_record_is_refused(tmp_path):
    """An ONNX file written elsewhere: no architecture record, so no size rule or channels."""
    net = UNet(in_channels=3, base_channels=2, depth=2, dropout=0.0).eval()
    path = tmp_path / "rgb.onnx"
    with pytest.warns(Warning):  # the exporter's deprecation and tracer notes
        torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(path), dynamo=False)
    with pytest.raises(CheckpointError, match=r"rgb.onnx: expected a model exported by unet"):
        load_for_prediction(path)


def test_pixel_sizes_keep_the_zoo_tools_output_sizes_whole():
    from unet.export.bioimageio import axis_scales
    from unet.io.pixel_size import PixelSize

    raw = 0.650000293  # U373's TIFF resolution: int(209 * raw / raw) is 208
    assert int(209 * raw / raw) == 208
    scales = axis_scales(PixelSize(raw, raw, "micrometer"))
    s = scales["x"]["scale"]
    assert abs(s - raw) < 1e-7 * raw and scales["y"]["scale"] == s
    # bioimageio's SizeReference: int(ref_size * ref_scale / scale + offset)
    assert all(int(n * s / s) == n for n in range(1, 200_000))
