"""src/predict.py on the ranks of a Lightning Trainer (unet.predict.ranks): two gloo
ranks write what one process writes, for a folder of frames and for a .zarr store; an
existing output stops every rank; the SLURM launcher composes for prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from unet.io.output_safety import MARKER
from unet.predict.ranks import frame_share
from unet.predict.task import predict

TWO_CPU_RANKS = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def blobs(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 1000 + 300 * np.sin(yy / (9.0 + seed)) * np.cos(xx / 13.0)
    return (image + rng.normal(0, 40, (h, w))).astype(np.uint16)


def predict_here(compose_entry, overrides):
    """src/predict.py's work in this process (one process, no trainer)."""
    return predict(compose_entry("predict", overrides))


def run_predict(repo_root, args):
    """src/predict.py as a subprocess: (exit code, stderr)."""
    result = subprocess.run(
        [sys.executable, "src/predict.py", *args],
        cwd=repo_root,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def tiff_series(path):
    with tifffile.TiffFile(path) as tif:
        return [series.asarray() for series in tif.series]


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("count", "world_size"), [(7, 2), (3, 4), (12, 3), (1, 1)])
def test_frame_shares_cover_every_frame_once(count, world_size):
    shares = [frame_share(count, rank, world_size) for rank in range(world_size)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(count))  # each frame once: no padding duplicates
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_two_ranks_write_the_folder_of_one_process(
    tmp_path, repo_root, tiny_valid_ckpt, compose_entry
):
    ckpt = tiny_valid_ckpt
    frames = tmp_path / "frames"
    frames.mkdir()
    for k, shape in enumerate([(100, 90), (100, 90), (84, 110)]):  # two TIFF series
        tifffile.imwrite(frames / f"t{k:03d}.tif", blobs(*shape, seed=k))
    common = [f"ckpt_path={ckpt}", f"input={frames}", "tiler.tile_size=92", "progress=false"]
    predict_here(compose_entry, [*common, f"output={tmp_path / 'one'}", "device=cpu"])
    args = [*common, f"output={tmp_path / 'two'}", *TWO_CPU_RANKS]
    code, log = run_predict(repo_root, [*args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, log[-3000:]
    assert (tmp_path / "run" / "train_ddp_process_1.log").is_file()  # rank 1 ran
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(map(str, two)) == sorted(map(str, one))  # no scratch files left
    assert {"probabilities.tif", "contact_sheet.png", "labels/t002.tif"} <= set(map(str, one))
    for name in one:
        if str(name) == "probabilities.tif":  # float32 sums: ranks run on fewer threads
            a, b = (
                tifffile.TiffFile(d / name).series for d in (tmp_path / "one", tmp_path / "two")
            )
            assert [s.shape for s in a] == [s.shape for s in b] == [(2, 100, 90), (84, 110)]
            for x, y in zip(a, b, strict=True):
                np.testing.assert_allclose(y.asarray(), x.asarray(), rtol=0, atol=1e-5)
        elif str(name) == MARKER:  # says when each was written
            assert json.loads(two[name])["tool"] == json.loads(one[name])["tool"] == "predict"
        else:
            assert two[name] == one[name], name  # byte for byte
    assert not list(tmp_path.glob("*.partial"))

    # an existing output: refused on rank 0 before any writing, every rank stops
    code, log = run_predict(repo_root, [*args, f"hydra.run.dir={tmp_path / 'run2'}"])
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "already exists" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert files(tmp_path / "two") == two and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("stack", [False, True], ids=["image", "stack"])
def test_two_ranks_write_the_store_of_one_process(
    tmp_path, repo_root, stack, tiny_valid_ckpt, compose_entry
):
    zarr = pytest.importorskip("zarr")
    ckpt = tiny_valid_ckpt
    if stack:  # three sections, 3 chunk rows each: rank 0 gets 4, rank 1 gets 5
        images = np.stack([blobs(150, 120, seed=k) for k in range(3)])
        tifffile.imwrite(tmp_path / "big.tif", images, photometric="minisblack")
    else:
        tifffile.imwrite(tmp_path / "big.tif", blobs(200, 120, seed=0), tile=(64, 64))
    common = [
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'big.tif'}",
        "zarr.chunk=64",
        "tiler.tile_size=92",
        "progress=false",
        "postprocess.fill_holes=true",
    ]
    predict_here(compose_entry, [*common, f"output={tmp_path / 'one.zarr'}", "device=cpu"])
    args = [*common, f"output={tmp_path / 'two.zarr'}", *TWO_CPU_RANKS]
    code, log = run_predict(repo_root, [*args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, log[-3000:]
    rows = 450 if stack else 200  # both ranks' rows, counted once
    assert f"{rows} rows predicted" in " ".join(log.split())
    for name in ("0", "labels/cells/0"):
        two = zarr.open_array(str(tmp_path / "two.zarr" / name), mode="r")[:]
        one = zarr.open_array(str(tmp_path / "one.zarr" / name), mode="r")[:]
        np.testing.assert_array_equal(two, one)


def test_slurm_launcher_composes_for_prediction(configs_dir):
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                "cluster=slurm",
                *TWO_CPU_RANKS,
                "trainer.devices=4",
                "ckpt_path=run/checkpoints/best.ckpt",
                "input=stack.tif",
                "output=out",
            ],
            return_hydra_config=True,
        )
        no_trainer = compose("predict", overrides=["cluster=slurm"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.ckpt_path == "run/checkpoints/best.ckpt" and cfg.trainer.strategy == "ddp"
    # without a trainer: one task, one process
    assert no_trainer.get("trainer") is None
    HydraConfig.instance().set_config(no_trainer)
    assert OmegaConf.to_container(no_trainer.hydra.launcher, resolve=True)["tasks_per_node"] == 1
