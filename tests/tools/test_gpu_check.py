"""benchmarks/gpu_check.py: the --smoke run on the CPU, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from unet.inference.tiler import tile_memory_bytes
from unet.model.network import UNet

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # (dataclasses look their module up there)
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_what_to_do(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--smoke" in err
    assert not (tmp_path / "out").exists()


def test_an_existing_output_folder_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    argv = ["--smoke", "--out", str(tmp_path / "out"), "--data-dir", str(data_dir)]
    assert gpu_check.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())


def test_smoke_runs_every_part_on_the_cpu(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_CACHE_DIR", str(tmp_path / "cache"))  # the training subprocess
    out = tmp_path / "check"
    assert gpu_check.main(["--smoke", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    results = json.loads((out / "gpu_check.json").read_text())
    smoke = gpu_check.SMOKE
    assert results["device"] == "cpu" and results["hardware"]["torch"] == torch.__version__

    speed = results["train_speed"]
    assert {(r["precision"], r["batch"]) for r in speed} == {
        (p, b) for p in ("fp32", "bf16") for b in smoke.batches
    }
    for r in speed:
        assert r["tiles_per_second"] == pytest.approx(r["batch"] / r["seconds_per_step"])
        assert r["gflop_per_second"] > 0

    stack_fp32, stack_bf16, path = results["inference"]
    for r in results["inference"]:
        assert r["slices"] == smoke.slices and r["size"] == "512x512" and r["seconds"] > 0
    assert stack_fp32["finite"] and stack_bf16["finite"]
    assert (out / "predict" / "probabilities.tif").is_file()

    net = UNet(**smoke.net)
    for r in results["memory"]:
        expected = tile_memory_bytes(net, r["tile"], r["tile"]) * r["batch"] / 2**30
        assert r["estimate_gib"] == pytest.approx(expected, abs=1e-3)
        assert r["measured_gib"] is None  # no allocator peak on the CPU

    train = results["training"]
    assert train["returncode"] == 0, (out / "train.log").read_text()[-3000:]
    assert "experiment=isbi_paper" in train["command"] and "bf16-mixed" in train["command"]
    assert train["steps"] == 4 and train["epochs"] == 1.0  # 4 samples per epoch, 1 epoch
    assert 0.0 <= train["metrics"]["val/pixel_error"] <= 1.0
    assert 0.0 <= train["metrics"]["val/rand_error"] <= 1.0

    md = (out / "gpu_check.md").read_text()
    for heading in ("Training speed", "Inference", "memory estimate", "Training run"):
        assert heading in md
    assert f"| `val/pixel_error` | {train['metrics']['val/pixel_error']:.4f} |" in md


def test_markdown_shows_out_of_memory_rows():
    results = {
        "mode": "full",
        "device": "cuda",
        "started": "now",
        "hardware": {"cpu": "x", "usable_cores": 1, "cores": 1, "memory_gib": 1, "torch": "t"},
        "load_average_start": None,
        "network": "paper",
        "cudnn_allow_tf32": True,
        "cudnn_benchmark": False,
        "train_speed": [{"tile": 572, "batch": 8, "precision": "fp32", "error": "out of memory"}],
        "memory": [
            {"tile": 1084, "batch": 8, "precision": "fp32", "estimate_gib": 18.0}
            | {"error": "out of memory"}
        ],
    }
    md = gpu_check.markdown(results)
    assert md.count("out of memory") == 2


def test_max_time_string_adds_up():
    for seconds in (1, 59, 60, 240, 3599, 3600, 5430, 90000):
        days, hours, minutes, secs = map(int, gpu_check.max_time(seconds).split(":"))
        assert ((days * 24 + hours) * 60 + minutes) * 60 + secs == seconds
        assert hours < 24 and minutes < 60 and secs < 60
