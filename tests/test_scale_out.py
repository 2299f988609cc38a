"""Scale out and track: DDP, W&B (offline), multirun and Optuna sweeps, SLURM config, resume.

The runs are tiny (4-channel nets on 96x96 crops of the real ISBI data, a few steps), but
they go through the real entry point, Lightning's DDP launcher (two CPU processes, gloo),
Hydra's sweepers and W&B's offline writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback
from omegaconf import OmegaConf, open_dict
from test_configs import CONFIGS, compose_train

from unet.callbacks import validation_panel
from unet.data.samples import EpochIndexSampler
from unet.distributed import LAUNCH_VARIABLES, relaunch_as_this_job
from unet.training import train

ROOT = CONFIGS.parent
TINY = [
    "model.net.base_channels=4",
    "model.net.depth=3",
    "data.tile_size=124",
    "data.crop=96",
    "data.num_workers=0",
    "debug=limit",  # 2 epochs of 3 training and 2 validation batches
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}


def run_train(args: list[str], data_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, UNET_DATA_DIR=str(data_dir), UNET_CACHE_DIR=str(tmp_path / "cache"))
    env.update(OFFLINE)
    result = subprocess.run(
        [sys.executable, "src/train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def net_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# ---------------------------------------------------------------------------- sampler


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (12, 3), (5, 4)])
def test_epoch_sampler_shards_without_overlap_and_keeps_step_order(n, world):
    for epoch in (0, 3):
        shards = []
        for rank in range(world):
            sampler = EpochIndexSampler(n, rank, world)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(shards[-1]) == len(sampler) == n // world
        flat = [i for shard in shards for i in shard]
        assert len(set(flat)) == len(flat)  # no tile twice
        assert all(epoch * n <= i < (epoch + 1) * n for i in flat)
        # step k of W ranks with batch B covers what one process's step k covers with W * B
        for step in range(n // world):
            assert sorted(shard[step] for shard in shards) == list(
                range(epoch * n + world * step, epoch * n + world * (step + 1))
            )


def test_epoch_sampler_rejects_bad_shares():
    with pytest.raises(ValueError, match="rank"):
        EpochIndexSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        EpochIndexSampler(1, rank=0, world_size=2)


# --------------------------------------------------------------- DDP child command line


def test_relaunch_runs_this_job_not_the_sweep(tmp_path, monkeypatch):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["model.optimizer.lr=0.02"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "1")
        cfg.hydra.overrides.task = ["model.optimizer.lr=0.02", "trainer=ddp"]
    HydraConfig.instance().set_config(cfg)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    argv = ["src/train.py", "-m", "model.optimizer.lr=0.01,0.02", "trainer=ddp"]
    monkeypatch.setattr(sys, "argv", argv)
    with relaunch_as_this_job():
        assert sys.argv == ["src/train.py", "model.optimizer.lr=0.02", "trainer=ddp"]
        assert HydraConfig.get().run.dir == str(tmp_path / "sweep" / "1")
        os.environ["LOCAL_RANK"] = "0"  # what Lightning's launcher leaves behind
        os.environ["MASTER_PORT"] = "12910"
    assert sys.argv == argv and HydraConfig.get().run.dir != str(tmp_path / "sweep" / "1")
    assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ


# ------------------------------------------------------------------------------- DDP


def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    """Two gloo ranks with batch 1 each against one process with batch 2: the same tiles
    in every step and gradients averaged over the same 2 tiles, so the weights and the
    validation metric agree up to float summation order (tolerance 1e-5). Dropout is off:
    its masks are drawn per rank by design."""
    common = [*TINY, "model.net.dropout=0.0", "logger=csv"]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    run_train(
        [
            *common,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data.batch_size=1",
            f"hydra.run.dir={ddp_dir}",
        ],
        data_dir,
        tmp_path,
    )
    run_train([*common, "data.batch_size=2", f"hydra.run.dir={single_dir}"], data_dir, tmp_path)

    # one set of checkpoints and logs, in the one run folder
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == [
        "best-epoch001.ckpt",
        "last.ckpt",
    ]
    assert [p.name for p in (ddp_dir / "csv").glob("*.csv")] == ["metrics.csv"]
    assert not list(tmp_path.glob("outputs*"))
    assert (ddp_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder

    ddp, single = (json.loads((d / "metrics.json").read_text()) for d in (ddp_dir, single_dir))
    for name in ("val/pixel_error", "val/iou", "val/loss"):
        assert ddp[name] == pytest.approx(single[name], abs=1e-5), name
    a, b = (
        net_weights(ddp_dir / "checkpoints" / "last.ckpt"),
        net_weights(single_dir / "checkpoints" / "last.ckpt"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    moved = net_weights(ddp_dir / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(v, 0 * v) for v in moved.values())


# ------------------------------------------------------------------- multirun + W&B


def test_multirun_of_ddp_jobs_gives_one_folder_and_one_wandb_run_per_job(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    run_train(
        [
            "-m",
            *TINY,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "logger=[csv,wandb]",
            "callbacks.validation_images.every_n_epochs=1",
            "logger.wandb.log_model=true",
            "model.optimizer.lr=0.01,0.02",
            f"hydra.sweep.dir={sweep}",
        ],
        data_dir,
        tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    run_ids, groups = [], set()
    for job, lr in zip(jobs, (0.01, 0.02), strict=True):
        assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        (run,) = offline_runs(job)  # exactly one W&B run per job
        run_ids.append(run.name.rsplit("-", 1)[1])
        config = yaml.safe_load((run / "files" / "config_resolved.yaml").read_text())
        assert config["model"]["optimizer"]["lr"] == lr
        groups.add(config["logger"]["wandb"]["group"])
        log = next(run.glob("run-*.wandb")).read_bytes()
        assert b"val/pixel_error" in log and b"samples_per_epoch" in log  # metrics, config
        assert f"model-{run_ids[-1]}".encode() in log  # the checkpoint artifact
        images = list((run / "files" / "media" / "images").rglob("*.png"))
        assert len(images) >= 2  # two validation images at each of 2 epochs (+ final)
    assert len(set(run_ids)) == 2
    assert groups == {f"train-{sweep.name}"}  # grouped by the sweep


def test_validation_panel_shows_the_four_maps_at_the_output_size():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    target = np.zeros((10, 10), np.int64)
    target[:, 5:] = 1
    target[0, 0] = -1
    weight = np.ones((10, 10), np.float32)
    prob = np.full((6, 6), 0.25, np.float32)  # valid convolutions: smaller output
    panel = validation_panel(image, target, prob, weight)
    assert panel.shape == (6, 4 * 6 + 3 * 4) and panel.dtype == np.uint8
    assert (panel[:, 6 + 4 : 6 + 4 + 3] == 0).all() and (panel[:, 6 + 4 + 3 : 12 + 4] == 255).all()
    assert (panel[:, 20:26] == 64).all()  # P = 0.25
    assert (panel[:, 30:] == 255).all()  # weight at its maximum


# ---------------------------------------------------------------------------- Optuna


def test_optuna_sweep_of_two_trials_reports_the_best(data_dir, tmp_path):
    sweep = tmp_path / "optuna"
    run_train(
        [
            *TINY,
            "logger=csv",
            "validate=false",
            "hparams_search=isbi_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={sweep}",
        ],
        data_dir,
        tmp_path,
    )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    errors = []
    for trial in trials:
        metrics = (trial / "csv" / "metrics.csv").read_text().splitlines()
        column = metrics[0].split(",").index("val/pixel_error")
        errors.append(
            float([r for r in metrics[1:] if r.split(",")[column]][-1].split(",")[column])
        )
    assert results["best_value"] == pytest.approx(min(errors), abs=1e-6)
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data.augmentation.elastic_std",
    }


# ---------------------------------------------------------------------------- SLURM


def test_slurm_launcher_config_composes_into_a_valid_sbatch_script(tmp_path, monkeypatch):
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "cluster=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert cfg.ckpt_path == "last" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # every key is one the plugin knows (its dataclass raises on others)
    known = set(SlurmQueueConf.__dataclass_fields__)
    assert set(launcher) - {"_target_"} <= known
    # the executor the plugin builds (hydra_submitit_launcher's launch(), up to submission)
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    bin_dir = tmp_path / "bin"  # submitit looks for srun; nothing is submitted
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    params["submitit_folder"] = str(tmp_path / "submitit")
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(BaseQueueConf.__dataclass_fields__)
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m job", "0")
    for line in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=1",
        "#SBATCH --time=1440",
        "#SBATCH --mem=64GB",
    ):
        assert line in script, line


# ---------------------------------------------------------------------------- resume


class KillAtStep(Callback):
    """Stops a run without warning after ``step`` optimizer steps, as a kill would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise KilledError(f"killed at step {trainer.global_step}")


