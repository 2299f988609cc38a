"""Shared fixtures: where the real data is, and small synthetic ISBI-like folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def fake_isbi(tmp_path: Path):
    """Write a small ISBI-layout folder; returns a function(volume, labels) -> data_dir."""

    def make(volume: np.ndarray, labels: np.ndarray, compression=None) -> Path:
        folder = tmp_path / "data" / "isbi2012"
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "train-volume.tif", volume, compression=compression)
        tifffile.imwrite(folder / "train-labels.tif", labels, compression=compression)
        tifffile.imwrite(folder / "test-volume.tif", volume, compression=compression)
        return tmp_path / "data"

    return make
