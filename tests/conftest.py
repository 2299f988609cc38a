"""Shared fixtures: where the real data is, composed configs, small runs and their outputs.

Test files take what they share from here (as the Lightning-Hydra template's ``cfg_train``
fixture), never from each other.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

# fixtures of the bad-input suites and of the napari plugin's tests (which imports no napari
# here: the rest of the suite runs without it) live in modules of their own
pytest_plugins = ["tests.conftest_bad_input", "tests.conftest_napari"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# W&B writes runs locally, quietly, without network
WANDB_OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}


def _find_data_dir() -> Path | None:
    for candidate in (
        os.environ.get("UNET_DATA_DIR"),
        ROOT.parent / "shared" / "data",
        ROOT / "data",
    ):
        if candidate and (Path(candidate) / "isbi2012" / "train-volume.tif").is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data (``$UNET_DATA_DIR`` or ``../shared/data``)."""
    found = _find_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("real data not found: set UNET_DATA_DIR (CI must run these tests)")
        pytest.skip("real data not found: set UNET_DATA_DIR to run this test")
    return found


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the entry points run from here)."""
    return ROOT


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    """The Hydra config folder."""
    return CONFIGS


def _compose_train(
    overrides: list[str], output_dir: Path, data_dir: Path | str = "data"
) -> DictConfig:
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so that ${hydra:...} resolves
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.cache_dir = str(Path(output_dir) / "cache")
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def compose_train() -> Callable[..., DictConfig]:
    """``compose_train(overrides, output_dir, data_dir="data")``: the training config as
    ``src/train.py`` composes it, writing to ``output_dir`` (the template's ``cfg_train``,
    as a function of the overrides)."""
    return _compose_train


def _synthetic_rgb(root: Path, count: int = 4, size: int = 80, seed: int = 0) -> Path:
    """RGB PNGs of red disks (class 1) and green squares (class 2) on gray noise, with
    0/1/2 class masks; image 0 is of another size."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        h, w = (size, size) if k else (size + 16, size - 8)
        image = rng.normal(90, 15, (h, w, 3))
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[:h, :w]
        for _ in range(3):
            cy, cx = rng.integers(10, h - 10), rng.integers(10, w - 10)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
            cy, cx = rng.integers(5, h - 15), rng.integers(5, w - 15)
            mask[cy : cy + 10, cx : cx + 10] = 2
        image[mask == 1] += (90, -40, -40)
        image[mask == 2] += (-40, 90, -40)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"im{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{k}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_rgb() -> Callable[..., Path]:
    """``synthetic_rgb(root, count=4, size=80, seed=0)``: a ``data=folder`` folder of RGB
    images with 3-class masks (:func:`_synthetic_rgb`)."""
    return _synthetic_rgb


