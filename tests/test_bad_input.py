"""Bad input and faults, as a user would meet them, against the three entry points.

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. Most cases call the entry
points' importable functions (``train``, ``evaluate``, ``predict``) on a small synthetic
ISBI folder; a few run the real command lines. The README's "Reliability" section lists
the cases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import CONFIGS, _compose_entry
from conftest import _compose_train as compose_train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch import Callback
from omegaconf import open_dict
from scipy import ndimage

from unet.atomic import partial_path
from unet.cli import check_command_line
from unet.data.readers import require_finite
from unet.errors import UserError
from unet.evaluation import evaluate
from unet.guard import NonFiniteError
from unet.predict.task import predict
from unet.training import train
from unet.weight_maps import CacheWarning

ROOT = CONFIGS.parent
TRAIN = [  # a tiny net on 4 synthetic 64x64 slices: 2 epochs of 3 steps
    "model.net.base_channels=4",
    "model.net.depth=3",
    "data.tile_size=124",
    "data.val_slices=1",
    "data.num_workers=0",
    "debug=limit",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "validate=false",
]


# ---------------------------------------------------------------------------- fixtures


def synthetic_isbi(folder: Path) -> Path:
    """An ISBI-layout folder with 4 slices of 64x64: blurred noise, cells where it is bright."""
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.normal(size=(4, 64, 64)), (0, 3, 3))
    volume = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    labels = np.where(noise > np.median(noise) - 0.05, 255, 0).astype(np.uint8)
    isbi = folder / "isbi2012"
    isbi.mkdir(parents=True)
    tifffile.imwrite(isbi / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(isbi / "train-labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(isbi / "test-volume.tif", volume, photometric="minisblack")
    return folder


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    return synthetic_isbi(tmp_path_factory.mktemp("good") / "data")


@pytest.fixture
def data(good_data, tmp_path) -> Path:
    """A private copy of the synthetic data, for a case to damage."""
    return Path(shutil.copytree(good_data, tmp_path / "data"))


@pytest.fixture(scope="module")
def ckpt(tiny_valid_ckpt) -> Path:
    """A small network's checkpoint as training writes it (config, weights, probe)."""
    return tiny_valid_ckpt


def overriding(base: list[str], *overrides: str) -> list[str]:
    """``base`` with ``overrides`` in place of its entries for the same keys."""
    keys = {o.split("=")[0].lstrip("+") for o in overrides}
    return [b for b in base if b.split("=")[0] not in keys] + list(overrides)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError), type(err.value)
    assert "\n" not in message and message, message
    return message


def truncate(path: Path, fraction: float = 0.5) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * fraction)])


def compose_predict(overrides: list[str]):
    return _compose_entry("predict", ["progress=false", *overrides])


