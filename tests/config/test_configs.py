"""Every config group composes, and every option instantiates into real objects."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from unet.config.checks import build
from unet.data.augment.paper import Augmentation
from unet.inference.precision import resolve_precision
from unet.training.task import instantiate_all

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if p.stem != "default")


def test_every_group_has_options():
    for group in (
        "data",
        "model",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "experiment",
        "debug",
        "hydra",
        "hparams_search",
        "cluster",
    ):
        assert options(group) or (CONFIGS / group / "default.yaml").exists(), group


@pytest.mark.parametrize(
    "override",
    [
        f"{g}={o}"
        for g in ("data", "model", "logger", "callbacks", "experiment", "debug")
        for o in options(g)
    ]
    + [f"data/augmentation={o}" for o in options("data/augmentation")]
    + [f"model/{g}={o}" for g in ("optimizer", "scheduler") for o in options(f"model/{g}")]
    + ["trainer=cpu", "trainer=gpu", "trainer=ddp", "hparams_search=isbi_optuna", "cluster=slurm"],
)
def test_option_composes_and_instantiates(override, tmp_path, compose_train):
    cfg = compose_train([override], tmp_path)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, L.LightningDataModule)
    module = instantiate(cfg.model)
    assert isinstance(module, L.LightningModule)
    module.configure_optimizers()
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    assert all(isinstance(c, L.Callback) for c in callbacks)
    if cfg.trainer.accelerator == "gpu":
        return  # composing is all that can be checked without a GPU
    # built as every task builds it (unet.config.checks.build): trainer=cpu's default
    # precision=auto is resolved there, Lightning itself refuses "auto"
    trainer = build(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, L.Trainer)
    expected = cfg.trainer.precision
    if expected == "auto":
        expected = resolve_precision("auto", cfg.trainer.accelerator)
    assert trainer.precision == expected


@pytest.mark.parametrize("dataset", options("data"))
def test_augmentation_group_serves_every_dataset(dataset, tmp_path, compose_train):
    paper = instantiate(compose_train([f"data={dataset}"], tmp_path).data)
    assert isinstance(paper.augmentation, Augmentation)
    assert paper.augmentation.elastic_std == 10.0 and paper.augmentation.elastic_grid == 3
    plain = compose_train([f"data={dataset}", "data/augmentation=none"], tmp_path)
    assert instantiate(plain.data).augmentation is None


def test_cell_datasets_share_their_base(tmp_path, compose_train):
    hela, u373 = (compose_train([f"data={d}"], tmp_path).data for d in ("hela", "u373"))
    differ = {k for k in hela if hela[k] != u373[k]}
    assert differ == {"dataset", "unannotated_margin"}


def test_default_trainer_picks_the_accelerator(tmp_path, compose_train):
    # the paper's command (`model=unet data=isbi`, no trainer) uses a GPU where there is one
    cfg = compose_train(["model=unet", "data=isbi"], tmp_path)
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.devices == 1
    trainer = build(cfg, "trainer", logger=False, enable_progress_bar=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.strategy.root_device.type == expected


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_choose_their_device(experiment, tmp_path, compose_train):
    # the CPU recipes stay on the CPU even on a GPU machine; the paper's settings ask for one
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    # the *_long recipes are their *_cpu recipe trained longer
    experiment = experiment.replace("_long", "_cpu")
    assert cfg.trainer.accelerator == ("cpu" if experiment.endswith("_cpu") else "gpu")
    # bf16-mixed where the device runs it natively; the CPU recipes stay in fp32, as their
    # published results were measured
    assert cfg.trainer.precision == ("32-true" if experiment.endswith("_cpu") else "auto")
    # the CPU recipes keep channels_last where a timed train step is faster with it
    assert cfg.model.channels_last == ("auto" if experiment.endswith("_cpu") else False)


def test_eval_config_composes(tmp_path):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.split == "val" and cfg.data._target_.endswith("IsbiDataModule")


def test_unknown_keys_fail_loudly(tmp_path, compose_train):
    cfg = compose_train(["+model.net.channels=3"], tmp_path)
    with pytest.raises(Exception, match="channels"):
        instantiate(cfg.model)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNET_DATA_DIR", "/somewhere/data")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train")
    assert cfg.paths.data_dir == "/somewhere/data"
    assert cfg.data.data_dir == "/somewhere/data"
