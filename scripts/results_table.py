"""Train each ``*_cpu`` experiment with several seeds and tabulate the validation metrics.

    UNET_DATA_DIR=../shared/data python3 scripts/results_table.py \
        [--experiments isbi_cpu hela_cpu u373_cpu] [--seeds 12345 1 2 3] [--root outputs/results] \
        [--table-only] [--dry-run] [-- override ...]

Runs, one after the other (two at once would share the CPU and change the time-limited runs):

    python src/train.py experiment=<e> seed=<s> hydra.run.dir=<root>/<e>/seed<s> ckpt_path=last

- **Skipping.** A run whose folder already holds ``metrics.json`` (written at the end of
  training) is finished and not run again, so the runs can be spread over several sessions.
  A run killed midway continues from its ``last.ckpt`` (``ckpt_path=last``).
- **Record.** Beside ``metrics.json``, ``run_info.json`` lists each attempt: command, exit
  status, wall time, and the hardware (CPU model, cores, memory, torch version, load average
  at start and end). ``console.log`` holds the run's console output.
- **Table.** ``<root>/results.md`` (rebuilt every time, also printed): for each experiment the
  mean ± sd over seeds of every numeric metric in the runs' ``metrics.json`` (validation
  split), the measures the paper reports beside the paper's figures (the challenges' test
  sets), wall time and hardware. A metric that a run did not write is missing, not zero: n
  counts the runs that have it.
- **Records.** Each finished run is also kept as ``<records>/<experiment>/seed<s>.json``
  (default ``docs/records``): its validation metrics, precision, overrides, wall time and
  hardware, small enough to commit; ``scripts/results_page.py`` builds the results page
  from them and from the shipped models' cards.
- Words after ``--`` are passed to every run as Hydra overrides (and recorded); they change the
  recipe, so the table lists them.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from unet.evaluation.reference import PAPER as REFERENCE
from unet.inference import machine

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("isbi_cpu", "hela_cpu", "u373_cpu")
# the default seed (seed=12345, what the README command runs) and three others
SEEDS = (12345, 1, 2, 3)
METRICS_FILE = "metrics.json"
INFO_FILE = "run_info.json"
LOG_FILE = "console.log"  # Hydra writes its own train.log in the run folder
TABLE_FILE = "results.md"


@dataclass(frozen=True)
class PaperFigure:
    """One figure of the paper: the metrics.json key that measures it, its name, its value."""

    key: str
    name: str
    value: float


# The paper's figures (unet.evaluation.reference.PAPER: Ronneberger et al. 2015, Tables 1 and
# 2; the challenges' test sets; "IOU" there is SEG), keyed by the `data` config option that
# an experiment selects: (the data set's name, the metrics the paper reports with their names).
_SHOWN = {
    "isbi": (
        "ISBI 2012",
        "isbi2012",
        (
            ("val/warping_error", "warping error"),
            ("val/rand_error", "Rand error of the probability map"),
            ("val/labels_rand_error", "Rand error of the post-processed labels"),
            ("val/pixel_error", "pixel error"),
        ),
    ),
    "u373": ("PhC-U373", "PhC-C2DH-U373", (("val/seg", 'SEG ("IOU" in the paper)'),)),
    "hela": ("DIC-HeLa", "DIC-C2DH-HeLa", (("val/seg", 'SEG ("IOU" in the paper)'),)),
}
PAPER = {
    option: (name, tuple(PaperFigure(k, what, REFERENCE[folder][k].value) for k, what in shown))
    for option, (name, folder, shown) in _SHOWN.items()
}


@dataclass
class Run:
    """One finished run: its seed, its metrics.json and its run_info.json (None if absent)."""

    seed: int
    folder: Path
    metrics: dict
    info: dict | None


def run_folder(root: Path, experiment: str, seed: int) -> Path:
    """The folder of one run: ``<root>/<experiment>/seed<seed>``."""
    return Path(root) / experiment / f"seed{seed}"


def read_metrics(folder: Path) -> dict | None:
    """The run's ``metrics.json`` if it is there and readable (a finished run), else None."""
    path = Path(folder) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def read_info(folder: Path) -> dict | None:
    """The run's ``run_info.json`` (attempts with wall time and hardware), None if absent."""
    try:
        return json.loads((Path(folder) / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def train_command(experiment: str, seed: int, folder: Path, overrides=()) -> list[str]:
    """The command line of one run (run from the repository root)."""
    return [
        sys.executable,
        "src/train.py",
        f"experiment={experiment}",
        f"seed={seed}",
        f"hydra.run.dir={folder}",
        "ckpt_path=last",  # a killed run continues from its last.ckpt; a new one starts fresh
        *overrides,
    ]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_one(experiment: str, seed: int, root: Path, overrides=()) -> dict:
    """Run one training (blocking); append the attempt to the run's ``run_info.json``."""
    folder = run_folder(root, experiment, seed)
    folder.mkdir(parents=True, exist_ok=True)
    command = train_command(experiment, seed, folder, overrides)
    attempt = {
        "command": shlex.join(command),
        "overrides": list(overrides),
        "resumed": (folder / "checkpoints" / "last.ckpt").is_file(),
        "started": utc_now(),
        "load_average_start": machine.load_average(),
        "hardware": machine.describe(),
    }
    start = time.perf_counter()
    with open(folder / LOG_FILE, "a") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    attempt |= {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "finished": utc_now(),
        "load_average_end": machine.load_average(),
        "returncode": result.returncode,
    }
    info = read_info(folder) or {"experiment": experiment, "seed": seed, "attempts": []}
    info["attempts"].append(attempt)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return attempt


def collect(root: Path, experiment: str, seeds) -> list[Run]:
    """The finished runs of one experiment among ``seeds``, in seed order."""
    runs = []
    for seed in seeds:
        folder = run_folder(root, experiment, seed)
        metrics = read_metrics(folder)
        if metrics is not None:
            runs.append(Run(seed, folder, metrics, read_info(folder)))
    return runs


def numeric_keys(runs: list[Run]) -> list[str]:
    """Every key that holds a number in at least one run's metrics, sorted."""
    keys = set()
    for run in runs:
        keys |= {k for k, v in run.metrics.items() if is_number(v)}
    return sorted(keys)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def values_of(runs: list[Run], key: str) -> list[float]:
    """The values of ``key`` in the runs that report it (a missing key is not a zero)."""
    return [float(run.metrics[key]) for run in runs if is_number(run.metrics.get(key))]


def wall_minutes(run: Run) -> float | None:
    """Wall time of a run in minutes: all its attempts (a resumed run has several)."""
    if not run.info or not run.info.get("attempts"):
        return None
    return sum(a.get("wall_seconds", 0.0) for a in run.info["attempts"]) / 60


def decimals(x: float, digits: int = 4) -> int:
    """Decimals that show ``digits`` significant digits of ``x``."""
    if x == 0 or not math.isfinite(x):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def mean_sd(values: list[float], digits: int = 4, places: int | None = None) -> str:
    """``mean ± sd`` (sample sd), both to ``digits`` significant digits of the mean (or to
    ``places`` decimals); ``missing`` without values."""
    if not values:
        return "missing"
    mean = statistics.fmean(values)
    if places is None and all(float(v).is_integer() for v in values) and mean.is_integer():
        places = 0  # counts
    elif places is None:
        places = decimals(mean, digits) if mean else decimals(max(map(abs, values)), digits)
    if len(values) < 2:
        return f"{mean:.{places}f}"
    return f"{mean:.{places}f} ± {statistics.stdev(values):.{places}f}"


def data_option(experiment: str) -> str:
    """The ``data`` config option an experiment selects (``isbi``, ``hela``, ``u373``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return cfg.hydra.runtime.choices["data"]


def hardware_lines(runs: list[Run]) -> list[str]:
    """One line per distinct machine of the runs' attempts, with its load averages."""
    machines: dict[str, list[dict]] = {}
    for run in runs:
        for attempt in (run.info or {}).get("attempts", []):
            hw = attempt.get("hardware") or {}
            gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ""
            name = (
                f"{hw.get('cpu', '?')}, {hw.get('usable_cores', '?')} usable of "
                f"{hw.get('cores', '?')} cores, {hw.get('memory_gib', '?')} GiB, "
                f"torch {hw.get('torch', '?')}{gpu}"
            )
            machines.setdefault(name, []).append(attempt)
    lines = []
    for name, attempts in machines.items():
        loads = {
            when: [a[f"load_average_{when}"][0] for a in attempts if a.get(f"load_average_{when}")]
            for when in ("start", "end")
        }
        load = "; ".join(f"at {when} {min(v):.1f}-{max(v):.1f}" for when, v in loads.items() if v)
        lines.append(
            f"- {name}: {len(attempts)} attempt(s); 1-minute load average {load or 'not recorded'}"
        )
    return lines or ["- not recorded (no run_info.json)"]


def experiment_section(experiment: str, runs: list[Run], seeds, root: Path) -> list[str]:
    """Markdown for one experiment: every numeric metric, wall time, hardware."""
    missing = [s for s in seeds if s not in {r.seed for r in runs}]
    lines = [
        f"### `{experiment}`",
        "",
        f"Finished runs: {len(runs)} (seeds {', '.join(str(r.seed) for r in runs) or 'none'})"
        + (f"; not finished: seeds {', '.join(map(str, missing))}" if missing else "")
        + f". Folder: `{shown(Path(root) / experiment)}`.",
    ]
    overrides = run_overrides(runs)
    if overrides:
        lines.append(f"Extra overrides (not the recipe): {'; '.join(f'`{o}`' for o in overrides)}.")
    lines += [
        "",
        "| metric (`metrics.json`, validation split) | mean ± sd | n |",
        "| --- | --- | --- |",
    ]
    for key in numeric_keys(runs):
        values = values_of(runs, key)
        lines.append(f"| `{key}` | {mean_sd(values)} | {len(values)} |")
    minutes = [m for m in map(wall_minutes, runs) if m is not None]
    wall = mean_sd(minutes, places=1) if minutes else "not recorded"
    lines.append(f"| wall time per run (minutes, all attempts) | {wall} | {len(minutes)} |")
    lines += ["", "Hardware:", *hardware_lines(runs), ""]
    return lines


def attempts(run: Run) -> list[dict]:
    return (run.info or {}).get("attempts", [])


def run_overrides(runs: list[Run]) -> list[str]:
    """The extra Hydra overrides the runs' attempts were given (each as one string)."""
    return sorted({" ".join(a.get("overrides", [])) for r in runs for a in attempts(r)} - {""})


def shown(path: Path) -> Path:
    """A path relative to the current folder where it is inside it (for the table)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def results_table(root: Path, experiments, seeds, data_options: dict | None = None) -> str:
    """The Markdown results of the finished runs of ``experiments`` x ``seeds`` under ``root``.

    ``data_options`` maps an experiment to its ``data`` option; by default it is read from
    the experiment's config.
    """
    root = Path(root)
    runs = {e: collect(root, e, seeds) for e in experiments}
    data = {e: (data_options or {}).get(e) or data_option(e) for e in experiments}
    lines = [
        "## Results of the `*_cpu` experiments (validation split)",
        "",
        "Our numbers are on the **validation split** (held-out slices/frames of the training "
        "data), mean ± sd (sample sd) over seeds, n = runs that report the metric. The "
        "paper's numbers are on the challenges' **hidden test sets** (full network, GPU), "
        "so the two are not directly comparable.",
        "",
        "| data set | experiment | measure | ours: validation split, mean ± sd | n | "
        "paper: test set |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in experiments:
        name, figures = PAPER.get(data[e], (data[e], ()))
        for fig in figures:
            values = values_of(runs[e], fig.key)
            lines.append(
                f"| {name} | `{e}` | {fig.name} (`{fig.key}`) | {mean_sd(values)} | "
                f"{len(values)} | {fig.value} |"
            )
    lines.append("")
    for e in experiments:
        lines += experiment_section(e, runs[e], seeds, root)
    return "\n".join(lines)


def write_record(run: Run, experiment: str, records: Path) -> Path:
    """Keep a finished run as ``<records>/<experiment>/seed<s>.json`` (what the results page
    reads): metrics without local paths, the recipe's overrides, wall time and hardware."""
    metrics = {k: v for k, v in run.metrics.items() if k != "checkpoint"}
    record = {
        "experiment": experiment,
        "seed": run.seed,
        "metrics": metrics,
        "overrides": run_overrides([run]),
        "wall_minutes": wall_minutes(run),
        "hardware": hardware_lines([run]),
    }
    path = Path(records) / experiment / f"seed{run.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the *_cpu experiments with several seeds; tabulate the results.",
        epilog="Hydra overrides for every run go after '--', e.g. -- trainer.max_epochs=2",
    )
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--root", type=Path, default=Path("outputs/results"))
    parser.add_argument(
        "--records",
        type=Path,
        default=ROOT / "docs" / "records",
        help="where each finished run's record is kept (for scripts/results_page.py)",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="no training: rebuild the table from the runs"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would run (and what is skipped)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value; got {bad}")
    known = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    unknown = [e for e in args.experiments if e not in known]
    if unknown:
        parser.error(f"--experiments {' '.join(unknown)}: no such experiment; choose from {known}")
    return args


def main(argv=None) -> int:
    """Run what is not finished (unless --table-only/--dry-run), then write the table."""
    args = parse_args(argv)
    root = args.root if args.root.is_absolute() else Path.cwd() / args.root
    failed = []
    if not args.table_only:
        plan = [(e, s) for e in args.experiments for s in args.seeds]
        for k, (e, s) in enumerate(plan, 1):
            folder = run_folder(root, e, s)
            if read_metrics(folder) is not None:
                print(f"[{k}/{len(plan)}] {e} seed {s}: finished, skipped ({folder})", flush=True)
                continue
            command = shlex.join(train_command(e, s, folder, args.overrides))
            if args.dry_run:
                resume = (
                    " (continues last.ckpt)" if (folder / "checkpoints/last.ckpt").is_file() else ""
                )
                print(f"[{k}/{len(plan)}] {e} seed {s}: would run{resume}: {command}", flush=True)
                continue
            print(f"[{k}/{len(plan)}] {e} seed {s}: running {command}", flush=True)
            attempt = run_one(e, s, root, args.overrides)
            status = "done" if attempt["returncode"] == 0 else f"FAILED ({attempt['returncode']})"
            print(
                f"    {status} in {attempt['wall_seconds'] / 60:.1f} min; log {folder / LOG_FILE}",
                flush=True,
            )
            if attempt["returncode"] != 0 or read_metrics(folder) is None:
                failed.append(f"{e} seed {s}")
    if args.dry_run:
        return 0
    table = results_table(root, args.experiments, args.seeds)
    for e in args.experiments:
        for run in collect(root, e, args.seeds):
            write_record(run, e, args.records)
    (root / TABLE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / TABLE_FILE).write_text(table + "\n")
    print(table)
    print(f"\nwritten: {root / TABLE_FILE}")
    if failed:
        print(f"failed runs (see their {LOG_FILE}): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