def compose_eval(overrides: list[str], out: Path):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.data.cache_dir = str(out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    return cfg


def no_run_output(run: Path) -> None:
    """A refused run made no checkpoints, logs or metrics."""
    for name in ("checkpoints", "csv", "metrics.json"):
        assert not (run / name).exists(), name


# ---------------------------------------------------------------------------- training data


def _truncated_volume(isbi: Path) -> None:
    truncate(isbi / "train-volume.tif")


def _truncated_labels(isbi: Path) -> None:
    truncate(isbi / "train-labels.tif", 0.6)


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
def test_bad_training_data_is_refused_naming_the_file(case, data, tmp_path):
    damage, file, words = DATA_CASES[case]
    damage(data / "isbi2012")
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train(compose_train(TRAIN, run, data))
    message = one_line(err)
    assert file in message and words in message, message
    no_run_output(run)


# ---------------------------------------------------------------------------- settings

SETTING_CASES = {  # override -> words the message must contain
    "trainer.max_epochs=abc": "trainer.max_epochs='abc': expected an integer",
    "trainer.max_epochs=2.5": "trainer.max_epochs=2.5",
    "trainer.precision=15": "trainer.precision=15: expected one of",
    "trainer.accelerator=tpux": "trainer.accelerator='tpux'",
    "trainer.devices=0": "trainer.devices=0",
    "trainer.max_time=abc": "trainer.max_time='abc': expected a duration",
    "trainer.gradient_clip_val=-1": "trainer.gradient_clip_val=-1",
    "trainer.limit_train_batches=1.5": "trainer.limit_train_batches=1.5",
    "data.tile_size=abc": "data.tile_size='abc': expected an integer",
    "data.tile_size=-4": "data.tile_size=-4",
    "data.tile_size=130": "data.tile_size=130 does not fit model.net",
    "data.val_slices=0": "data.val_slices=0: expected a count >= 1",
    "data.val_slices=-1": "data.val_slices=-1",
    "data.val_slices=abc": "data.val_slices='abc'",
    "data.val_slices=1.5": "data.val_slices=1.5",
    "data.val_slices=[]": "data.val_slices=[]",
    "data.val_slices=4": "data.val_slices=4: expected 1 <= val_slices < 4",
    "data.val_slices=[9]": "data.val_slices=[9]: expected slice indices in [0, 3]",
    "data.val_slices=[0,1,2,3]": "leave training slices",
    "data.batch_size=0": "data.batch_size=0",
    "data.num_workers=-1": "data.num_workers=-1",
    "data.sigma=0": "data.sigma=0",
    "data.samples_per_epoch=0": "data.samples_per_epoch=0",
    "data.augmentation.rotation=400": "data.augmentation.rotation=400",
    "model.optimizer.lr=abc": "model.optimizer.lr='abc': expected a number >= 0",
    "model.optimizer.lr=-0.1": "model.optimizer.lr=-0.1",
    "model.optimizer.momentum=1.5": "model.optimizer.momentum=1.5",
    "model.net.padding=full": "model.net.padding='full': expected valid or same",
    "model.net.up_mode=nearest": "model.net.up_mode='nearest'",
    "model.net.dropout=1.0": "model.net.dropout=1.0",
    "model.net.depth=0": "model.net.depth=0",
    "model.net.num_classes=1": "model.net.num_classes=1",
    "model.net.batch_norm=yes": "model.net.batch_norm='yes': expected true or false",
    "model.scheduler_interval=batch": "model.scheduler_interval='batch'",
    "+model.net.channels=3": "model.net: UNet.__init__() got an unexpected keyword argument",
    "seed=-1": "seed=-1",
    "train=maybe": "train='maybe'",
}


@pytest.mark.parametrize("override", sorted(SETTING_CASES))
def test_bad_setting_is_one_line_naming_the_key(override, good_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train(compose_train(overriding(TRAIN, override), run, good_data))
    message = one_line(err)
    assert SETTING_CASES[override] in message, message
    no_run_output(run)


EVAL_CASES = {
    "split=test": "split='test': expected val or train",
    "ckpt_path=nowhere.ckpt": "nowhere.ckpt",
    "data.val_slices=0": "data.val_slices=0",
}


@pytest.mark.parametrize("override", sorted(EVAL_CASES))
def test_bad_eval_setting(override, good_data, ckpt, tmp_path):
    base = [f"ckpt_path={ckpt}", f"data.data_dir={good_data}", "data.val_slices=1"]
    cfg = compose_eval(overriding(base, override), tmp_path / "eval")
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert EVAL_CASES[override] in one_line(err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "NaN", "0..255"])
def test_damaged_prediction_stack_is_not_scored(damage, good_data, tmp_path):
    stack = tmp_path / "probabilities.tif"
    probabilities = np.full((1, 64, 64), 0.5, np.float32)
    if damage == "NaN":
        probabilities[0, :3, :3] = np.nan
    if damage == "0..255":  # an image saved instead of probabilities
        probabilities[0, :3, :3] = 255
    tifffile.imwrite(stack, np.concatenate([probabilities] * 4), photometric="minisblack")
    if damage == "truncated":
        truncate(stack)
    cfg = compose_eval(
        [f"predictions={stack}", f"data.data_dir={good_data}", "data.val_slices=1"],
        tmp_path / "eval",
    )
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    message = one_line(err)
    words = {"truncated": "truncated", "NaN": "NaN", "0..255": "found values in [0.5, 255]"}
    assert "probabilities.tif" in message and words[damage] in message, message
    assert not (tmp_path / "eval" / "metrics.json").exists()


# ---------------------------------------------------------------------------- prediction


def _write_stack(path: Path, frames: int = 3, dtype=np.uint8) -> Path:
    rng = np.random.default_rng(1)
    tifffile.imwrite(
        path, rng.integers(0, 255, (frames, 40, 48)).astype(dtype), photometric="minisblack"
    )
    return path


PREDICT_CASES = {  # name -> (make input from tmp_path, extra overrides, words)
    "truncated stack": (
        lambda d: (truncate(p := _write_stack(d / "stack.tif", 30)), p)[1],
        [],
        "truncated",
    ),
    "NaN patch": (
        lambda d: _nan_stack(d / "nan.tif"),
        [],
        "100 of 5760 pixels are NaN",
    ),
    "truncated frame in a folder": (lambda d: _folder_with_truncated_frame(d), [], "truncated"),
    "not an image": (lambda d: _text(d / "notes.txt"), [], "unsupported file type"),
    "missing input": (lambda d: d / "missing.tif", [], "does not exist"),
    "tta=flips": (lambda d: _write_stack(d / "s.tif"), ["tta=flips"], "tta='flips'"),
    "device=gpu0": (lambda d: _write_stack(d / "s.tif"), ["device=gpu0"], "device='gpu0'"),
    "threshold=abc": (
        lambda d: _write_stack(d / "s.tif"),
        ["postprocess.threshold=abc"],
        "postprocess.threshold='abc'",
    ),
    "threshold=2": (
        lambda d: _write_stack(d / "s.tif"),
        ["postprocess.threshold=2"],
        "postprocess.threshold=2",
    ),
    "min_area=-1": (
        lambda d: _write_stack(d / "s.tif"),
        ["postprocess.min_area=-1"],
        "postprocess.min_area=-1",
    ),
    "overwrite=yes": (lambda d: _write_stack(d / "s.tif"), ["overwrite=yes"], "overwrite='yes'"),
    "precision=16": (lambda d: _write_stack(d / "s.tif"), ["precision=16"], "precision=16"),
    "tiler.tile_size=abc": (
        lambda d: _write_stack(d / "s.tif"),
        ["tiler.tile_size=abc"],
        "tiler.tile_size='abc'",
    ),
    "tiler.tile_size=50": (
        lambda d: _write_stack(d / "s.tif"),
        ["tiler.tile_size=50"],
        "nearest valid sizes",
    ),
}


def _nan_stack(path: Path) -> Path:
    stack = np.random.default_rng(2).normal(size=(3, 40, 48)).astype(np.float32)
    stack[1, 10:20, 10:20] = np.nan
    tifffile.imwrite(path, stack, photometric="minisblack")
    return path


def _folder_with_truncated_frame(folder: Path) -> Path:
    frames = folder / "frames"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        frame = rng.integers(0, 255, (40, 48)).astype(np.uint8)
        tifffile.imwrite(frames / f"t{k:03d}.tif", frame, photometric="minisblack")
    truncate(frames / "t002.tif", 0.3)
    return frames


def _text(path: Path) -> Path:
    path.write_text("not an image")
    return path


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_prediction_input_writes_nothing(case, ckpt, tmp_path):
    make, overrides, words = PREDICT_CASES[case]
    source = make(tmp_path)
    out = tmp_path / "out"
    cfg = compose_predict([f"ckpt_path={ckpt}", f"input={source}", f"output={out}", *overrides])
    with pytest.raises(UserError) as err:
        predict(cfg)
    assert words in one_line(err)
    assert not out.exists() and not partial_path(out).exists()


def test_non_finite_input_is_replaced_only_on_request(ckpt, tmp_path, capsys):
    """nonfinite=median predicts a NaN patch like the rest of the frame (finite output, one
    warning); the default refuses the same file (PREDICT_CASES)."""
    source = _nan_stack(tmp_path / "nan.tif")
    out = tmp_path / "out"
    predict(
        compose_predict(
            [f"ckpt_path={ckpt}", f"input={source}", f"output={out}", "nonfinite=median"]
        )
    )
    probabilities = tifffile.imread(out / "probabilities.tif")
    assert probabilities.shape[0] == 3 and np.isfinite(probabilities).all()
    assert "100 of 5760 pixels are NaN or infinite" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["median", "zero"])
