"""Resuming a run (unet.training.task): a killed run goes on from its last checkpoint to the
weights and the W&B run of the uninterrupted one; ``ckpt_path=last`` starts fresh when there
is nothing to resume."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from unet.training.task import train


class KillAtStep(Callback):
    """Stops a run without warning after ``step`` optimizer steps, as a kill would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise KilledError(f"killed at step {trainer.global_step}")


class KilledError(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_weights_and_wandb_run(
    data_dir,
    tmp_path,
    wandb_offline,
    compose_train,
    tiny_run_overrides,
    net_weights,
    offline_wandb_runs,
):
    """3 epochs of 3 steps, killed in the third epoch (step 7) and resumed from the end of
    the second: SGD momentum, the cosine schedule, the epoch (hence the tiles) and dropout
    (keyed by step) continue where they were, so the weights equal the uninterrupted run's
    up to float rounding. Tolerance 1e-6: two uninterrupted runs of this config in one
    process already differ by up to 3e-8 here (CPU convolution kernels are not bitwise
    reproducible, even with trainer.deterministic=true)."""
    overrides = [
        *tiny_run_overrides,
        "trainer.max_epochs=3",
        "model/scheduler=cosine",
        "model.scheduler.T_max=3",
        "logger=[csv,wandb]",
        "validate=false",
    ]
    whole = tmp_path / "whole"
    train(compose_train(overrides, whole, data_dir))

    killed = tmp_path / "killed"
    kill = [
        "+callbacks.kill._target_=tests.training.test_resume.KillAtStep",
        "+callbacks.kill.step=7",
    ]
    with pytest.raises(KilledError):
        train(compose_train([*overrides, *kill], killed, data_dir))
    before = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 1 and before["global_step"] == 6

    train(compose_train([*overrides, "ckpt_path=last"], killed, data_dir))
    a, b = (
        net_weights(whole / "checkpoints" / "last.ckpt"),
        net_weights(killed / "checkpoints" / "last.ckpt"),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # the killed run's metrics are kept; the resumed part has its own file
    assert (killed / "csv" / "metrics.csv").read_text().count("\n") >= 5
    assert (killed / "csv" / "resume-1" / "metrics.csv").is_file()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9

    # the resumed run continued the killed run's W&B run
    # (ids read from the runs' own logs: when both start within one second, W&B names the
    # second folder offline-run-<time>-<id>-1)
    run_ids = [run_id for _, run_id in offline_wandb_runs(killed)]
    assert len(run_ids) == 2 and run_ids[0] == run_ids[1]
    assert before["logger_versions"]["WandbLogger"] == run_ids[0]


def test_ckpt_path_last_without_checkpoint_starts_fresh_and_bad_paths_are_named(
    data_dir, tmp_path, compose_train, small_overrides
):
    from unet.inference.checkpoint import CheckpointNotFoundError

    run = tmp_path / "run"
    cfg = compose_train(["debug=fast_dev_run", *small_overrides, "ckpt_path=last"], run, data_dir)
    train(cfg)  # nothing to resume: trains from scratch
    cfg = compose_train(
        ["debug=fast_dev_run", *small_overrides, "ckpt_path=nowhere.ckpt"], run, data_dir
    )
    with pytest.raises(CheckpointNotFoundError, match="nowhere.ckpt"):
        train(cfg)
