"""Bad prediction input and settings, edited checkpoints, and interrupted, killed or
unwritable prediction outputs.

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. The shared pieces (the synthetic
ISBI folder, the tiny checkpoint, ``one_line``, ``overriding``, ...) are fixtures of
tests/conftest.py. The README's "Reliability" section lists the cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import truncate_file, write_gray_stack
from unet.errors import UserError
from unet.io.atomic import partial_path
from unet.predict.task import predict

PREDICT_CASES = {  # name -> (make input from tmp_path, extra overrides, words)
    "truncated stack": (
        lambda d: (truncate_file(p := write_gray_stack(d / "stack.tif", 30)), p)[1],
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
    "tta=flips": (lambda d: write_gray_stack(d / "s.tif"), ["tta=flips"], "tta='flips'"),
    "device=gpu0": (lambda d: write_gray_stack(d / "s.tif"), ["device=gpu0"], "device='gpu0'"),
    "threshold=abc": (
        lambda d: write_gray_stack(d / "s.tif"),
        ["postprocess.threshold=abc"],
        "postprocess.threshold='abc'",
    ),
    "threshold=2": (
        lambda d: write_gray_stack(d / "s.tif"),
        ["postprocess.threshold=2"],
        "postprocess.threshold=2",
    ),
    "min_area=-1": (
        lambda d: write_gray_stack(d / "s.tif"),
        ["postprocess.min_area=-1"],
        "postprocess.min_area=-1",
    ),
    "overwrite=yes": (
        lambda d: write_gray_stack(d / "s.tif"),
        ["overwrite=yes"],
        "overwrite='yes'",
    ),
    "precision=16": (lambda d: write_gray_stack(d / "s.tif"), ["precision=16"], "precision=16"),
    "tiler.tile_size=abc": (
        lambda d: write_gray_stack(d / "s.tif"),
        ["tiler.tile_size=abc"],
        "tiler.tile_size='abc'",
    ),
    "tiler.tile_size=50": (
        lambda d: write_gray_stack(d / "s.tif"),
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
    truncate_file(frames / "t002.tif", 0.3)
    return frames


def _text(path: Path) -> Path:
    path.write_text("not an image")
    return path


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_prediction_input_writes_nothing(
    case, tiny_valid_ckpt, tmp_path, one_line, compose_predict
):
    make, overrides, words = PREDICT_CASES[case]
    source = make(tmp_path)
    out = tmp_path / "out"
    cfg = compose_predict(
        [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}", *overrides]
    )
    with pytest.raises(UserError) as err:
        predict(cfg)
    assert words in one_line(err)
    assert not out.exists() and not partial_path(out).exists()


def test_non_finite_input_is_replaced_only_on_request(
    tiny_valid_ckpt, tmp_path, capsys, compose_predict
):
    """nonfinite=median predicts a NaN patch like the rest of the frame (finite output, one
    warning); the default refuses the same file (PREDICT_CASES)."""
    source = _nan_stack(tmp_path / "nan.tif")
    out = tmp_path / "out"
    predict(
        compose_predict(
            [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}", "nonfinite=median"]
        )
    )
    probabilities = tifffile.imread(out / "probabilities.tif")
    assert probabilities.shape[0] == 3 and np.isfinite(probabilities).all()
    assert "100 of 5760 pixels are NaN or infinite" in capsys.readouterr().out


def test_missing_required_setting(tmp_path, one_line, compose_predict):
    with pytest.raises(UserError) as err:
        predict(compose_predict([f"output={tmp_path / 'out'}"]))
    assert "ckpt_path=..., input=..." in one_line(err)


def test_checkpoint_whose_architecture_was_edited_is_refused(
    tiny_valid_ckpt, tmp_path, one_line, compose_predict
):
    checkpoint = torch.load(tiny_valid_ckpt, weights_only=True)
    checkpoint["net_config"]["padding"] = "same"  # loads the same weights without complaint
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    source = write_gray_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        predict(compose_predict([f"ckpt_path={edited}", f"input={source}", f"output={out}"]))
    message = one_line(err)
    assert "edited.ckpt" in message and "does not fit its weights" in message
    assert not out.exists()


def test_overwrite_replaces_the_whole_folder_and_refusal_keeps_it(
    tiny_valid_ckpt, tmp_path, one_line, compose_predict
):
    source = write_gray_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    base = [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}"]
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


def test_interrupted_prediction_leaves_nothing_that_looks_complete(
    tiny_valid_ckpt, tmp_path, monkeypatch, compose_predict
):
    import unet.predict.output_folder

    source = write_gray_stack(tmp_path / "s.tif", 5)
    out = tmp_path / "out"
    base = [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}"]
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


def test_killed_prediction_is_named_on_the_next_run(
    tiny_valid_ckpt, tmp_path, one_line, compose_predict
):
    source = write_gray_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    partial = partial_path(out)  # what a SIGKILL mid-prediction leaves
    (partial / "labels").mkdir(parents=True)
    (partial / "probabilities.tif").write_bytes(b"II*\x00")
    base = [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}"]
    with pytest.raises(UserError) as err:
        predict(compose_predict(base))
    message = one_line(err)
    assert "out.partial" in message and "interrupted" in message and "overwrite=true" in message
    predict(compose_predict([*base, "overwrite=true"]))
    assert not partial.exists() and len(tifffile.imread(out / "probabilities.tif")) == 3


def test_unwritable_output_is_one_line(tiny_valid_ckpt, tmp_path, one_line, compose_predict):
    (tmp_path / "a_file").write_text("x")
    source = write_gray_stack(tmp_path / "s.tif")
    out = tmp_path / "a_file" / "out"
    with pytest.raises(UserError) as err:
        predict(
            compose_predict([f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={out}"])
        )
    assert "cannot write there" in one_line(err)


def test_blank_frame_is_predicted_with_a_warning(
    tiny_valid_ckpt, tmp_path, capsys, compose_predict
):
    source = tmp_path / "blank.tif"
    tifffile.imwrite(source, np.zeros((40, 48), np.uint8))
    predict(
        compose_predict(
            [f"ckpt_path={tiny_valid_ckpt}", f"input={source}", f"output={tmp_path / 'o'}"]
        )
    )
    assert "blank: every pixel is 0; nothing to segment" in capsys.readouterr().out
