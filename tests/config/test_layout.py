"""Where the settings live: shared config nodes, the recorded data as eval's default, and
the command-line checks of every entry point."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unet.config.recorded_data import given_data_keys, with_recorded_data
from unet.data.settings import TileSettings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
CPU = ("isbi_cpu", "hela_cpu", "u373_cpu", "folder_cpu")


def compose_experiment(name: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}"])


@pytest.mark.parametrize("name", CPU)
def test_cpu_recipes_have_the_settings_they_document(name):
    cfg = compose_experiment(name)
    assert cfg.data.tile_size == 508 and cfg.data.num_workers == 1
    assert cfg.model.net.base_channels == 16
    # U373's short recipe normalises each tile by itself; the others keep batch norm
    instance = name == "u373_cpu"
    assert cfg.model.net.instance_norm == instance and cfg.model.net.batch_norm != instance
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.model.optimizer._target_.endswith("Adam") and cfg.task_name == name
    cells = name != "isbi_cpu"
    assert cfg.tta == ("flips8" if cells else "none")
    assert cfg.trainer.max_epochs == (16 if cells else 20)
    assert cfg.callbacks.model_checkpoint.monitor == ("val/iou" if cells else "val/pixel_error")
    assert cfg.model.optimizer.lr == (3e-4 if name == "u373_cpu" else 1e-3)
    assert cfg.trainer.gradient_clip_val == (1.0 if name == "u373_cpu" else None)
    data = {"isbi_cpu": "Isbi", "hela_cpu": "CellTracking", "u373_cpu": "CellTracking"}
    assert cfg.data._target_.endswith(data.get(name, "Folder") + "DataModule")


@pytest.mark.parametrize("dataset", ("isbi", "hela", "u373"))
def test_long_recipes_are_their_cpu_recipe_with_instance_norm_ended_by_epoch_count(dataset):
    cpu, long = compose_experiment(f"{dataset}_cpu"), compose_experiment(f"{dataset}_long")
    assert long.trainer.max_epochs == 48 and long.trainer.max_time is None
    assert long.model.net.instance_norm and not long.model.net.batch_norm
    for cfg in (cpu, long):
        del cfg.trainer.max_epochs, cfg.trainer.max_time, cfg.task_name
        del cfg.model.net.batch_norm, cfg.model.net.instance_norm
    assert OmegaConf.to_container(cpu) == OmegaConf.to_container(long)


def test_tile_settings_are_one_node_whose_values_python_shares():
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / "base" / "tiles.yaml"))
    defaults = asdict(TileSettings())
    interpolated = {"cache_dir", "seed"}  # ${paths.cache_dir}, ${seed}: run settings
    for key, value in node.items():
        if key not in interpolated:
            assert value == defaults[key], key
    assert set(node) | {"border_size"} == set(defaults)  # border_size: instance data only
    for name in ("isbi.yaml", "folder.yaml", "base/ctc.yaml"):
        text = (CONFIGS / "data" / name).read_text()
        assert "tiles@_here_" in text and "\ntile_size:" not in text, name


def test_predict_and_eval_share_one_postprocess_node():
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        predict = compose("predict", overrides=["ckpt_path=a", "input=b", "output=c"])
        evaluate = compose("eval", overrides=["postprocess.threshold=0.6"])
    assert set(predict.postprocess) == set(evaluate.postprocess) >= {"threshold", "regrow"}
    assert evaluate.postprocess.threshold == 0.6 and predict.postprocess.threshold is None
    for name in ("predict.yaml", "eval.yaml"):
        assert "\npostprocess:" not in (CONFIGS / name).read_text()


def test_the_command_line_chooses_a_data_set_or_keys():
    assert given_data_keys(["ckpt_path=a", "split=val"]) == set()
    assert given_data_keys(["data.crop=96", "+data.val=[a]"]) == {"crop", "val"}
    assert given_data_keys(["data=folder", "data.crop=96"]) is None
    assert given_data_keys(["data/augmentation=none"]) is None


def test_eval_of_an_own_data_checkpoint_scores_its_recorded_folders(
    compose_train, synthetic_rgb, tmp_path
):
    from unet.evaluation.task import evaluate
    from unet.training.task import train

    root = synthetic_rgb(tmp_path / "my_cells")
    overrides = [
        "data=folder", f"data.data_dir={root}", "data.num_classes=3", "data.in_channels=3",
        "data.val=[im2]", "data.tile_size=60", "data.samples_per_epoch=2",
        "data.num_workers=0", "data.summary=false", "model.net.base_channels=2",
        "model.net.depth=2", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "validate=false",
        "choose_postprocess=false",
    ]  # fmt: skip
    train(compose_train(overrides, tmp_path / "run"))
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("best-*.ckpt")
    line = [f"ckpt_path={ckpt}"]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        composed = compose("eval", overrides=line)
        cropped = compose("eval", overrides=[*line, "data.crop=32"])
    assert composed.data._target_.endswith("IsbiDataModule")  # the composed default
    cfg = with_recorded_data(composed, line)
    assert cfg.data._target_.endswith("FolderDataModule") and cfg.data.data_dir == str(root)
    assert cfg.data.val == ["im2"] and cfg.data.num_classes == 3 and cfg.data.in_channels == 3
    cfg.paths.output_dir = str(tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    # a 3-channel net on the ISBI default (gray slices) could not be scored at all
    metrics = evaluate(cfg)
    assert metrics["source"] == str(ckpt) and metrics["split"] == "val"
    assert (tmp_path / "eval" / "metrics.json").is_file()
    # a key given alone changes the recorded setting; a data set given replaces the record
    cropped = with_recorded_data(cropped, [*line, "data.crop=32"])
    assert cropped.data.crop == 32 and cropped.data.data_dir == str(root)
    assert with_recorded_data(composed, [*line, "data=isbi"]) is composed


def test_a_benchmark_record_from_another_machine_reads_this_machines_data(tmp_path):
    import torch

    record = {"data_dir": "/elsewhere/data", "val_slices": 5, "crop": 64, "cache_dir": "/x"}
    torch.save({"datamodule_hyper_parameters": record}, tmp_path / "m.ckpt")
    line = [f"ckpt_path={tmp_path / 'm.ckpt'}", f"paths.data_dir={tmp_path}"]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = with_recorded_data(compose("eval", overrides=line), line)
    assert cfg.data._target_.endswith("IsbiDataModule") and cfg.data.crop == 64
    assert cfg.data.data_dir == str(tmp_path) and cfg.data.cache_dir == str(cfg.paths.cache_dir)


def test_export_checks_its_command_line_like_the_other_entry_points(tmp_path):
    command = [sys.executable, str(ROOT / "src" / "export.py"), "ckpt_path=x.ckpt"]
    done = subprocess.run(
        [*command, f"output={tmp_path / 'm.zip'}", "formatt=onnx"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: formatt=onnx") and "did you mean format?" in done.stderr


def test_sources_use_no_private_hydra_and_keep_their_layers():
    src = ROOT / "src"
    private = [p for p in src.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert private == []
    augment = src / "unet" / "data" / "augment"
    assert "from unet.data.augment.paper_transform" not in (augment / "paper.py").read_text()
    assert "from unet.config" not in (src / "unet" / "data" / "download.py").read_text()
    assert "from unet" not in (augment / "extra.py").read_text()
