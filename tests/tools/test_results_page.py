"""scripts/results_page.py: the shipped models' results page, built from records only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("results_page", ROOT / "scripts/results_page.py")
results_page = importlib.util.module_from_spec(_spec)
sys.modules["results_page"] = results_page
_spec.loader.exec_module(results_page)


def card(seg_heldout: float) -> dict:
    return {
        "data": "PhC-C2DH-U373",
        "recipe": "python src/train.py experiment=u373_long",
        "training": {"precision": "32-true", "epochs": 48, "seconds": 7200, "machine": {}},
        "validation": {"val/seg": 0.95, "val/seg_heldout": seg_heldout, "val/frames": 2.0},
    }


def write_models(folder: Path, cards: dict) -> Path:
    for name, info in cards.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "model.yaml").write_text(yaml.safe_dump(info))
    return folder


def write_record(records: Path, experiment: str, seed: int, metrics: dict, overrides=()) -> None:
    path = records / experiment / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"seed": seed, "metrics": metrics, "wall_minutes": 25.0, "hardware": ["- cpu"]}
    record["overrides"] = list(overrides)  # a changed recipe: not one of the recipe's runs
    path.write_text(json.dumps(record))


def row(page: str, first_cell: str) -> list[str]:
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{page}")


def test_page_sets_each_metric_beside_the_short_recipe_and_the_paper(tmp_path):
    models = write_models(tmp_path / "models", {"u373": card(0.94), "bad": card(0.90)})
    records = tmp_path / "records"
    for seed, seg in ((1, 0.86), (2, 0.90), (12345, 0.88)):
        write_record(records, "u373_cpu", seed, {"val/seg": seg, "precision": "32-true"})
    write_record(records, "u373_cpu", 3, {"val/seg": 0.1}, overrides=["trainer.max_epochs=1"])
    page = results_page.page(models, records, ROOT / "configs")

    # u373_long extends u373_cpu (read from the config), whose kept runs are averaged
    seg = row(page, "`val/seg`")
    assert seg[2] == "0.95" and seg[3] == "0.88 ± 0.02 (3)" and seg[4] == "+0.07"
    assert seg[5].startswith("0.9203 (U-Net paper")
    # a metric the short runs did not keep is missing there, not zero
    assert row(page, "`val/seg_heldout`")[3] == "-"
    assert "`val/frames`" not in page  # bookkeeping, not a score
    assert "seeds 1, 2, 12345" in page
    # each kept run is listed with its seed, the default one named as such
    assert "  - seed 12345 (the default): `val/seg` 0.88;" in page
    assert "  - seed 1: `val/seg` 0.86;" in page
    # the targets are checked against the held-out SEG
    met = [line for line in page.splitlines() if line.startswith("| `u373` | `val/seg_heldout`")]
    bad = [line for line in page.splitlines() if line.startswith("| `bad` | `val/seg_heldout`")]
    assert met[0].endswith("| met |") and bad[0].endswith("| **not met** |")


def test_without_kept_runs_the_page_says_how_to_make_them(tmp_path):
    models = write_models(tmp_path / "models", {"u373": card(0.94)})
    page = results_page.page(models, tmp_path / "records", ROOT / "configs")
    assert "no kept runs yet" in page and "--experiments u373_cpu" in page
    assert row(page, "`val/seg`")[3] == "-"


def test_numbers_near_one_are_not_rounded_to_one():
    assert results_page.figure_text(0.99998) == "0.99998"
    assert results_page.figure_text(13.0) == "13" and results_page.figure_text(None) == "-"
    assert results_page.figure_text(0.0123456) == "0.01235"


def test_the_committed_page_is_what_the_records_give(capsys):
    assert results_page.main(["--check"]) == 0, capsys.readouterr().out
