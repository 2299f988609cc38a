"""Artefacts made by an older version (tests/fixtures/v1, commit aa7d248) still work.

A checkpoint that ``src/train.py`` wrote and a bioimage.io package that ``src/export.py``
wrote are what users keep on disk; the current entry points must read them and give the
outputs recorded then. Only the entry points run here (as subprocesses), so the tests hold
whatever the package's modules are called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "tests" / "fixtures" / "v1"
# the recorded probabilities are float32 from the same CPU kernels: equal up to summation order
PROBABILITY_TOLERANCE = 1e-5


def run_entry(script: str, args: list[str], workdir: Path, data_dir: Path | None = None):
    """``src/<script>.py args`` from the repository root, its Hydra run folder in ``workdir``;
    fails the test with the output's tail unless it succeeds."""
    env = dict(os.environ, UNET_CACHE_DIR=str(workdir / "cache"))
    if data_dir is not None:
        env["UNET_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, f"src/{script}.py", *args, f"hydra.run.dir={workdir / script}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def predict(model: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of the v1 image through ``model`` by ``src/predict.py``."""
    output = workdir / f"predicted_{model.suffix[1:]}"
    args = [f"ckpt_path={model}", f"input={V1 / 'image.tif'}", f"output={output}"]
    run_entry("predict", [*args, "device=cpu", "progress=false"], workdir)
    labels = tifffile.imread(output / "labels" / "image.tif")
    return tifffile.imread(output / "probabilities.tif"), labels


def assert_recorded(probabilities: np.ndarray, labels: np.ndarray, kind: str) -> None:
    """The outputs equal those recorded in ``expected/<kind>`` (ckpt or zip)."""
    expected = V1 / "expected" / kind
    recorded = np.load(expected / "probabilities.npy")
    assert probabilities.dtype == recorded.dtype and probabilities.shape == recorded.shape
    np.testing.assert_allclose(probabilities, recorded, rtol=0, atol=PROBABILITY_TOLERANCE)
    np.testing.assert_array_equal(labels, np.load(expected / "labels.npy"))


def test_fixtures_are_what_the_old_version_wrote():
    """The fixtures are real artefacts of their kind, not stand-ins (a guard on the data)."""
    import torch

    checkpoint = torch.load(V1 / "model.ckpt", map_location="cpu", weights_only=False)
    for key in ("state_dict", "net_config", "net_probe", "model_record", "postprocess"):
        assert key in checkpoint, key
    assert checkpoint["training_choice"]["precision"] == "32-true"
    # the recorded labels hold several objects (a threshold or regrow change would show)
    assert np.load(V1 / "expected" / "ckpt" / "labels.npy").max() > 5
    with zipfile.ZipFile(V1 / "model.zip") as package:
        names = set(package.namelist())
    assert {"rdf.yaml", "weights_torchscript.pt", "weights.onnx", "weights.pt"} <= names


def test_old_checkpoint_predicts_the_recorded_outputs(tmp_path):
    assert_recorded(*predict(V1 / "model.ckpt", tmp_path), "ckpt")


def test_old_package_predicts_the_recorded_outputs(tmp_path):
    assert_recorded(*predict(V1 / "model.zip", tmp_path), "zip")


def test_old_checkpoint_exports_again_to_a_package_that_predicts_the_same(tmp_path):
    package = tmp_path / "again.zip"
    args = [f"ckpt_path={V1 / 'model.ckpt'}", f"output={package}", f"image={V1 / 'image.tif'}"]
    run_entry("export", [*args, 'authors=["U-Net tests"]'], tmp_path)
    with zipfile.ZipFile(package) as archive:
        assert {"weights_torchscript.pt", "weights.onnx"} <= set(archive.namelist())
    assert_recorded(*predict(package, tmp_path), "zip")


def test_old_checkpoint_evaluates_to_the_recorded_metrics(tmp_path, data_dir):
    args = [f"ckpt_path={V1 / 'model.ckpt'}", "data.crop=96", "data.num_workers=0"]
    run_entry("eval", args, tmp_path, data_dir)
    found = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    recorded = json.loads((V1 / "expected" / "eval_metrics.json").read_text())
    scores = {k: v for k, v in recorded.items() if k.startswith("val/")}
    assert scores, "no scores recorded"
    assert {k: found.get(k) for k in scores} == pytest.approx(scores, rel=1e-6, abs=1e-9)
    assert found["postprocess"] == recorded["postprocess"]
