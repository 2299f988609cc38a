"""Helpers of the benchmark scripts: the engine benchmark's real-image mosaic and the
streamed-memory benchmark's time limit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mosaic_lays_the_frames_row_after_row_and_starts_over(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    frames = np.stack([np.full((4, 6), i, np.uint8) for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    image = load("inference_engines").mosaic(str(tmp_path / "stack.tif"), 10)
    assert image.shape == (10, 10) and image.dtype == np.float32
    # 2 frames per row (6 px wide), 3 rows (4 px high): frames 0 1 / 2 0 / 1 2
    assert image[0, 0] == 0 and image[0, 6] == 1
    assert image[4, 0] == 2 and image[4, 6] == 0
    assert image[8, 0] == 1 and image[9, 9] == 2


def test_a_streamed_case_stopped_by_its_time_limit_reports_its_peak(tmp_path):
    pytest.importorskip("zarr")
    command = [sys.executable, str(ROOT / "benchmarks" / "stream_memory.py")]
    command += ["--case", "small", "1024x8192", "--chunk", "512", "--time-limit", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmp_path))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stopped"] is True
    assert 1.0 <= result["seconds"] < 30 and result["peak_gb"] >= result["before_gb"] > 0