def test_require_finite_replaces_per_image(how):
    stack = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    stack[1, 0, :2] = [np.nan, np.inf]
    fixed = require_finite(stack, "s.tif", how)
    expected = np.median(stack[1][np.isfinite(stack[1])]) if how == "median" else 0
    assert np.array_equal(fixed[1, 0, :2], [expected, expected])
    assert np.array_equal(fixed[0], stack[0]) and np.isnan(stack[1, 0, 0])  # input untouched


def test_require_finite_refuses_an_image_without_finite_pixels_and_unknown_choices():
    stack = np.ones((2, 3, 3), np.float32)
    stack[1] = np.nan
    with pytest.raises(UserError) as err:
        require_finite(stack, "s.tif", "median", "data.nonfinite")
    assert "s.tif: image 1 has no finite pixel" in one_line(err)
    with pytest.raises(UserError) as err:
        require_finite(stack, "s.tif", "mean", "data.nonfinite")
    assert "data.nonfinite='mean': expected one of refuse, median, zero" in one_line(err)


def test_training_replaces_non_finite_pixels_on_request(data, tmp_path, capsys):
    _nan_volume(data / "isbi2012")
    cfg = compose_train(overriding(TRAIN, "data.nonfinite=median"), tmp_path / "run", data)
    splits = instantiate(cfg.data).read_splits()
    assert all(np.isfinite(image).all() for split in splits.values() for image in split.images)
    out = capsys.readouterr().out
    assert "train-volume.tif: 100 of 16384 pixels are NaN" in out and "data.nonfinite" in out