class KilledError(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_weights_and_wandb_run(data_dir, tmp_path, monkeypatch):
    """3 epochs of 3 steps, killed in the third epoch (step 7) and resumed from the end of
    the second: SGD momentum, the cosine schedule, the epoch (hence the tiles) and dropout
    (keyed by step) continue where they were, so the weights equal the uninterrupted run's
    up to float rounding. Tolerance 1e-6: two uninterrupted runs of this config in one
    process already differ by up to 3e-8 here (CPU convolution kernels are not bitwise
    reproducible, even with trainer.deterministic=true)."""
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    overrides = [
        *TINY,
        "trainer.max_epochs=3",
        "model/scheduler=cosine",
        "model.scheduler.T_max=3",
        "logger=[csv,wandb]",
        "validate=false",
    ]
    whole = tmp_path / "whole"
    train(compose_train(overrides, whole, data_dir))

    killed = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=test_scale_out.KillAtStep", "+callbacks.kill.step=7"]
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
    runs = offline_runs(killed)
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1
    assert before["logger_versions"]["WandbLogger"] == runs[0].name.rsplit("-", 1)[1]


def test_ckpt_path_last_without_checkpoint_starts_fresh_and_bad_paths_are_named(data_dir, tmp_path):
    from unet.checkpoint import CheckpointNotFoundError

    run = tmp_path / "run"
    cfg = compose_train(["debug=fast_dev_run", *TINY[:5], "ckpt_path=last"], run, data_dir)
    train(cfg)  # nothing to resume: trains from scratch
    cfg = compose_train(["debug=fast_dev_run", *TINY[:5], "ckpt_path=nowhere.ckpt"], run, data_dir)
    with pytest.raises(CheckpointNotFoundError, match="nowhere.ckpt"):
        train(cfg)
