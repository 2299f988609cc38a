"""Prediction with K > 2 classes and colour input: the K-class stack, the argmax image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet.model.network import UNet
from unet.predict.files import predict_files
from unet.predict.request import PredictionSettingError


@pytest.fixture
def rgb_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for name, shape in (("a", (40, 52)), ("b", (36, 36))):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    return folder


def three_class_net() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, num_classes=3, depth=2, base_channels=4, padding="same").eval()


def test_three_classes_write_a_stack_that_sums_to_one_and_an_argmax_image(rgb_folder, tmp_path):
    out = tmp_path / "out"
    predict_files(three_class_net(), rgb_folder, out, device="cpu", progress=False)
    with tifffile.TiffFile(out / "probabilities.tif") as tif:
        series = [s.asarray() for s in tif.series]
    assert [s.shape for s in series] == [(3, 40, 52), (3, 36, 36)]
    for name, prob in zip("ab", series, strict=True):
        np.testing.assert_allclose(prob.sum(axis=0), 1.0, atol=1e-5)
        classes = tifffile.imread(out / "classes" / f"{name}.tif")
        np.testing.assert_array_equal(classes, prob.argmax(axis=0))
        assert (out / "labels" / f"{name}.tif").is_file()


def test_instance_class_must_be_a_foreground_class(rgb_folder, tmp_path):
    with pytest.raises(PredictionSettingError, match="instance_class=3: expected a foreground"):
        predict_files(three_class_net(), rgb_folder, tmp_path / "o", instance_class=3)


def test_gray_input_for_an_rgb_network_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(Exception, match=r"g\.tif: an image of shape \(32, 32\).*3 channels"):
        predict_files(three_class_net(), tmp_path / "g.tif", tmp_path / "o", device="cpu")
