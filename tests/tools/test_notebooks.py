"""Every notebook executes without error (scripts/render_notebooks.py runs them the same
way to render docs/notebooks/). Fast ones in the default tier, heavier ones marked slow."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("render", ROOT / "scripts/render_notebooks.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

FAST = [
    "data_tour.ipynb",
    "figure2_overlap_tile.ipynb",
    "figure3_weight_map.ipynb",
    "augmentation_gallery.ipynb",
    "isbi_walkthrough.ipynb",
]
SLOW = ["results.ipynb"]


def test_every_notebook_is_tested():
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(FAST + SLOW)


def run(name: str, data_dir: Path, timeout: int = 300, **env: str) -> None:
    notebook = render.execute(
        ROOT / "notebooks" / name,
        timeout=timeout,  # per cell
        env={**os.environ, "UNET_DATA_DIR": str(data_dir), **env},
    )
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", FAST)
def test_notebook_executes(name, data_dir):
    run(name, data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_slow_notebook_executes(name, data_dir, tmp_path):
    # its first cell trains a tiny run when there is none (minutes on a loaded machine)
    run(
        name,
        data_dir,
        1200,
        UNET_RESULTS_RUN=str(tmp_path / "run"),
        UNET_NOTEBOOK_TMP=str(tmp_path),
    )
