"""Fixtures of the bad-input and fault suites (tests/*/test_bad_input.py), registered by
tests/conftest.py (``pytest_plugins``): a small synthetic ISBI folder, a tiny training run's
overrides, and the checks every case makes (one-line errors, no run output)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from scipy import ndimage

from tests.conftest import CONFIGS, ROOT, write_isbi
from unet.errors import UserError


@pytest.fixture(scope="session")
def synthetic_isbi(tmp_path_factory) -> Path:
    """A data folder with an ISBI-layout ``isbi2012/`` of 4 slices of 64x64: blurred noise,
    cells where it is bright. Tests read it and never change it (copy it to damage it)."""
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.normal(size=(4, 64, 64)), (0, 3, 3))
    volume = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    labels = np.where(noise > np.median(noise) - 0.05, 255, 0).astype(np.uint8)
    data = tmp_path_factory.mktemp("synthetic_isbi") / "data"
    return write_isbi(data, volume, labels, photometric="minisblack")


@pytest.fixture(scope="session")
def synthetic_train_overrides() -> list[str]:
    """A tiny net on the 4 slices of ``synthetic_isbi``: 2 epochs of 3 steps, no validation."""
    return [
        "model.net.base_channels=4",
        "model.net.depth=3",
        "data.tile_size=124",
        "data.val_slices=1",
        "data.num_workers=0",
        "debug=limit",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "validate=false",
    ]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError), type(err.value)
    assert "\n" not in message and message, message
    return message


@pytest.fixture(scope="session")
def one_line() -> Callable[[pytest.ExceptionInfo], str]:
    """``one_line(err)``: the message of a raised error, asserted to be a one-line
    :class:`unet.errors.UserError`."""
    return _one_line


def _overriding(base: list[str], *overrides: str) -> list[str]:
    keys = {o.split("=")[0].lstrip("+") for o in overrides}
    return [b for b in base if b.split("=")[0] not in keys] + list(overrides)


@pytest.fixture(scope="session")
def overriding() -> Callable[..., list[str]]:
    """``overriding(base, *overrides)``: ``base`` with ``overrides`` in place of its entries
    for the same keys."""
    return _overriding


def _no_run_output(run: Path) -> None:
    for name in ("checkpoints", "csv", "metrics.json"):
        assert not (run / name).exists(), name


@pytest.fixture(scope="session")
def no_run_output() -> Callable[[Path], None]:
    """``no_run_output(run)``: asserts a refused run made no checkpoints, logs or metrics."""
    return _no_run_output


def _compose_eval(overrides: list[str], out: Path) -> DictConfig:
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.data.cache_dir = str(out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture(scope="session")
def compose_eval() -> Callable[[list[str], Path], DictConfig]:
    """``compose_eval(overrides, out)``: the evaluation config as src/eval.py composes it,
    writing to ``out``."""
    return _compose_eval


def _run_cli(script: str, args: list[str], data: Path, cache: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, UNET_DATA_DIR=str(data), UNET_CACHE_DIR=str(cache))
    # the repository root too: a command line may name a test module's callback
    # (``+callbacks.x._target_=tests....``)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return subprocess.Popen(
        [sys.executable, f"src/{script}.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.Popen]:
    """``run_cli(script, args, data, cache, **popen)``: ``src/<script>.py`` started as a
    process on the data folder ``data`` (not waited for)."""
    return _run_cli
