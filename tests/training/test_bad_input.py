"""Bad training settings and faults during training: non-finite loss (also on one
DDP rank), a damaged or unwritable cache, resuming another architecture, a SIGKILL
mid-epoch, checkpoints written atomically.

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. The shared pieces (the synthetic
ISBI folder, the tiny checkpoint, ``one_line``, ``overriding``, ...) are fixtures of
tests/conftest.py. The README's "Reliability" section lists the cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict

from unet.data.weight_maps import CacheWarning
from unet.errors import UserError
from unet.training.guard import NonFiniteError
from unet.training.task import train

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
def test_bad_setting_is_one_line_naming_the_key(
    override,
    synthetic_isbi,
    tmp_path,
    one_line,
    overriding,
    no_run_output,
    compose_train,
    synthetic_train_overrides,
):
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train(compose_train(overriding(synthetic_train_overrides, override), run, synthetic_isbi))
    message = one_line(err)
    assert SETTING_CASES[override] in message, message
    no_run_output(run)


class PoisonWeights(Callback):
    """Puts NaN into a training batch's weight map at one step, as a damaged cache would
    (on one rank only, if ``rank`` is given)."""

    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            size = batch["weight"].shape[-1]  # the centre: inside the network's output window
            batch["weight"][0, size // 2, size // 2] = float("nan")


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    synthetic_isbi, tmp_path, one_line, overriding, compose_train, synthetic_train_overrides
):
    run = tmp_path / "run"
    train(
        compose_train(
            overriding(synthetic_train_overrides, "trainer.max_epochs=1"), run, synthetic_isbi
        )
    )
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    poison = [
        "+callbacks.poison._target_=tests.training.test_bad_input.PoisonWeights",
        "+callbacks.poison.step=4",
    ]
    with pytest.raises(NonFiniteError) as err:
        train(
            compose_train(
                overriding(synthetic_train_overrides, *poison, "ckpt_path=last"),
                run,
                synthetic_isbi,
            )
        )
    message = one_line(err)
    assert "non-finite loss" in message and "at step 4" in message
    assert "train-volume.tif slice" in message and "weight tensor holds 1 non-finite" in message
    assert "model.optimizer.lr" in message  # the likely causes
    assert last.read_bytes() == good  # never overwritten by a NaN model
    weights = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_non_finite_loss_on_one_ddp_rank_stops_every_rank(
    synthetic_isbi, tmp_path, overriding, run_cli, synthetic_train_overrides
):
    """NaN on rank 1 only: both ranks stop at that step with one line and exit 2, instead
    of rank 0 waiting in the gradient all-reduce for a rank that has stopped."""
    run = tmp_path / "run"
    args = [
        *overriding(synthetic_train_overrides, "trainer.accelerator=cpu", "trainer.devices=2"),
        "trainer=ddp",
        "+callbacks.poison._target_=tests.training.test_bad_input.PoisonWeights",
        "+callbacks.poison.step=1",
        "+callbacks.poison.rank=1",
        f"hydra.run.dir={run}",
    ]
    process = run_cli("train", args, synthetic_isbi, tmp_path / "cache")
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


def test_corrupted_cache_is_recomputed_to_the_same_loss(
    synthetic_isbi, tmp_path, overriding, compose_train, synthetic_train_overrides
):
    fresh = tmp_path / "fresh"
    first = train(
        compose_train(
            overriding(synthetic_train_overrides, "trainer.max_epochs=1"), fresh, synthetic_isbi
        )
    )
    cache = fresh / "cache"
    files = sorted(cache.glob("weights-*.npz"))
    assert files
    for file in files:  # a well-formed file whose values are garbage
        with np.load(file) as stored:
            checksum, shape = stored["checksum"], stored["weights"].shape
        np.savez(file, weights=np.full(shape, np.nan, np.float32), checksum=checksum)
    again_run = tmp_path / "again"
    cfg = compose_train(
        overriding(synthetic_train_overrides, "trainer.max_epochs=1"), again_run, synthetic_isbi
    )
    with open_dict(cfg):
        cfg.data.cache_dir = str(cache)
    again = train(cfg)
    assert again["train/loss"] == pytest.approx(first["train/loss"], rel=1e-5)
    for file in files:
        with np.load(file) as stored:
            assert np.isfinite(stored["weights"]).all()


def test_unwritable_cache_trains_in_memory_with_one_warning(
    synthetic_isbi, tmp_path, overriding, compose_train, synthetic_train_overrides
):
    (tmp_path / "a_file").write_text("x")
    cfg = compose_train(
        overriding(synthetic_train_overrides, "trainer.max_epochs=1"),
        tmp_path / "run",
        synthetic_isbi,
    )
    with open_dict(cfg):
        cfg.data.cache_dir = str(tmp_path / "a_file" / "cache")
    with pytest.warns(CacheWarning, match="cannot be written") as caught:
        metrics = train(cfg)
    assert len([w for w in caught if w.category is CacheWarning]) == 1
    assert np.isfinite(metrics["train/loss"])


def test_resume_with_another_architecture_is_refused_before_any_log(
    synthetic_isbi, tmp_path, one_line, overriding, compose_train, synthetic_train_overrides
):
    run = tmp_path / "run"
    train(
        compose_train(
            overriding(synthetic_train_overrides, "trainer.max_epochs=1"), run, synthetic_isbi
        )
    )
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for change in (["model.net.base_channels=8"], ["model.net.padding=same", "data.tile_size=128"]):
        cfg = compose_train(
            overriding(synthetic_train_overrides, *change, "ckpt_path=last"), run, synthetic_isbi
        )
        with pytest.raises(UserError) as err:
            train(cfg)
        message = one_line(err)
        assert "cannot resume" in message and change[0].split("=")[0].split(".")[-1] in message
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no new folder


def test_epoch_lines_in_train_log(
    synthetic_isbi, tmp_path, overriding, compose_train, synthetic_train_overrides
):
    run = tmp_path / "run"
    train(compose_train(overriding(synthetic_train_overrides, "logger=none"), run, synthetic_isbi))
    lines = (run / "train.log").read_text().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["epoch", "1/2", "step", "3"],
        ["epoch", "2/2", "step", "6"],
    ]
    assert all("train/loss" in line and "val/pixel_error" in line for line in lines)
    assert all(line.endswith(" s") for line in lines)
    metrics = json.dumps({"lines": lines})  # plain text only
    assert "\x1b" not in metrics


def test_sigkill_mid_epoch_then_ckpt_path_last_continues(
    synthetic_isbi, tmp_path, overriding, run_cli, synthetic_train_overrides
):
    """A real SIGKILL in the second epoch; the rerun with ckpt_path=last finishes the run
    from the end of the first epoch and keeps the killed run's logs."""
    run = tmp_path / "run"
    ready = tmp_path / "ready"
    args = overriding(
        synthetic_train_overrides, "trainer.max_epochs=3", f"hydra.run.dir={run}", "logger=csv"
    )
    hold = [
        "+callbacks.hold._target_=tests.training.test_bad_input.HoldAtStep",
        "+callbacks.hold.step=4",
        f"+callbacks.hold.signal_file={ready}",
    ]
    cache = tmp_path / "cache"
    process = run_cli("train", [*args, *hold], synthetic_isbi, cache, start_new_session=True)
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

    resumed = run_cli("train", [*args, "ckpt_path=last"], synthetic_isbi, cache)
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
    from unet.training.checkpoint_io import AtomicCheckpointIO

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
