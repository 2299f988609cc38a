"""Zoo packages of any image size (unet.inference.formats.any_size), run by bioimageio.core itself.

One tiny depth-3 U-Net, trained for a few steps on a real ISBI crop, is exported once as a
package (module fixture). bioimageio.core predicts real images with it: a 512 x 512 ISBI
slice and a 520 x 696 U373 frame whole, a 2048 x 2048 mirror-extended ISBI slice in
blocks; each must equal ``unet.inference.image.predict_image`` (the tiler of src/predict.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.export.task import export
from unet.inference.checkpoint import load_trained
from unet.inference.formats.any_size import AnySizeUNet, axis_plan, minimum_size, tool_halo
from unet.inference.image import predict_image
from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import Tiler, _axis_plan, predict_whole_image
from unet.labels import foreground_probability
from unet.model.network import UNet

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")

DEPTH = 3
POSTPROCESS = {"threshold": 0.5, "min_area": 5, "fill_holes": True, "regrow": "none",
               "grow_threshold": 0.5, "border_min_area": 0}  # fmt: skip
FORMATS = ["torchscript", "onnx", "pytorch_state_dict"]


@pytest.fixture(scope="module")
def zoo_ckpt(data_dir, tmp_path_factory, save_checkpoint) -> Path:
    """A depth-3, 2-channel U-Net after 10 Adam steps on a 140 x 140 ISBI crop."""
    isbi = data_dir / "isbi2012"
    image = tifffile.imread(isbi / "train-volume.tif", key=0)[:140, :140]
    labels = tifffile.imread(isbi / "train-labels.tif", key=0)[:140, :140] > 0
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=DEPTH, dropout=0.0, batch_norm=True)
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    x = (x - x.mean()) / x.std()
    out = net.output_shape(image.shape)
    top = (image.shape[0] - out[0]) // 2
    target = torch.from_numpy(labels[top : top + out[0], top : top + out[1]]).long()[None]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(10):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), target).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("zoo") / "tiny.ckpt"
    return save_checkpoint(net.eval(), path, postprocess=POSTPROCESS)


@pytest.fixture(scope="module")
def zoo_package(zoo_ckpt, data_dir, compose_export, tmp_path_factory) -> Path:
    """The checkpoint as a package with the defaults (any size, ONNX weights)."""
    folder = tmp_path_factory.mktemp("zoo_package")
    image = data_dir / "isbi2012" / "test-volume.tif"
    path = folder / "model.zip"
    overrides = [f"ckpt_path={zoo_ckpt}", f"output={path}", "training_data=isbi",
                 f"image={image}", 'authors=["Test Author"]']  # fmt: skip
    export(compose_export(overrides))
    return path


@pytest.fixture(scope="module")
def descr(zoo_package):
    from bioimageio.spec import load_model_description

    return load_model_description(zoo_package, perform_io_checks=False)


def isbi_slice(data_dir: Path) -> np.ndarray:
    return tifffile.imread(data_dir / "isbi2012" / "test-volume.tif", key=3)  # (512, 512)


def expected(ckpt: Path, image: np.ndarray, tile: int = 212) -> np.ndarray:
    """src/predict.py's probabilities (K, H, W): the tiler with tiles smaller than the image."""
    return predict_image(load_trained(ckpt).net, image, Tiler(tile_size=tile))


def assert_same_result(found: np.ndarray, reference: np.ndarray) -> None:
    """Probabilities within 1e-4, and the same objects after the post-processing."""
    assert found.shape == reference.shape
    assert np.abs(found - reference).max() <= 1e-4
    post = PostProcessing.from_dict(POSTPROCESS)
    labels = post(foreground_probability(found))
    assert labels.max() > 0  # there are objects to compare
    np.testing.assert_array_equal(labels, post(foreground_probability(reference)))