def test_missing_required_setting(tmp_path):
    with pytest.raises(UserError) as err:
        predict(compose_predict([f"output={tmp_path / 'out'}"]))
    assert "ckpt_path=..., input=..." in one_line(err)


def test_checkpoint_whose_architecture_was_edited_is_refused(ckpt, tmp_path):
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["net_config"]["padding"] = "same"  # loads the same weights without complaint
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    source = _write_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        predict(compose_predict([f"ckpt_path={edited}", f"input={source}", f"output={out}"]))
    message = one_line(err)
    assert "edited.ckpt" in message and "does not fit its weights" in message
    assert not out.exists()


def test_overwrite_replaces_the_whole_folder_and_refusal_keeps_it(ckpt, tmp_path):
    source = _write_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    predict(compose_predict(base))
    (out / "labels" / "stale.tif").write_bytes(b"from an earlier run")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:  # without overwrite: refused, nothing touched
        predict(compose_predict(base))
    assert "overwrite=true" in one_line(err) and (out / "notes.txt").read_text() == "mine"
    predict(compose_predict([*base, "overwrite=true"]))
    assert not (out / "labels" / "stale.tif").exists() and not (out / "notes.txt").exists()
    assert len(tifffile.imread(out / "probabilities.tif")) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "s.tif"]  # no leftovers


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_prediction_leaves_nothing_that_looks_complete(ckpt, tmp_path, monkeypatch):
    import unet.predict.output_folder

    source = _write_stack(tmp_path / "s.tif", 5)
    out = tmp_path / "out"
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    predict(compose_predict(base))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def stop_at_third(*args):  # Ctrl-C while the third frame is written
        calls.append(1)
        if len(calls) == 3:
            raise Interrupt
        return original(*args)

    original = unet.predict.output_folder.write_overlay
    monkeypatch.setattr(unet.predict.output_folder, "write_overlay", stop_at_third)
    with pytest.raises(Interrupt):
        predict(compose_predict([*base, "overwrite=true"]))
    # the earlier complete output is untouched, and nothing partial is left beside it
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.tif"]


