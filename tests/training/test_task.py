"""Hydra-composed training and evaluation runs on small crops of the real ISBI data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from unet.data.readers import DataError
from unet.evaluation.task import evaluate
from unet.inference.checkpoint import CheckpointError, load_network, load_trained
from unet.training.task import train


def test_fast_dev_run_trains_and_validates(small_overrides, compose_train, data_dir, tmp_path):
    # (the default callbacks' progress bar is dropped when the trainer has none)
    overrides = ["debug=fast_dev_run", "trainer.enable_progress_bar=false", *small_overrides]
    cfg = compose_train(overrides, tmp_path, data_dir)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["val/pixel_error"] <= 1.0
    assert 0.0 <= metrics["val/iou"] <= 1.0


def test_train_checkpoint_then_eval(
    small_overrides, configs_dir, compose_train, data_dir, tmp_path
):
    run = tmp_path / "train"
    cfg = compose_train(
        [
            "debug=limit",
            "callbacks=default",
            "callbacks.progress_bar=null",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            *small_overrides,
        ],
        run,
        data_dir,
    )
    metrics = train(cfg)
    written = json.loads((run / "metrics.json").read_text())
    assert written["val/pixel_error"] == pytest.approx(metrics["val/pixel_error"])
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and Path(written["checkpoint"]).is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    net = load_network(last)
    assert net.config.base_channels == 4 and net.config.depth == 3

    # the run folder is never reused silently
    with pytest.raises(FileExistsError, match="already exists"):
        train(cfg)

    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        ecfg = compose(
            "eval", overrides=[f"ckpt_path={last}", "data.crop=96", f"data.data_dir={data_dir}"]
        )
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "eval")
        ecfg.data.cache_dir = str(tmp_path / "cache")
    (tmp_path / "eval").mkdir()
    scores = evaluate(ecfg)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())[
        "val/pixel_error"
    ] == pytest.approx(scores["val/pixel_error"])
    # training's final validation scored the best checkpoint; eval scored last.ckpt
    assert 0.0 <= scores["val/pixel_error"] <= 1.0
    for name in ("val/rand_error", "val/warping_error"):  # the challenge metrics
        assert 0.0 <= scores[name] <= 1.0
    assert 0.0 <= scores["val/v_rand"] <= 1.0
    assert 0.0 <= written["val/rand_error"] <= 1.0  # training's final validation has them too

    # the final validation chose the post-processing on the validation slices and stored it
    # in the best checkpoint; eval of that checkpoint uses it and agrees exactly
    best = load_trained(written["checkpoint"])
    assert best.postprocess is not None and best.postprocess.to_dict() == written["postprocess"]
    assert best.chosen_on["score"] == "labels_rand_error" and best.chosen_on["split"] == "val"
    with open_dict(ecfg):
        ecfg.ckpt_path = written["checkpoint"]
        ecfg.paths.output_dir = str(tmp_path / "eval_best")
    (tmp_path / "eval_best").mkdir()
    again = evaluate(ecfg)
    assert again["postprocess"] == written["postprocess"]
    scored = {name for name in written if name.startswith("val/")}
    # only the final validation chose the settings, so only it has the held-out score
    assert scored - set(again) == {
        "val/labels_rand_error_heldout",
        "val/labels_v_rand_heldout",
    }
    for name in scored & set(again):
        assert again[name] == written[name], name

    # scoring a written stack: the labels themselves score perfectly
    import tifffile

    from unet.data.isbi import read_isbi_training

    _, classes = read_isbi_training(data_dir)
    perfect = tmp_path / "perfect.tif"
    tifffile.imwrite(perfect, classes[-5:, :96, :96].astype(np.float32))
    with open_dict(ecfg):
        ecfg.ckpt_path = None
        ecfg.predictions = str(perfect)
        ecfg.paths.output_dir = str(tmp_path / "eval2")
    (tmp_path / "eval2").mkdir()
    perfect_scores = evaluate(ecfg)
    assert perfect_scores["val/pixel_error"] == 0.0 and perfect_scores["val/rand_error"] == 0.0
    assert perfect_scores["val/warping_error"] == 0.0 and perfect_scores["val/v_info"] == 1.0


def test_load_network_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="net_config"):
        load_network(bad)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_network(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path / "none.ckpt")


def test_entry_point_runs(small_overrides, repo_root, data_dir, tmp_path):
    env = dict(os.environ, UNET_DATA_DIR=str(data_dir), UNET_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "model=unet",
            "data=isbi",
            "debug=fast_dev_run",
            *small_overrides,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


def test_missing_data_dir_message(repo_root, tmp_path):
    env = dict(os.environ, UNET_DATA_DIR=str(tmp_path / "nowhere"))
    result = subprocess.run(
        [sys.executable, "src/train.py", "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "ISBI 2012 data folder not found" in result.stderr and "UNET_DATA_DIR" in result.stderr


def test_tile_size_that_does_not_fit_the_network(
    small_overrides, compose_train, data_dir, tmp_path
):
    from unet.model.shapes import InvalidInputSizeError

    cfg = compose_train(
        ["debug=fast_dev_run", *small_overrides, "data.tile_size=130"], tmp_path, data_dir
    )
    with pytest.raises(
        InvalidInputSizeError,
        match=r"data.tile_size=130 does not fit model.net: .*nearest valid sizes: 124, 132",
    ):
        train(cfg)


def test_eval_scores_seg_on_cell_data(
    small_overrides, configs_dir, compose_train, data_dir, tmp_path
):
    run = tmp_path / "train"
    overrides = ["data=hela", "debug=limit", "callbacks=default", "callbacks.progress_bar=null"]
    overrides += [
        "logger=none",
        "trainer.enable_progress_bar=false",
        "validate=false",
        *small_overrides,
    ]
    train(compose_train(overrides, run, data_dir))
    last = run / "checkpoints" / "last.ckpt"
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        ecfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={last}",
                "data=hela",
                "data.crop=96",
                f"data.data_dir={data_dir}",
            ],
        )
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "eval")
        ecfg.data.cache_dir = str(tmp_path / "cache")
    (tmp_path / "eval").mkdir()
    scores = evaluate(ecfg)
    assert 0.0 <= scores["val/seg"] <= 1.0 and scores["val/frames"] == 2
    assert scores["val/truth_objects"] >= 1


def test_eval_scores_a_folder_of_label_images(configs_dir, data_dir, tmp_path):
    from unet.data.ctc import CellTrackingDataModule

    dm = CellTrackingDataModule(
        str(data_dir), "DIC-C2DH-HeLa", crop=96, cache_dir=str(tmp_path / "c")
    )
    dm.setup("validate")
    folder = tmp_path / "labels"
    folder.mkdir()
    import tifffile

    for k, truth in enumerate(dm.instances["val"]):
        tifffile.imwrite(folder / f"mask{k:03d}.tif", truth.astype(np.uint16))
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        ecfg = compose("eval", overrides=[f"predictions={folder}", "data=hela", "data.crop=96"])
    with open_dict(ecfg):
        ecfg.data.data_dir = str(data_dir)
        ecfg.data.cache_dir = str(tmp_path / "c")
        ecfg.paths.output_dir = str(tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    scores = evaluate(ecfg)
    assert scores["val/seg"] == 1.0 and scores["val/misses"] == 0  # the truth scores perfectly
    (folder / "mask000.tif").unlink()
    with pytest.raises(DataError, match="found 1 TIFF label images, expected 2"):
        evaluate(ecfg)


def test_an_instance_norm_net_is_validated_and_recorded_at_its_training_tile_size(
    small_overrides, compose_train, data_dir, tmp_path
):
    """Its output depends on the whole tile, so predict and eval must repeat that tile."""
    overrides = [
        "debug=limit",
        "callbacks=default",
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint.monitor=val/pixel_error",
        "callbacks.model_checkpoint.mode=min",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        *small_overrides,
        "model.net.batch_norm=false",
        "model.net.instance_norm=true",
    ]
    cfg = compose_train(overrides, tmp_path / "train", data_dir)
    metrics = train(cfg)
    trained = load_trained(metrics["checkpoint"])
    assert trained.net.config.instance_norm
    assert trained.record.tile_size == cfg.data.tile_size
