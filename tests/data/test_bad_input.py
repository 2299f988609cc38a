"""Bad training data (the ISBI reader) and non-finite pixels (``data.nonfinite``).

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. The shared pieces (the synthetic
ISBI folder, the tiny checkpoint, ``one_line``, ``overriding``, ...) are fixtures of
tests/conftest.py. The README's "Reliability" section lists the cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra.utils import instantiate

from tests.conftest import truncate_file
from unet.data.readers import require_finite
from unet.errors import UserError
from unet.training.task import train


@pytest.fixture
def data(synthetic_isbi, tmp_path) -> Path:
    """A private copy of the synthetic data, for a case to damage."""
    return Path(shutil.copytree(synthetic_isbi, tmp_path / "data"))


def _truncated_volume(isbi: Path) -> None:
    truncate_file(isbi / "train-volume.tif")


def _truncated_labels(isbi: Path) -> None:
    truncate_file(isbi / "train-labels.tif", 0.6)


def _nan_volume(isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif").astype(np.float32)
    volume[1, 10:20, 10:20] = np.nan
    tifffile.imwrite(isbi / "train-volume.tif", volume, photometric="minisblack")


def _inf_volume(isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif").astype(np.float32)
    volume[0, 5, 5] = np.inf
    tifffile.imwrite(isbi / "train-volume.tif", volume, photometric="minisblack")


def _single_value_labels(isbi: Path) -> None:
    tifffile.imwrite(
        isbi / "train-labels.tif", np.full((4, 64, 64), 255, np.uint8), photometric="minisblack"
    )


def _all_membrane_labels(isbi: Path) -> None:
    tifffile.imwrite(
        isbi / "train-labels.tif", np.zeros((4, 64, 64), np.uint8), photometric="minisblack"
    )


def _three_valued_labels(isbi: Path) -> None:
    labels = tifffile.imread(isbi / "train-labels.tif")
    labels[0, 0, 0] = 128
    tifffile.imwrite(isbi / "train-labels.tif", labels, photometric="minisblack")


def _constant_slice(isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif")
    volume[2] = 7
    tifffile.imwrite(isbi / "train-volume.tif", volume, photometric="minisblack")


def _fewer_label_slices(isbi: Path) -> None:
    labels = tifffile.imread(isbi / "train-labels.tif")
    tifffile.imwrite(isbi / "train-labels.tif", labels[:3], photometric="minisblack")


def _complex_volume(isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif").astype(np.complex64)
    tifffile.imwrite(isbi / "train-volume.tif", volume, photometric="minisblack")


def _not_a_tiff(isbi: Path) -> None:
    (isbi / "train-volume.tif").write_text("<html>404 not found</html>")


def _empty_file(isbi: Path) -> None:
    (isbi / "train-labels.tif").write_bytes(b"")


def _missing_labels(isbi: Path) -> None:
    (isbi / "train-labels.tif").unlink()


def _rgb_volume(isbi: Path) -> None:
    volume = tifffile.imread(isbi / "train-volume.tif")
    tifffile.imwrite(isbi / "train-volume.tif", np.stack([volume] * 3, -1), photometric="rgb")


DATA_CASES = {  # damage -> (file the message must name, words it must contain)
    "truncated volume": (_truncated_volume, "train-volume.tif", "truncated"),
    "truncated labels": (_truncated_labels, "train-labels.tif", "truncated"),
    "NaN patch": (_nan_volume, "train-volume.tif", "100 of 16384 pixels are NaN"),
    "infinite pixel": (_inf_volume, "train-volume.tif", "1 of 16384 pixels are NaN or infinite"),
    "labels all 255": (_single_value_labels, "train-labels.tif", "every label pixel is cell"),
    "labels all 0": (_all_membrane_labels, "train-labels.tif", "every label pixel is membrane"),
    "three label values": (_three_valued_labels, "train-labels.tif", "found 3 distinct values"),
    "constant slice": (_constant_slice, "train-volume.tif slice 2", "every pixel has the value 7"),
    "label slices missing": (_fewer_label_slices, "train-labels.tif", "does not match"),
    "complex pixels": (_complex_volume, "train-volume.tif", "not supported"),
    "not a TIFF": (_not_a_tiff, "train-volume.tif", "cannot be read as a TIFF"),
    "empty file": (_empty_file, "train-labels.tif", "cannot be read as a TIFF"),
    "missing labels": (_missing_labels, "train-labels.tif", "not found"),
    "RGB volume": (_rgb_volume, "train-volume.tif", "expected a gray-value stack"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_training_data_is_refused_naming_the_file(
    case, data, tmp_path, one_line, no_run_output, compose_train, synthetic_train_overrides
):
    damage, file, words = DATA_CASES[case]
    damage(data / "isbi2012")
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train(compose_train(synthetic_train_overrides, run, data))
    message = one_line(err)
    assert file in message and words in message, message
    no_run_output(run)


@pytest.mark.parametrize("how", ["median", "zero"])
def test_require_finite_replaces_per_image(how):
    stack = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    stack[1, 0, :2] = [np.nan, np.inf]
    fixed = require_finite(stack, "s.tif", how)
    expected = np.median(stack[1][np.isfinite(stack[1])]) if how == "median" else 0
    assert np.array_equal(fixed[1, 0, :2], [expected, expected])
    assert np.array_equal(fixed[0], stack[0]) and np.isnan(stack[1, 0, 0])  # input untouched


def test_require_finite_refuses_an_image_without_finite_pixels_and_unknown_choices(one_line):
    stack = np.ones((2, 3, 3), np.float32)
    stack[1] = np.nan
    with pytest.raises(UserError) as err:
        require_finite(stack, "s.tif", "median", "data.nonfinite")
    assert "s.tif: image 1 has no finite pixel" in one_line(err)
    with pytest.raises(UserError) as err:
        require_finite(stack, "s.tif", "mean", "data.nonfinite")
    assert "data.nonfinite='mean': expected one of refuse, median, zero" in one_line(err)


def test_training_replaces_non_finite_pixels_on_request(
    data, tmp_path, capsys, overriding, compose_train, synthetic_train_overrides
):
    _nan_volume(data / "isbi2012")
    cfg = compose_train(
        overriding(synthetic_train_overrides, "data.nonfinite=median"), tmp_path / "run", data
    )
    splits = instantiate(cfg.data).read_splits()
    assert all(np.isfinite(image).all() for split in splits.values() for image in split.images)
    out = capsys.readouterr().out
    assert "train-volume.tif: 100 of 16384 pixels are NaN" in out and "data.nonfinite" in out
