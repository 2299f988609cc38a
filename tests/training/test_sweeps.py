"""Sweeps and cluster launch from config: a grid multirun of DDP jobs with offline W&B, an
Optuna sweep, and the SLURM launcher's sbatch script (composed, not submitted)."""

from __future__ import annotations

import os

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf


def test_multirun_of_ddp_jobs_gives_one_folder_and_one_wandb_run_per_job(
    tmp_path, run_train, tiny_run_overrides, offline_wandb_runs
):
    sweep = tmp_path / "sweep"
    run_train(
        [
            "-m",
            *tiny_run_overrides,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "logger=[csv,wandb]",
            "callbacks.validation_images.every_n_epochs=1",
            "logger.wandb.log_model=true",
            "model.optimizer.lr=0.01,0.02",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    run_ids, groups = [], set()
    for job, lr in zip(jobs, (0.01, 0.02), strict=True):
        assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        ((run, run_id),) = offline_wandb_runs(job)  # exactly one W&B run per job
        run_ids.append(run_id)
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


def test_optuna_sweep_of_two_trials_reports_the_best(tmp_path, run_train, tiny_run_overrides):
    sweep = tmp_path / "optuna"
    run_train(
        [
            *tiny_run_overrides,
            "logger=csv",
            "validate=false",
            "hparams_search=isbi_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={sweep}",
        ]
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


def test_slurm_launcher_config_composes_into_a_valid_sbatch_script(
    configs_dir, tmp_path, monkeypatch
):
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    with initialize_config_dir(str(configs_dir), version_base="1.3"):
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
