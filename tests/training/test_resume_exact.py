"""Exact resumption (unet.training.last_checkpoint, unet.data.samples.ResumableLoader): last.ckpt is
the last completed epoch or step, never the best one; a run killed or stopped by a signal
at any step goes on from there to the uninterrupted run's weights; training's redirected
output is plain text; the debug configs write no checkpoints they say they do not."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict

from unet.data.samples import EpochIndexSampler, RandomTileDataset, training_dataloader
from unet.errors import Interrupted
from unet.training.task import train

ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 3 steps; the best checkpoint is the first epoch's ("epoch" is always lowest
# there), so that last and best differ
BEST_FIRST = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
RUN = ["trainer.max_epochs=3", "model/scheduler=cosine", "model.scheduler.T_max=3"]


class KilledError(RuntimeError):
    pass


class KillAtStep(Callback):
    """Stops a run without warning after ``step`` optimizer steps, as a kill would (before
    last.ckpt is written at that step: checkpoint callbacks run after the others)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise KilledError(f"killed at step {trainer.global_step}")


class SignalAtStep(Callback):
    """Sends this process ``signal`` once after ``step`` optimizer steps."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal, self.sent = step, signal, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))


def stored(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path, net_weights) -> None:
    wa, wb = net_weights(a), net_weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"


@pytest.fixture
def exact_overrides(tiny_run_overrides) -> list[str]:
    return [*tiny_run_overrides, *RUN, *BEST_FIRST, "validate=false"]


@pytest.fixture
def compose(compose_train, data_dir, tmp_path):
    """``compose(overrides, run)``: runs of one test share one weight-map cache, as runs on
    one machine do (two computations of a map in one process can differ in the last bit)."""

    def make(overrides: list[str], run: Path):
        cfg = compose_train(overrides, run, data_dir)
        with open_dict(cfg):
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    return make


@pytest.fixture
def whole_run(exact_overrides, compose, tmp_path) -> Path:
    """The uninterrupted run: 3 epochs of 3 steps, best checkpoint at the first epoch."""
    run = tmp_path / "whole"
    train(compose(exact_overrides, run))
    return run


def test_last_ckpt_is_the_last_epoch_not_the_best(whole_run):
    (best,) = (whole_run / "checkpoints").glob("best-*.ckpt")
    assert best.name == "best-epoch000.ckpt" and stored(best)["global_step"] == 3
    last = stored(whole_run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 9
    # what the project stores beside the weights is in last.ckpt too
    assert {"net_config", "net_probe", "logger_versions"} <= last.keys()


def test_run_killed_after_a_non_best_epoch_resumes_there_to_identical_weights(
    whole_run, exact_overrides, compose, tmp_path, net_weights
):
    """Killed in epoch 3 (step 7): last.ckpt is the end of epoch 2 (step 6, not the best),
    and the resumed run trains only steps 7-9."""
    run = tmp_path / "killed"
    kill = [
        "+callbacks.kill._target_=tests.training.test_resume_exact.KillAtStep",
        "+callbacks.kill.step=7",
    ]
    with pytest.raises(KilledError):
        train(compose([*exact_overrides, *kill], run))
    before = stored(run / "checkpoints" / "last.ckpt")
    assert before["epoch"] == 1 and before["global_step"] == 6

    train(compose([*exact_overrides, "ckpt_path=last"], run))
    with open(run / "csv" / "resume-1" / "metrics.csv") as f:
        validated = {row["epoch"] for row in csv.DictReader(f) if row["val/pixel_error"]}
    assert validated == {"2"}  # the resumed run trained and validated epoch 3 only
    assert_same_weights(
        whole_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt", net_weights
    )


def test_mid_epoch_kill_resumes_at_the_step_with_the_same_tiles(
    whole_run, exact_overrides, compose, tmp_path, net_weights
):
    """With a step checkpoint every step, a kill at step 6 leaves last.ckpt at step 5, in
    the middle of epoch 2; the resumed run trains on the rest of that epoch's tiles."""
    run = tmp_path / "killed"
    every = "callbacks.last_checkpoint.every_n_train_steps=1"
    kill = [
        "+callbacks.kill._target_=tests.training.test_resume_exact.KillAtStep",
        "+callbacks.kill.step=6",
    ]
    with pytest.raises(KilledError):
        train(compose([*exact_overrides, every, *kill], run))
    before = stored(run / "checkpoints" / "last.ckpt")
    assert before["epoch"] == 1 and before["global_step"] == 5
    loader = before["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader == [{"epoch": 1, "batches": 2}]  # 2 of epoch 2's 3 batches were trained

    train(compose([*exact_overrides, every, "ckpt_path=last"], run))
    after = stored(run / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 2 and after["global_step"] == 9
    assert_same_weights(
        whole_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt", net_weights
    )


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_resumed_mid_epoch_yields_the_rest_of_that_epoch(num_workers):
    """The batches before a checkpoint and those after loading its state are one epoch."""
    images = [torch.rand(40, 40).numpy()]
    dataset = RandomTileDataset(images, [images[0] > 0.5], images, 16, 12, seed=3)

    def epoch(loader, k: int) -> list[torch.Tensor]:
        loader.sampler.set_epoch(k)
        return [batch["source"] for batch in loader]

    full = epoch(training_dataloader(dataset, 2, num_workers), 2)
    loader = training_dataloader(dataset, 2, num_workers)
    loader.sampler.set_epoch(2)
    first = []
    for batch in loader:
        first.append(batch["source"])
        if len(first) == 2:
            break
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2}

    resumed = training_dataloader(dataset, 2, num_workers)
    resumed.load_state_dict(state)
    iterator = iter(resumed)  # as Lightning: the iterator exists before the epoch is set
    resumed.sampler.set_epoch(2)
    rest = list(batch["source"] for batch in iterator)
    assert len(rest) == 4 and resumed.state_dict()["batches"] == 6
    assert all(torch.equal(a, b) for a, b in zip(first + rest, full, strict=True))
    assert len(epoch(resumed, 3)) == 6  # the next epoch is whole again
    assert isinstance(resumed.sampler, EpochIndexSampler)


def test_sigint_stops_at_the_step_with_a_checkpoint_and_exit_code_130(
    exact_overrides, compose_train, data_dir, tmp_path
):
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    send = [
        "+callbacks.send._target_=tests.training.test_resume_exact.SignalAtStep",
        "+callbacks.send.step=4",
    ]
    send.append("+callbacks.send.signal=SIGINT")
    with pytest.raises(Interrupted) as caught:
        train(compose_train([*exact_overrides, *send], run, data_dir))
    assert caught.value.exit_code == 130
    assert "SIGINT" in str(caught.value) and "ckpt_path=last" in str(caught.value)
    assert stored(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is handler  # restored after training
    assert not (run / "metrics.json").exists()


def run_train(args: list[str], data_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    """``src/train.py`` of this checkout as a subprocess, its output redirected (not a tty)."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, UNET_DATA_DIR=str(data_dir), UNET_CACHE_DIR=str(cache), PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "src/train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sigterm_exits_143_with_one_line_then_resumes_to_the_end(
    small_overrides, data_dir, tmp_path
):
    """A SIGTERM in the middle of epoch 2 (after step 4): last.ckpt at step 4, exit code 143,
    one line naming ckpt_path=last, no traceback and no metrics.json; ckpt_path=last then
    trains to the end. The redirected output has no progress-bar leftovers."""
    run = tmp_path / "run"
    args = [*small_overrides, "debug=limit", *RUN, f"hydra.run.dir={run}", "logger=csv"]
    send = [
        "+callbacks.send._target_=tests.training.test_resume_exact.SignalAtStep",
        "+callbacks.send.step=4",
    ]
    stopped = run_train([*args, *send], data_dir, tmp_path / "cache")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    message = [line for line in stopped.stderr.splitlines() if line.startswith("stopped by")]
    assert len(message) == 1 and "ckpt_path=last" in message[0] and str(run) in message[0]
    assert stored(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (run / "metrics.json").exists()

    resumed = run_train([*args, "ckpt_path=last"], data_dir, tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stored(run / "checkpoints" / "last.ckpt")["global_step"] == 9
    assert (run / "metrics.json").is_file()
    for result in (stopped, resumed):
        for text in (result.stdout, result.stderr):
            assert "\x1b[" not in text and "\r" not in text
    assert "training: U-Net of" in stopped.stdout and "from epoch 2" in resumed.stdout
    assert resumed.stdout.count("epoch 3/3 step 9") == 1  # EpochLog's plain lines


def test_fast_dev_run_writes_no_checkpoint_and_no_log(
    small_overrides, compose_train, data_dir, tmp_path
):
    """configs/debug/fast_dev_run.yaml: "no checkpoints or logs"."""
    overrides = ["debug=fast_dev_run", "trainer.enable_progress_bar=false", *small_overrides]
    overrides.append("logger=[csv,tensorboard]")
    metrics = train(compose_train(overrides, tmp_path / "run", data_dir))
    assert "train/loss" in metrics  # it did train
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert [p for p in written if p.parts[1] != "cache"] == []