def test_killed_prediction_is_named_on_the_next_run(ckpt, tmp_path):
    source = _write_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    partial = partial_path(out)  # what a SIGKILL mid-prediction leaves
    (partial / "labels").mkdir(parents=True)
    (partial / "probabilities.tif").write_bytes(b"II*\x00")
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    with pytest.raises(UserError) as err:
        predict(compose_predict(base))
    message = one_line(err)
    assert "out.partial" in message and "interrupted" in message and "overwrite=true" in message
    predict(compose_predict([*base, "overwrite=true"]))
    assert not partial.exists() and len(tifffile.imread(out / "probabilities.tif")) == 3


def test_unwritable_output_is_one_line(ckpt, tmp_path):
    (tmp_path / "a_file").write_text("x")
    source = _write_stack(tmp_path / "s.tif")
    out = tmp_path / "a_file" / "out"
    with pytest.raises(UserError) as err:
        predict(compose_predict([f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]))
    assert "cannot write there" in one_line(err)


def test_blank_frame_is_predicted_with_a_warning(ckpt, tmp_path, capsys):
    source = tmp_path / "blank.tif"
    tifffile.imwrite(source, np.zeros((40, 48), np.uint8))
    predict(compose_predict([f"ckpt_path={ckpt}", f"input={source}", f"output={tmp_path / 'o'}"]))
    assert "blank: every pixel is 0; nothing to segment" in capsys.readouterr().out


# ---------------------------------------------------------------------------- training faults


