"""DDP started from a Hydra job (unet.distributed): the child ranks run this job alone, and
two CPU ranks (gloo) train what one process with the combined batch trains.

The runs are tiny (4-channel nets on 96x96 crops of the real ISBI data, a few steps), but
they go through the real entry point and Lightning's DDP launcher.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from unet.distributed import LAUNCH_VARIABLES, relaunch_as_this_job
from unet.training.task import train


def test_relaunch_runs_this_job_not_the_sweep(configs_dir, tmp_path, monkeypatch):
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
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


def test_two_process_ddp_matches_one_process(
    data_dir, tmp_path, run_train, compose_train, tiny_run_overrides, net_weights
):
    """Two gloo ranks with batch 1 each against one process with batch 2: the same tiles
    in every step and gradients averaged over the same 2 tiles, so the weights and the
    validation metric agree up to float summation order (tolerance 1e-5). Dropout is off:
    its masks are drawn per rank by design."""
    common = [*tiny_run_overrides, "model.net.dropout=0.0", "logger=csv"]
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
    )
    run_train([*common, "data.batch_size=2", f"hydra.run.dir={single_dir}"])

    # one set of checkpoints and logs, in the one run folder
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == [
        "best-epoch001.ckpt",
        "last.ckpt",
    ]
    assert [p.name for p in (ddp_dir / "csv").glob("*.csv")] == ["metrics.csv"]
    assert not list(tmp_path.glob("outputs*"))
    assert (ddp_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder

    ddp, single = (json.loads((d / "metrics.json").read_text()) for d in (ddp_dir, single_dir))
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], abs=1e-5)
    # threshold-based scores: weights that differ by 1e-7 can move a pixel across a threshold
    for name in ("val/pixel_error", "val/iou"):
        assert ddp[name] == pytest.approx(single[name], abs=1e-3), name
    a, b = (
        net_weights(ddp_dir / "checkpoints" / "last.ckpt"),
        net_weights(single_dir / "checkpoints" / "last.ckpt"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # ... and both moved away from where they started: the same run with learning rate 0
    # ends with the initial weights (the seed fixes them)
    start_dir = tmp_path / "start"
    start = [*common, "data.batch_size=2", "model.optimizer.lr=0.0", "validate=false"]
    train(compose_train(start, start_dir, data_dir))
    initial = net_weights(start_dir / "checkpoints" / "last.ckpt")
    assert initial.keys() == a.keys()
    unchanged = [k for k in a if torch.equal(a[k], initial[k])]
    assert not unchanged, f"not trained: {unchanged}"