def core_whole_image(descr, image: np.ndarray, weight_format: str) -> np.ndarray:
    """bioimageio.core's prediction of the whole (H, W) image, as its own test runs it."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model

    sample = create_sample_for_model(descr, inputs={"input": image[None, None]})
    with create_prediction_pipeline(descr, weight_format=weight_format) as pipeline:
        out = pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
    return out.members["output"].data.to_numpy()[0]


@settings(max_examples=15, deadline=None)
@given(depth=st.integers(2, 4), padding=st.sampled_from(["valid", "same"]),
       extra=st.integers(0, 200))  # fmt: skip
def test_axis_plan_is_the_tilers(depth, padding, extra):
    config = UNet(depth=depth, padding=padding, base_channels=1).config
    size = minimum_size(config) + extra
    in_size, before, offset = _axis_plan(size, depth, padding)
    assert axis_plan(size, depth, padding) == (before, in_size - size - before, offset)
    assert tool_halo(config) % 2**depth == 0 and minimum_size(config) > 2 * tool_halo(config)


@settings(max_examples=8, deadline=None)
@given(padding=st.sampled_from(["valid", "same"]), h=st.integers(0, 60), w=st.integers(0, 60))
def test_any_size_net_equals_whole_image_prediction(padding, h, w):
    torch.manual_seed(0)
    model = AnySizeUNet(base_channels=2, depth=2, padding=padding, dropout=0.0).eval()
    m = minimum_size(model.config)
    x = torch.randn(1, 1, m + h, m + w)
    with torch.no_grad():
        found = model(x)
        reference = predict_whole_image(model.net, x).softmax(dim=1)
    assert found.shape == (1, 2, m + h, m + w)
    assert (found - reference).abs().max() <= 1e-6


def test_rdf_declares_any_size_a_halo_and_reflect_padding(descr):
    (inputs,), (outputs,) = descr.inputs, descr.outputs
    config = UNet(depth=DEPTH, base_channels=2).config
    y, x = inputs.axes[2:]
    assert (y.size.min, y.size.step, x.size.min, x.size.step) == (minimum_size(config), 1) * 2
    assert all(a.size.offset == 0 and a.halo == tool_halo(config) == 48 for a in outputs.axes[2:])
    assert inputs.pad.mode == "reflect"
    (standardise,) = [p for p in inputs.preprocessing if p.id == "zero_mean_unit_variance"]
    assert list(map(str, standardise.kwargs.axes)) == ["y", "x"]  # per image and channel
    assert set(descr.weights.available_formats) == set(FORMATS)
    assert descr.config.unet["any_size"]["minimum_size"] == minimum_size(config)


@pytest.mark.parametrize("weight_format", FORMATS)
def test_core_predicts_a_512_isbi_slice_like_predict_py(weight_format, descr, zoo_ckpt, data_dir):
    image = isbi_slice(data_dir)
    assert_same_result(core_whole_image(descr, image, weight_format), expected(zoo_ckpt, image))


def test_core_predicts_a_520x696_u373_frame_like_predict_py(descr, zoo_ckpt, data_dir):
    image = tifffile.imread(data_dir / "PhC-C2DH-U373" / "01" / "t000.tif")
    assert image.shape == (520, 696)
    found = core_whole_image(descr, image, "torchscript")
    assert_same_result(found, expected(zoo_ckpt, image))


def test_core_blocked_2048_equals_predict_py(descr, zoo_ckpt, data_dir):
    """25 blocks of 512 px (halo 48, inner 416) on the pooling grid: exact stitching."""
    from bioimageio.core import predict

    image = np.pad(isbi_slice(data_dir), 768, mode="reflect")  # (2048, 2048)
    n = 512 - minimum_size(UNet(depth=DEPTH, base_channels=2).config)  # block 512 = min + n
    out = predict(model=descr, inputs=image[None, None], blocksize_parameter=n)
    found = out.members["output"].data.to_numpy()[0]
    assert_same_result(found, expected(zoo_ckpt, image, tile=1036))


def test_core_test_passes_for_every_weight_format(zoo_package):
    from bioimageio.core import test_model

    summary = test_model(zoo_package)
    assert summary.status == "passed", summary.format()


def test_package_predicts_through_predict_py_with_the_inner_network(zoo_package, zoo_ckpt,
                                                                    data_dir):  # fmt: skip
    from unet.inference.formats.loading import load_for_prediction

    image = isbi_slice(data_dir)[:300, :260]
    trained = load_for_prediction(zoo_package)
    found = predict_image(trained.net, image, Tiler(tile_size=212))
    assert np.abs(found - expected(zoo_ckpt, image)).max() <= 1e-4


def test_bare_network_package_keeps_the_valid_size_rule(zoo_ckpt, data_dir, compose_export,
                                                        tmp_path):  # fmt: skip
    from bioimageio.spec import load_model_description

    path = tmp_path / "bare.zip"
    image = data_dir / "isbi2012" / "test-volume.tif"
    export(compose_export([f"ckpt_path={zoo_ckpt}", f"output={path}", "training_data=isbi",
                           f"image={image}", 'authors=["A B"]', "any_size=false",
                           "onnx=false"]))  # fmt: skip
    bare = load_model_description(path, perform_io_checks=False)
    y = bare.inputs[0].axes[2]
    assert (y.size.min, y.size.step) == (92, 8)  # shapes.size_rule(3, "valid")
    assert bare.outputs[0].axes[2].size.offset == -88 and bare.inputs[0].pad is None
    assert "unet.inference.formats.probabilities" in str(
        bare.weights.pytorch_state_dict.architecture
    )


@pytest.mark.slow
def test_core_runs_a_trained_isbi_cpu_package_like_predict_py(
    data_dir, compose_train, compose_export, tmp_path
):
    """The checks above with the isbi_cpu recipe's network (depth 4, 16 channels, batch
    norm), trained by src/train.py for two short epochs, instead of the tiny net."""
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    from unet.training.task import train

    overrides = ["experiment=isbi_cpu", "trainer.max_epochs=2", "data.samples_per_epoch=8",
                 "data.num_workers=0", "logger=csv", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false"]  # fmt: skip
    ckpt = Path(train(compose_train(overrides, tmp_path / "run", data_dir))["checkpoint"])
    package = tmp_path / "isbi_cpu.zip"
    export(compose_export([f"ckpt_path={ckpt}", f"output={package}", 'authors=["A B"]']))
    descr = load_model_description(package, perform_io_checks=False)
    trained = load_trained(ckpt)
    post = trained.postprocess or PostProcessing()

    def same(found, image, tile=508):
        reference = predict_image(trained.net, image, Tiler(tile_size=tile))
        assert found.shape == reference.shape
        assert np.abs(found - reference).max() <= 1e-4
        np.testing.assert_array_equal(
            post(foreground_probability(found)), post(foreground_probability(reference))
        )

    image = isbi_slice(data_dir)
    same(core_whole_image(descr, image, "torchscript"), image)
    u373 = tifffile.imread(data_dir / "PhC-C2DH-U373" / "01" / "t000.tif")
    same(core_whole_image(descr, u373, "onnx"), u373)
    big = np.pad(image, 768, mode="reflect")  # (2048, 2048)
    n = 512 - minimum_size(trained.config)  # blocks of 512 on the pooling grid
    out = predict(model=descr, inputs=big[None, None], blocksize_parameter=n)
    same(out.members["output"].data.to_numpy()[0], big, tile=1036)