def _compose_entry(config_name: str, overrides: list[str]) -> DictConfig:
    """The config of an entry point (``predict``, ``export``, ...) as Hydra composes it for
    ``src/<config_name>.py``; ``${hydra:...}`` resolves without an earlier test's help."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def compose_entry() -> Callable[[str, list[str]], DictConfig]:
    """``compose_entry(config_name, overrides)``: the config of ``src/<config_name>.py``
    as Hydra composes it (``predict``, ``export``, ``eval``)."""
    return _compose_entry


@pytest.fixture(scope="session")
def compose_export() -> Callable[[list[str]], DictConfig]:
    """``compose_export(overrides)``: the export config as src/export.py composes it."""
    return lambda overrides: _compose_entry("export", overrides)


@pytest.fixture(scope="session")
def compose_predict() -> Callable[[list[str]], DictConfig]:
    """``compose_predict(overrides)``: the prediction config as src/predict.py composes it,
    without a progress bar."""
    return lambda overrides: _compose_entry("predict", ["progress=false", *overrides])


@pytest.fixture(scope="session")
def small_overrides() -> list[str]:
    """A 4-channel, depth-3 net on 124 px tiles of 96x96 crops, no loader workers."""
    return [
        "model.net.base_channels=4",
        "model.net.depth=3",
        "data.tile_size=124",
        "data.crop=96",
        "data.num_workers=0",
    ]


@pytest.fixture(scope="session")
def tiny_run_overrides(small_overrides) -> list[str]:
    """``small_overrides`` for 2 epochs of 3 training and 2 validation batches, no bar."""
    return [
        *small_overrides,
        "debug=limit",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def wandb_offline(monkeypatch) -> None:
    """W&B runs of this test write offline, in this process."""
    for name, value in WANDB_OFFLINE.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def run_train(data_dir, tmp_path) -> Callable[[list[str]], subprocess.CompletedProcess]:
    """``run_train(args)``: ``src/train.py`` as a subprocess on the real data, W&B offline;
    fails the test with the output's tail if it fails."""

    def run(args: list[str]) -> subprocess.CompletedProcess:
        env = dict(os.environ, UNET_DATA_DIR=str(data_dir), UNET_CACHE_DIR=str(tmp_path / "cache"))
        env.update(WANDB_OFFLINE)
        result = subprocess.run(
            [sys.executable, "src/train.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    return run


def read_net_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture(scope="session")
def net_weights() -> Callable[[Path], dict[str, torch.Tensor]]:
    """``net_weights(ckpt)``: the network's tensors (``net.*``) of a checkpoint."""
    return read_net_weights


def _wandb_records(path: Path) -> Iterator:
    """The protobuf records of an offline run's ``.wandb`` log (LevelDB log framing: 32 KiB
    blocks of records with a 7-byte header: checksum, length, type; after a 7-byte file
    header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # too short for a header: padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first piece
        if kind in (1, 4):  # full / last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _offline_wandb_runs(run_dir: Path) -> list[tuple[Path, str]]:
    runs = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("*.wandb")
        run = next(r.run for r in _wandb_records(log) if r.WhichOneof("record_type") == "run")
        runs.append((folder, run.run_id))
    return runs


@pytest.fixture(scope="session")
def offline_wandb_runs() -> Callable[[Path], list[tuple[Path, str]]]:
    """``offline_wandb_runs(run_dir)``: (folder, run id) of each offline W&B run of a run
    folder. The id is read from the run's own log, not from the folder's name, which W&B
    suffixes (``-1``) when two runs start within the same second."""
    return _offline_wandb_runs


def write_isbi(data: Path, volume: np.ndarray, labels: np.ndarray, **tiff) -> Path:
    """``data/isbi2012/`` with ``volume`` as training and test stack and ``labels``;
    ``tiff``: ``tifffile.imwrite`` options. Returns ``data``."""
    folder = data / "isbi2012"
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "train-volume.tif", volume, **tiff)
    tifffile.imwrite(folder / "train-labels.tif", labels, **tiff)
    tifffile.imwrite(folder / "test-volume.tif", volume, **tiff)
    return data


@pytest.fixture
def fake_isbi(tmp_path: Path):
    """Write a small ISBI-layout folder; returns a function(volume, labels) -> data_dir."""

    def make(volume: np.ndarray, labels: np.ndarray, compression=None) -> Path:
        return write_isbi(tmp_path / "data", volume, labels, compression=compression)

    return make


def save_probed_checkpoint(net: torch.nn.Module, path: Path, **entries) -> Path:
    """Save ``net`` as training's checkpoints hold it: weights under ``net.``, the
    architecture record (``net_config``) and the probe; ``entries`` add or replace
    top-level entries (``postprocess``, ``net_config``, ...). Returns ``path``."""
    from unet.model.fingerprint import record_probe

    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    checkpoint = {"state_dict": state, "net_config": net.config.to_dict()}
    torch.save(checkpoint | {"net_probe": record_probe(net)} | entries, path)
    return path


@pytest.fixture(scope="session")
def save_checkpoint() -> Callable[..., Path]:
    """``save_checkpoint(net, path, **entries)``: :func:`save_probed_checkpoint`."""
    return save_probed_checkpoint


@pytest.fixture(scope="session")
def tiny_valid_ckpt(tmp_path_factory) -> Path:
    """A tiny valid-padding network's checkpoint as training writes it (config, weights,
    probe): 2 base channels, depth 2, no dropout, seed 0. Tests read it and never change
    it (copy it first where a test might)."""
    from unet.model.network import UNet

    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, dropout=0.0)
    return save_probed_checkpoint(net, tmp_path_factory.mktemp("tiny_ckpt") / "tiny.ckpt")


# ------------------------------------------------------------- damaged files
# Plain functions too: case tables at module level build their inputs with them.


def truncate_file(path: Path, fraction: float = 0.5) -> None:
    """Keep only the first ``fraction`` of the file's bytes (a download or copy cut short)."""
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * fraction)])


@pytest.fixture(scope="session")
def truncate() -> Callable[..., None]:
    """``truncate(path, fraction=0.5)``: :func:`truncate_file`."""
    return truncate_file


def write_gray_stack(path: Path, frames: int = 3, dtype=np.uint8) -> Path:
    """A TIFF stack of ``frames`` random 40x48 gray frames."""
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (frames, 40, 48)).astype(dtype)
    tifffile.imwrite(path, stack, photometric="minisblack")
    return path


@pytest.fixture(scope="session")
def write_stack() -> Callable[..., Path]:
    """``write_stack(path, frames=3, dtype=np.uint8)``: :func:`write_gray_stack`."""
    return write_gray_stack