class PoisonWeights(Callback):
    """Puts NaN into a training batch's weight map at one step, as a damaged cache would
    (on one rank only, if ``rank`` is given)."""

    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            size = batch["weight"].shape[-1]  # the centre: inside the network's output window
            batch["weight"][0, size // 2, size // 2] = float("nan")


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(good_data, tmp_path):
    run = tmp_path / "run"
    train(compose_train(overriding(TRAIN, "trainer.max_epochs=1"), run, good_data))
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    poison = ["+callbacks.poison._target_=test_bad_input.PoisonWeights", "+callbacks.poison.step=4"]
    with pytest.raises(NonFiniteError) as err:
        train(compose_train(overriding(TRAIN, *poison, "ckpt_path=last"), run, good_data))
    message = one_line(err)
    assert "non-finite loss" in message and "at step 4" in message
    assert "train-volume.tif slice" in message and "weight tensor holds 1 non-finite" in message
    assert "model.optimizer.lr" in message  # the likely causes
    assert last.read_bytes() == good  # never overwritten by a NaN model
    weights = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_non_finite_loss_on_one_ddp_rank_stops_every_rank(good_data, tmp_path):
    """NaN on rank 1 only: both ranks stop at that step with one line and exit 2, instead
    of rank 0 waiting in the gradient all-reduce for a rank that has stopped."""
    run = tmp_path / "run"
    args = [
        *overriding(TRAIN, "trainer.accelerator=cpu", "trainer.devices=2"),
        "trainer=ddp",
        "+callbacks.poison._target_=test_bad_input.PoisonWeights",
        "+callbacks.poison.step=1",
        "+callbacks.poison.rank=1",
        f"hydra.run.dir={run}",
    ]
    process = run_cli("train", args, good_data, tmp_path / "cache")
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("a rank is still waiting after 300 s")
    assert process.returncode == 2, err[-3000:]
    assert (
        "Traceback" not in err and "error: non-finite loss on 1 other of 2 ranks at step 1" in err
    )
    assert "error: non-finite loss (nan) at step 1" in err  # rank 1's line (same stderr)


def test_corrupted_cache_is_recomputed_to_the_same_loss(good_data, tmp_path):
    fresh = tmp_path / "fresh"
    first = train(compose_train(overriding(TRAIN, "trainer.max_epochs=1"), fresh, good_data))
    cache = fresh / "cache"
    files = sorted(cache.glob("weights-*.npz"))
    assert files
    for file in files:  # a well-formed file whose values are garbage
        with np.load(file) as stored:
            checksum, shape = stored["checksum"], stored["weights"].shape
        np.savez(file, weights=np.full(shape, np.nan, np.float32), checksum=checksum)
    again_run = tmp_path / "again"
    cfg = compose_train(overriding(TRAIN, "trainer.max_epochs=1"), again_run, good_data)
    with open_dict(cfg):
        cfg.data.cache_dir = str(cache)
    again = train(cfg)
    assert again["train/loss"] == pytest.approx(first["train/loss"], rel=1e-5)
    for file in files:
        with np.load(file) as stored:
            assert np.isfinite(stored["weights"]).all()


def test_unwritable_cache_trains_in_memory_with_one_warning(good_data, tmp_path):
    (tmp_path / "a_file").write_text("x")
    cfg = compose_train(overriding(TRAIN, "trainer.max_epochs=1"), tmp_path / "run", good_data)
    with open_dict(cfg):
        cfg.data.cache_dir = str(tmp_path / "a_file" / "cache")
    with pytest.warns(CacheWarning, match="cannot be written") as caught:
        metrics = train(cfg)
    assert len([w for w in caught if w.category is CacheWarning]) == 1
    assert np.isfinite(metrics["train/loss"])


def test_resume_with_another_architecture_is_refused_before_any_log(good_data, tmp_path):
    run = tmp_path / "run"
    train(compose_train(overriding(TRAIN, "trainer.max_epochs=1"), run, good_data))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for change in (["model.net.base_channels=8"], ["model.net.padding=same", "data.tile_size=128"]):
        cfg = compose_train(overriding(TRAIN, *change, "ckpt_path=last"), run, good_data)
        with pytest.raises(UserError) as err:
            train(cfg)
        message = one_line(err)
        assert "cannot resume" in message and change[0].split("=")[0].split(".")[-1] in message
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no new folder


def test_epoch_lines_in_train_log(good_data, tmp_path):
    run = tmp_path / "run"
    train(compose_train(overriding(TRAIN, "logger=none"), run, good_data))
    lines = (run / "train.log").read_text().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["epoch", "1/2", "step", "3"],
        ["epoch", "2/2", "step", "6"],
    ]
    assert all("train/loss" in line and "val/pixel_error" in line for line in lines)
    assert all(line.endswith(" s") for line in lines)
    metrics = json.dumps({"lines": lines})  # plain text only
    assert "\x1b" not in metrics


# ---------------------------------------------------------------------------- command lines


