"""Bad evaluation settings and damaged prediction stacks given to ``src/eval.py``.

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. The shared pieces (the synthetic
ISBI folder, the tiny checkpoint, ``one_line``, ``overriding``, ...) are fixtures of
tests/conftest.py. The README's "Reliability" section lists the cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unet.errors import UserError
from unet.evaluation.task import evaluate

EVAL_CASES = {
    "split=test": "split='test': expected val or train",
    "ckpt_path=nowhere.ckpt": "nowhere.ckpt",
    "data.val_slices=0": "data.val_slices=0",
}


@pytest.mark.parametrize("override", sorted(EVAL_CASES))
def test_bad_eval_setting(
    override, synthetic_isbi, tiny_valid_ckpt, tmp_path, one_line, overriding, compose_eval
):
    base = [f"ckpt_path={tiny_valid_ckpt}", f"data.data_dir={synthetic_isbi}", "data.val_slices=1"]
    cfg = compose_eval(overriding(base, override), tmp_path / "eval")
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert EVAL_CASES[override] in one_line(err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "NaN", "0..255"])
def test_damaged_prediction_stack_is_not_scored(
    damage, synthetic_isbi, tmp_path, one_line, compose_eval, truncate
):
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
        [f"predictions={stack}", f"data.data_dir={synthetic_isbi}", "data.val_slices=1"],
        tmp_path / "eval",
    )
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    message = one_line(err)
    words = {"truncated": "truncated", "NaN": "NaN", "0..255": "found values in [0.5, 255]"}
    assert "probabilities.tif" in message and words[damage] in message, message
    assert not (tmp_path / "eval" / "metrics.json").exists()
