"""scripts/results_table.py: skip logic, commands and the table, without real training."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts/results_table.py")
results_table = importlib.util.module_from_spec(_spec)
sys.modules["results_table"] = results_table  # (dataclasses look their module up there)
_spec.loader.exec_module(results_table)

DATA = {"isbi_cpu": "isbi", "hela_cpu": "hela", "u373_cpu": "u373"}


def fake_run(root: Path, experiment: str, seed: int, metrics: dict, info: dict | None = None):
    folder = results_table.run_folder(root, experiment, seed)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if info is not None:
        (folder / "run_info.json").write_text(json.dumps(info))
    return folder


def attempt(seconds: float, load_start: float = 1.0, load_end: float = 2.0) -> dict:
    hw = {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "memory_gib": 8.0, "torch": "9.9"}
    return {
        "wall_seconds": seconds,
        "hardware": hw,
        "load_average_start": [load_start, 0, 0],
        "load_average_end": [load_end, 0, 0],
        "overrides": [],
    }


def row(table: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first_cell``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


def parse_mean_sd(text: str) -> tuple[float, float | None]:
    mean, _, sd = text.partition(" ± ")
    return float(mean), float(sd) if sd else None


def test_experiments_map_to_their_data_sets():
    for experiment, data in DATA.items():
        assert results_table.data_option(experiment) == data
        assert data in results_table.PAPER


def test_table_of_fake_runs(tmp_path):
    pixel = [0.05, 0.046, 0.044]
    rand = [0.12, 0.09]  # seed 3 did not write the key: missing, not zero
    for seed, p in zip((1, 2, 3), pixel, strict=True):
        metrics = {"val/pixel_error": p, "checkpoint": "x.ckpt", "val/frames": 5}
        if seed < 3:
            metrics["val/rand_error"] = rand[seed - 1]
        fake_run(tmp_path, "isbi_cpu", seed, metrics, {"attempts": [attempt(60.0 * seed)]})
    fake_run(tmp_path, "hela_cpu", 2, {"val/seg": 0.8, "val/iou": 0.9})  # no run_info.json
    table = results_table.results_table(tmp_path, ["isbi_cpu", "hela_cpu"], [1, 2, 3], DATA)

    pixel_row = row(table, "ISBI 2012")  # the first ISBI row is the warping error: missing
    assert pixel_row[3] == "missing" and pixel_row[4] == "0" and pixel_row[5] == "0.000353"
    mean, sd = parse_mean_sd(row(table, "`val/pixel_error`")[1])
    assert mean == pytest.approx(statistics.fmean(pixel), abs=5e-5)
    assert sd == pytest.approx(statistics.stdev(pixel), abs=5e-5)
    assert row(table, "`val/pixel_error`")[2] == "3"
    mean, sd = parse_mean_sd(row(table, "`val/rand_error`")[1])
    assert mean == pytest.approx(0.105) and row(table, "`val/rand_error`")[2] == "2"
    assert row(table, "`val/frames`")[1] == "5 ± 0"  # counts print as integers
    assert "checkpoint" not in table  # not a number
    wall = row(table, "wall time per run (minutes, all attempts)")
    assert wall[1] == "2.0 ± 1.0" and wall[2] == "3"
    assert "Test CPU, 2 usable of 2 cores" in table and "at start 1.0-1.0" in table

    hela = [line for line in table.splitlines() if line.startswith("| DIC-HeLa")]
    assert len(hela) == 1 and "| 0.8000 | 1 | 0.7756 |" in hela[0]
    assert "not finished: seeds 1, 3" in table
    assert "not recorded" in table  # hela's wall time and hardware
    assert "validation split" in table and "test set" in table


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-6, 1e4, allow_nan=False), min_size=1, max_size=5))
def test_mean_sd_shows_mean_and_sample_sd(values):
    text = results_table.mean_sd(values)
    mean, sd = parse_mean_sd(text)
    places = len(text.split(" ")[0].partition(".")[2])
    tolerance = 0.5 * 10**-places + 1e-9 * abs(statistics.fmean(values))
    assert mean == pytest.approx(statistics.fmean(values), abs=tolerance)
    if len(values) == 1:
        assert sd is None
    else:
        assert sd == pytest.approx(statistics.stdev(values), abs=tolerance)
    mean = statistics.fmean(values)
    if not (all(v.is_integer() for v in values) and mean.is_integer()):
        assert places == results_table.decimals(mean)  # 4 significant digits of the mean


def test_dry_run_lists_commands_and_skips_finished_runs(tmp_path, capsys):
    fake_run(tmp_path, "isbi_cpu", 1, {"val/pixel_error": 0.05})
    half = results_table.run_folder(tmp_path, "isbi_cpu", 2) / "checkpoints"
    half.mkdir(parents=True)
    (half / "last.ckpt").write_bytes(b"")
    argv = ["--experiments", "isbi_cpu", "u373_cpu", "--seeds", "1", "2", "--root", str(tmp_path)]
    assert results_table.main([*argv, "--dry-run", "--", "trainer.max_epochs=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert "isbi_cpu seed 1: finished, skipped" in lines[0]
    assert "would run (continues last.ckpt)" in lines[1]
    for line, (e, s) in zip(
        lines[1:], [("isbi_cpu", 2), ("u373_cpu", 1), ("u373_cpu", 2)], strict=True
    ):
        command = line.split(": ", 2)[2]
        assert re.search(
            rf"src/train.py experiment={e} seed={s} hydra.run.dir={tmp_path}/{e}/seed{s} "
            r"ckpt_path=last trainer.max_epochs=2$",
            command,
        )
    assert not (tmp_path / "results.md").exists()
    assert not list(tmp_path.rglob("run_info.json"))


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        results_table.parse_args(["--dry-run", "--", "trainer.max_epochs"])
    assert "key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_table.parse_args(["--experiments", "isbi_cpu", "isbi_gpu"])
    err = capsys.readouterr().err
    assert "isbi_gpu: no such experiment" in err and "'u373_cpu'" in err


def test_runs_record_wall_time_and_hardware_and_are_skipped_once_finished(
    tmp_path, monkeypatch, capsys
):
    # a stand-in for src/train.py that writes the metrics of a finished run
    def command(experiment, seed, folder, overrides=()):
        code = (
            "import json, pathlib, sys; "
            f"pathlib.Path({str(folder)!r}, 'metrics.json').write_text("
            f"json.dumps({{'val/seg': 0.5 + {seed} / 100}})); print('trained')"
        )
        return [sys.executable, "-c", code]

    monkeypatch.setattr(results_table, "train_command", command)
    monkeypatch.setattr(results_table, "data_option", DATA.get)
    records = tmp_path / "records"
    argv = ["--experiments", "hela_cpu", "--seeds", "1", "2", "--root", str(tmp_path)]
    argv += ["--records", str(records)]
    assert results_table.main(argv) == 0
    for seed in (1, 2):
        folder = results_table.run_folder(tmp_path, "hela_cpu", seed)
        info = json.loads((folder / "run_info.json").read_text())
        (only,) = info["attempts"]
        assert only["returncode"] == 0 and only["wall_seconds"] >= 0
        assert only["hardware"]["cpu"] and only["hardware"]["torch"]
        assert only["hardware"]["cores"] >= 1 and not only["resumed"]
        assert len(only["load_average_start"]) == 3 and len(only["load_average_end"]) == 3
        assert (folder / "console.log").read_text() == "trained\n"
    table = (tmp_path / "results.md").read_text()
    assert "| 0.5150 ± 0.0071 | 2 | 0.7756 |" in table
    # each finished run is kept as a record for the results page
    record = json.loads((records / "hela_cpu" / "seed2.json").read_text())
    assert record["metrics"] == {"val/seg": 0.52} and record["seed"] == 2
    assert record["wall_minutes"] >= 0 and "1 attempt(s)" in record["hardware"][0]
    # a second call runs nothing: both runs are finished
    capsys.readouterr()
    assert results_table.main(argv) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2
    info = json.loads((folder / "run_info.json").read_text())
    assert len(info["attempts"]) == 1


def test_a_failed_run_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        results_table, "train_command", lambda *a, **k: [sys.executable, "-c", "exit(3)"]
    )
    monkeypatch.setattr(results_table, "data_option", DATA.get)
    argv = ["--experiments", "u373_cpu", "--seeds", "7", "--root", str(tmp_path)]
    argv += ["--records", str(tmp_path / "records")]
    assert results_table.main(argv) == 1
    assert not (tmp_path / "records").exists()  # no finished run, no record
    assert "failed runs (see their console.log): u373_cpu seed 7" in capsys.readouterr().err
    info = json.loads((tmp_path / "u373_cpu/seed7/run_info.json").read_text())
    assert info["attempts"][0]["returncode"] == 3
    assert "| PhC-U373 | `u373_cpu` | SEG" in (tmp_path / "results.md").read_text()
