"""Export of a model trained on one's own folder (data=folder): RGB input, three classes,
the training data read from the checkpoint.

One tiny U-Net is trained by ``unet.training.task.train`` for a few steps on a synthetic RGB
folder (``synthetic_rgb``: red disks = class 1, green squares = class 2) and exported once
to every format, with neither ``training_data=`` nor ``image=`` (module fixtures).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet.config.cli import run_or_exit
from unet.data.frames import read_channels
from unet.data.readers import DataError
from unet.export.datasets import DATASETS, UNET_PAPER
from unet.export.task import ExportSettingError, export, package_settings
from unet.inference.checkpoint import CheckpointError, load_trained, read_checkpoint
from unet.inference.formats.check import largest_difference
from unet.inference.formats.loading import ExportedNet, load_for_prediction
from unet.inference.formats.onnx import onnx_session, run_session
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.torchscript import read_torchscript
from unet.inference.image import predict_image
from unet.inference.tiler import Tiler
from unet.model import shapes
from unet.model.network import NetConfig, UNet
from unet.training.task import train

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnxruntime")

AUTHORS = 'authors=["Test Author"]'


@pytest.fixture(scope="module")
def own_ckpt(compose_train, synthetic_rgb, tmp_path_factory) -> Path:
    """A depth-2 U-Net (3 channels in, 3 classes out) after 4 training steps on
    ``my_cells/``, saved by training (with the data module's settings)."""
    base = tmp_path_factory.mktemp("own")
    root = synthetic_rgb(base / "my_cells")
    overrides = [
        "data=folder",
        f"data.data_dir={root}",
        "data.num_classes=3",
        "data.in_channels=3",
        "data.val=[im2]",
        "data.tile_size=60",
        "data.samples_per_epoch=4",
        "data.num_workers=0",
        "data.summary=false",
        "model.net.base_channels=2",
        "model.net.depth=2",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "validate=false",
        "choose_postprocess=false",
    ]
    train(compose_train(overrides, base / "run"))
    (ckpt,) = (base / "run" / "checkpoints").glob("best-*.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def own_exported(own_ckpt, compose_export, tmp_path_factory) -> dict[str, Path]:
    """The checkpoint as a package (with ONNX weights), an ONNX and a TorchScript file."""
    folder = tmp_path_factory.mktemp("own_exported")
    files = {"bioimageio": folder / "mine.zip", "onnx": folder / "mine.onnx"}
    files["torchscript"] = folder / "mine.pt"
    for fmt, path in files.items():
        extra = ["onnx=true", AUTHORS] if fmt == "bioimageio" else []
        export(compose_export([f"ckpt_path={own_ckpt}", f"format={fmt}", f"output={path}", *extra]))
    return files


def test_package_describes_the_own_folder_and_its_channels(own_ckpt, own_exported):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_model_description(own_exported["bioimageio"], perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    (inputs,), (outputs,) = descr.inputs, descr.outputs
    assert len(inputs.axes[1].channel_names) == 3
    assert list(map(str, outputs.axes[1].channel_names)) == ["background", "class1", "class2"]
    # standardised channel by channel over y and x, as training does
    (standardise,) = [p for p in inputs.preprocessing if p.id == "zero_mean_unit_variance"]
    assert list(map(str, standardise.kwargs.axes)) == ["y", "x"]
    # the training data, from the checkpoint alone: the folder, its masks, K and C
    data = descr.training_data
    assert data.name == "own images (my_cells)"
    for words in ("my_cells", "semantic masks", "3 classes", "3-channel"):
        assert words in data.description
    assert {str(c.doi) for c in descr.cite} == {UNET_PAPER["doi"]}
    assert {str(c.doi) for c in data.cite} == {UNET_PAPER["doi"]}
    # the test input: the centre of the folder's first image, all three channels
    with zipfile.ZipFile(own_exported["bioimageio"]) as archive:
        with archive.open("test_input.npy") as f:
            test_input = np.load(f)
    first = read_channels(own_ckpt.parents[2] / "my_cells" / "images" / "im0.png")
    assert first.shape == (3, 96, 72) and test_input.shape[:2] == (1, 3)
    h, w = test_input.shape[2:]
    top, left = (96 - h) // 2, (72 - w) // 2
    np.testing.assert_array_equal(test_input[0], first[:, top : top + h, left : left + w])


def test_bioimageio_core_reproduces_the_own_test_outputs(own_exported):
    from bioimageio.core import test_model

    summary = test_model(own_exported["bioimageio"], weight_format="torchscript")
    assert summary.status == "passed", summary.format()


@pytest.mark.slow
def test_bioimageio_core_passes_every_weight_format_of_the_own_package(own_exported):
    from bioimageio.core import test_model

    summary = test_model(own_exported["bioimageio"])
    assert summary.status == "passed", summary.format()


def test_rgb_onnx_and_torchscript_equal_pytorch(own_ckpt, own_exported):
    model = ProbabilityUNet.wrap(load_trained(own_ckpt).net)
    smallest, step = shapes.size_rule(2, "valid")
    sizes = [(smallest + 5 * step, smallest + 2 * step)]  # valid, not square, not checked yet
    session = onnx_session(str(own_exported["onnx"]))
    traced, _ = read_torchscript(str(own_exported["torchscript"]))
    for run in (
        lambda x: run_session(session, x),
        lambda x: traced(torch.from_numpy(x)).detach().numpy(),
    ):
        assert largest_difference(run, model, sizes) <= 1e-4
    # and the comparison can fail: another net's weights differ
    torch.manual_seed(1)
    other = ProbabilityUNet.wrap(UNet(in_channels=3, num_classes=3, base_channels=2, depth=2))
    assert largest_difference(lambda x: run_session(session, x), other.eval(), sizes) > 1e-2


@pytest.mark.parametrize("fmt", ["bioimageio", "onnx", "torchscript"])
def test_predicting_rgb_through_the_export_equals_the_checkpoint(fmt, own_ckpt, own_exported):
    image = read_channels(own_ckpt.parents[2] / "my_cells" / "images" / "im1.png")  # (3, 80, 80)
    tiler = Tiler(tile_size=(52, 60))  # several tiles, of two shapes
    expected = predict_image(load_trained(own_ckpt).net, image, tiler)
    trained = load_for_prediction(own_exported[fmt])
    assert isinstance(trained.net, ExportedNet)
    assert (trained.config.in_channels, trained.config.num_classes) == (3, 3)
    found = predict_image(trained.net, image, tiler)
    assert found.shape == expected.shape == (3, 80, 80)
    assert np.abs(found - expected).max() <= 1e-4


ISBI_HPARAMS = {"data_dir": "/data", "val_slices": 5, "tile_size": 508, "seed": 1}
HELA_HPARAMS = {"data_dir": "/data", "dataset": "DIC-C2DH-HeLa", "val_frames": 1}
U373_HPARAMS = {"data_dir": "/data", "dataset": "PhC-C2DH-U373", "val_frames": 1}


@pytest.mark.parametrize(
    ("hparams", "override", "expected"),
    [
        (ISBI_HPARAMS, None, DATASETS["isbi"]["name"]),
        (HELA_HPARAMS, None, DATASETS["hela"]["name"]),
        (U373_HPARAMS, None, DATASETS["u373"]["name"]),
        (ISBI_HPARAMS, "hela", DATASETS["hela"]["name"]),  # training_data= overrides
        ({}, "u373", DATASETS["u373"]["name"]),
    ],
)
def test_training_data_comes_from_the_checkpoint(hparams, override, expected, compose_export):
    """The data module's stored settings name the data set; ``training_data=`` wins."""
    checkpoint = {"datamodule_hyper_parameters": hparams}
    overrides = ["ckpt_path=x.ckpt", "output=x.zip", AUTHORS]
    if override:
        overrides.append(f"training_data={override}")
    settings = package_settings(compose_export(overrides), checkpoint, NetConfig())
    assert settings["dataset"]["name"] == expected
    assert settings["name"] == f"U-Net {expected}"


def test_own_data_can_be_named_and_described(own_ckpt, compose_export):
    checkpoint = read_checkpoint(own_ckpt)
    overrides = [
        f"ckpt_path={own_ckpt}",
        "output=x.zip",
        AUTHORS,
        "training_data_name='Stained nuclei, lab set 3'",
        "training_data_description='RGB brightfield; nuclei and debris'",
    ]
    settings = package_settings(compose_export(overrides), checkpoint, NetConfig(in_channels=3))
    assert settings["dataset"]["name"] == "Stained nuclei, lab set 3"
    assert settings["dataset"]["description"] == "RGB brightfield; nuclei and debris"
    assert settings["name"] == "U-Net Stained nuclei_ lab set 3"  # a valid model name
    assert settings["image"].endswith("im0.png")


def test_bad_own_data_exports_are_one_line(own_ckpt, compose_export, tmp_path, capsys):
    def fails(ckpt, extra, error, match):
        cfg = compose_export([f"ckpt_path={ckpt}", f"output={tmp_path / 'x.zip'}", *extra])
        with pytest.raises(error, match=match):
            export(cfg)

    checkpoint = read_checkpoint(own_ckpt)
    # a checkpoint that does not say what it was trained on, and no training_data=
    bare = tmp_path / "bare.ckpt"
    torch.save({k: v for k, v in checkpoint.items() if not k.startswith("datamodule")}, bare)
    fails(bare, [AUTHORS], ExportSettingError, r"needs training_data=isbi\|hela\|u373\|own: ")
    # own data whose training images are gone, and no image=
    moved = tmp_path / "moved.ckpt"
    hparams = {**checkpoint["datamodule_hyper_parameters"], "data_dir": str(tmp_path / "gone")}
    torch.save({**checkpoint, "datamodule_hyper_parameters": hparams}, moved)
    fails(moved, [AUTHORS], ExportSettingError, r"needs image=.*gone/images are not there")
    fails(bare, [AUTHORS, "training_data=own"], ExportSettingError, "needs image=")
    # a gray image for a 3-channel network
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(gray)
    fails(own_ckpt, [AUTHORS, f"image={gray}"], DataError, "the network takes 3 channels")
    fails(own_ckpt, [], ExportSettingError, "needs authors=")
    assert not (tmp_path / "x.zip").exists()

    # the entry point: one line, exit code 2
    cfg = compose_export([f"ckpt_path={moved}", f"output={tmp_path / 'x.zip'}", AUTHORS])
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(export, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "image=" in err


def test_onnx_file_of_other_channels_than_its_record_is_refused(own_exported, tmp_path):
    """The ONNX check: one (B, C, H, W) input, C = the recorded network's in_channels."""
    import onnx

    graph = onnx.load(str(own_exported["onnx"]))
    (entry,) = [e for e in graph.metadata_props if e.key == "unet"]
    entry.value = entry.value.replace('"in_channels": 3', '"in_channels": 1')
    path = tmp_path / "relabelled.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"relabelled.onnx: expected an ONNX model with one input of shape "
        r"\(B, 1, H, W\) \(its record's in_channels = 1\), found input shape\(s\) "
        r"\(batch, 3, height, width\)",
    ):
        load_for_prediction(path)