def run_cli(script: str, args: list[str], data: Path, cache: Path, **kwargs):
    env = dict(os.environ, UNET_DATA_DIR=str(data), UNET_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    return subprocess.Popen(
        [sys.executable, f"src/{script}.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_command_lines_exit_2_with_one_line(good_data, ckpt, tmp_path):
    """Three representative cases through the real entry points, run side by side."""
    stack = _write_stack(tmp_path / "stack.tif", 30)
    truncate(stack)
    cache = tmp_path / "cache"
    runs = {
        "trainer.max_epochs='abc'": run_cli(
            "train", ["trainer.max_epochs=abc", f"hydra.run.dir={tmp_path / 't'}"], good_data, cache
        ),
        "stack.tif: truncated": run_cli(
            "predict",
            [f"ckpt_path={ckpt}", f"input={stack}", f"output={tmp_path / 'p'}"],
            good_data,
            cache,
        ),
        "data=foo: there is no 'data/foo' config": run_cli(
            "train", ["data=foo", f"hydra.run.dir={tmp_path / 'c'}"], good_data, cache
        ),
        "split='test'": run_cli(
            "eval",
            [f"ckpt_path={ckpt}", "split=test", f"hydra.run.dir={tmp_path / 'e'}"],
            good_data,
            cache,
        ),
    }
    for words, process in runs.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 2, err[-2000:]
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("error: ") and words in err, err
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


# Mistakes Hydra itself cannot compose: (config, command line, words the one line must hold).
COMPOSITION_CASES = {
    "unknown choice": ("train", ["data=foo"], ["data=foo", "hela, isbi, u373"]),
    "unknown experiment": ("train", ["experiment=isbi"], ["experiment=isbi", "isbi_cpu"]),
    "misspelt key": ("train", ["trainer.max_epoch=2"], ["trainer.max_epochs", "+trainer"]),
    "unknown nested key": ("train", ["data.nosuch.deep=3"], ["'data.nosuch.deep'"]),
    "misspelt eval key": ("eval", ["splitt=val"], ["did you mean split?"]),
    "misspelt export key": ("export", ["formatt=onnx"], ["did you mean format?"]),
    "unreadable value": ("train", ["data.tile_size=[1"], ["data.tile_size=[1", "key=value"]),
    "sweep without -m": ("train", ["seed=1,2"], ["seed=1,2", "--multirun"]),
    "unknown sweeper": ("train", ["-m", "hydra/sweeper=optunaa"], ["basic, optuna"]),
}


@pytest.mark.parametrize("case", sorted(COMPOSITION_CASES))
def test_composition_mistake_is_one_line_exit_2(case, capsys):
    config, argv, words = COMPOSITION_CASES[case]
    with pytest.raises(SystemExit) as stop:
        check_command_line(ROOT / "configs", config, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err


def test_export_entry_point_checks_its_command_line(tmp_path):
    # src/export.py runs the same check as the other entry points, before Hydra starts
    command = [sys.executable, str(ROOT / "src" / "export.py"), "ckpt_path=x.ckpt", "formatt=onnx"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "did you mean format?" in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment=isbi_cpu", "seed=3", "hydra.run.dir=/tmp/x"],
        ["-m", "seed=1,2", "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))"],
        ["-m", "hydra/sweeper=optuna", "data=glob(*)"],
        ["+trainer.max_steps=2"],
        ["--help"],
    ],
)
def test_command_lines_hydra_accepts_pass_the_check(argv):
    check_command_line(ROOT / "configs", "train", argv)  # no SystemExit


def test_sigkill_mid_epoch_then_ckpt_path_last_continues(good_data, tmp_path):
    """A real SIGKILL in the second epoch; the rerun with ckpt_path=last finishes the run
    from the end of the first epoch and keeps the killed run's logs."""
    run = tmp_path / "run"
    ready = tmp_path / "ready"
    args = overriding(TRAIN, "trainer.max_epochs=3", f"hydra.run.dir={run}", "logger=csv")
    hold = [
        "+callbacks.hold._target_=test_bad_input.HoldAtStep",
        "+callbacks.hold.step=4",
        f"+callbacks.hold.signal_file={ready}",
    ]
    cache = tmp_path / "cache"
    process = run_cli("train", [*args, *hold], good_data, cache, start_new_session=True)
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_log = (run / "train.log").read_text()
    assert "epoch 1/3 step 3" in killed_log
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    resumed = run_cli("train", [*args, "ckpt_path=last"], good_data, cache)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    log = (run / "train.log").read_text()
    assert log.startswith(killed_log)  # the earlier lines are kept
    assert "epoch 2/3 step 6" in log and "epoch 3/3 step 9" in log
    assert "epoch 2/3 step 6" in out  # stdout is not a terminal: the lines show there too
    assert (run / "csv" / "metrics.csv").is_file() and (run / "csv" / "resume-1").is_dir()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9


class HoldAtStep(Callback):
    """At ``step``, mid-epoch, tell the test (a file) and wait to be killed."""

    def __init__(self, step: int, signal_file: str):
        self.step, self.signal_file = step, signal_file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.signal_file).write_text("ready")
            time.sleep(600)


def test_checkpoints_are_written_atomically_in_their_own_folder(tmp_path, monkeypatch):
    from unet.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    good = path.read_bytes()

    def killed_midway(obj, f):  # the write dies after some bytes
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == good  # the earlier checkpoint is whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
