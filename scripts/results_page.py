"""Build the shipped models' results page from the records, never by hand.

    python3 scripts/results_page.py [--models models] [--records docs/records] \
        [--output docs/model-results.md] [--check]

Reads each shipped model's card (``models/<name>/model.yaml``: its final validation, its
training precision, time and hardware) and the records of the short recipe that its long
recipe extends (``docs/records/<experiment>/seed<s>.json``, kept by
``scripts/results_table.py``), and writes one page: for each model every validation
metric beside the short recipe's mean over seeds, what the longer training changed, the
paper's test-set figure and the best public figure we can cite
(:mod:`unet.evaluation.reference`), and whether the validation targets are met.
``--check`` writes nothing and exits with 1 when the page on disk is not what the records
give (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unet.evaluation.reference import BEST_PUBLIC, MEANING, PAPER, figure_text  # noqa: E402

# validation targets of the shipped models: (metric, "min" or "max", bound), per data set;
# post-processing chosen on other frames than it is scored on (the held-out figures)
TARGETS = {
    "PhC-C2DH-U373": (("val/seg_heldout", "min", 0.93),),
    "DIC-C2DH-HeLa": (("val/seg_heldout", "min", 0.88),),
    "isbi2012": (
        ("val/labels_rand_error_heldout", "max", 0.035),
        ("val/labels_v_rand_heldout", "min", 0.975),
    ),
}
# bookkeeping entries of metrics.json that are not scores
NOT_SCORES = {"val/frames", "val/pixel_error_threshold"}


def read_models(models: Path) -> list[tuple[str, dict]]:
    """(name, card) of every shipped model, by name."""
    cards = sorted(Path(models).glob("*/model.yaml"))
    return [(card.parent.name, yaml.safe_load(card.read_text())) for card in cards]


def short_recipe(card: dict, configs: Path) -> str | None:
    """The recipe a long recipe extends: the first default of ``experiment=<name>`` in the
    card's command (``u373_long`` extends ``u373_cpu``)."""
    match = re.search(r"experiment=(\S+)", str(card.get("recipe", "")))
    path = Path(configs) / "experiment" / f"{match.group(1)}.yaml" if match else None
    if path is None or not path.is_file():
        return None
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    first = next((d for d in defaults if isinstance(d, str) and d != "_self_"), None)
    return first.rsplit("/", 1)[-1] if first else None


def default_seed(configs: Path) -> int | None:
    """The seed a training command runs with when none is given (``configs/train.yaml``)."""
    path = Path(configs) / "train.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("seed") if path.is_file() else None


def read_records(records: Path, experiment: str | None) -> list[dict]:
    """The kept runs of ``experiment`` as the recipe stands (no extra overrides), by seed."""
    if experiment is None:
        return []
    paths = sorted((Path(records) / experiment).glob("seed*.json"))
    runs = [json.loads(p.read_text()) for p in paths]
    return sorted((r for r in runs if not r.get("overrides")), key=lambda r: r.get("seed", 0))


def seed_values(runs: list[dict], key: str) -> list[float]:
    values = [r.get("metrics", {}).get(key) for r in runs]
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{figure_text(mean)} (1)"
    return f"{figure_text(mean)} ± {figure_text(statistics.stdev(values), 2)} ({len(values)})"


def published(table: dict, dataset: str, key: str) -> str:
    figure = table.get(dataset, {}).get(key)
    return f"{figure_text(figure.value)} ({figure.source})" if figure else "-"


def target_rows(name: str, card: dict) -> list[str]:
    """Rows of the targets table for one model."""
    rows = []
    for key, kind, bound in TARGETS.get(card.get("data"), ()):
        value = card.get("validation", {}).get(key)
        if value is None:
            met = "not measured"
        elif (value >= bound) if kind == "min" else (value <= bound):
            met = "met"
        else:
            met = "**not met**"
        sign = ">=" if kind == "min" else "<="
        rows.append(f"| `{name}` | `{key}` | {sign} {bound} | {figure_text(value)} | {met} |")
    return rows


def training_lines(
    card: dict, short: str | None, runs: list[dict], default_seed: int | None = None
) -> list[str]:
    """How the model and the short recipe's runs were trained."""
    t = card.get("training", {})
    m = t.get("machine", {})
    hours = f"{t['seconds'] / 3600:.2f} h" if t.get("seconds") else "not recorded"
    load = t.get("load_average_range")
    lines = [
        f"- Shipped model: `{card.get('recipe')}`; precision {t.get('precision')}, "
        f"{t.get('epochs')} epochs, best epoch {t.get('best_epoch')}, seed {t.get('seed')}; "
        f"training time {hours} on {m.get('cpu')} ({m.get('cores')} cores, "
        f"torch {m.get('torch')}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + ")"
        + (f", 1-minute load average {load[0]}-{load[1]}" if load else "")
        + ".",
    ]
    if not runs:
        lines.append(
            f"- Short recipe `{short}`: no kept runs yet (`python3 scripts/results_table.py "
            f"--experiments {short} --seeds 12345 1 2 3`)."
        )
        return lines
    seeds = ", ".join(str(r.get("seed")) for r in runs)
    minutes = [r["wall_minutes"] for r in runs if r.get("wall_minutes") is not None]
    precisions = sorted({str(r.get("metrics", {}).get("precision")) for r in runs})
    wall = f"{statistics.fmean(minutes):.1f} min per run" if minutes else "wall time not kept"
    lines.append(
        f"- Short recipe `experiment={short}`: seeds {seeds}; precision "
        f"{', '.join(precisions)}; {wall}."
    )
    keys = seed_keys(card)
    lines += [f"  - {seed_line(r, keys, default_seed)}" for r in runs]
    return lines


def seed_keys(card: dict) -> list[str]:
    """The metrics shown per seed: those the paper and the targets name for the data set."""
    dataset = card.get("data")
    keys = [*PAPER.get(dataset, {}), *(key for key, _, _ in TARGETS.get(dataset, ()))]
    return list(dict.fromkeys(keys))


def seed_line(run: dict, keys: list[str], default_seed: int | None = None) -> str:
    """One kept run: its seed, the shown metrics, wall time and machine with load."""
    metrics = run.get("metrics", {})
    shown = [f"`{k}` {figure_text(metrics[k])}" for k in keys if k in metrics]
    wall = run.get("wall_minutes")
    where = "; ".join(h.removeprefix("- ") for h in run.get("hardware", []))
    return (
        f"seed {run.get('seed')}"
        + (" (the default)" if run.get("seed") == default_seed else "")
        + f": {', '.join(shown) or 'no shown metric'}; "
        + (f"{wall:.1f} min; " if wall is not None else "")
        + (where or "machine not recorded")
    )


def metric_rows(card: dict, runs: list[dict]) -> list[str]:
    """One row per validation metric of the model."""
    dataset = card.get("data")
    rows = []
    for key, value in card.get("validation", {}).items():
        if key in NOT_SCORES or not isinstance(value, int | float):
            continue
        values = seed_values(runs, key)
        bought = value - statistics.fmean(values) if values else None
        change = "-" if bought is None else f"{bought:+.4g}"
        rows.append(
            f"| `{key}` | {MEANING.get(key, '')} | {figure_text(value)} | {mean_sd(values)} | "
            f"{change} | {published(PAPER, dataset, key)} | "
            f"{published(BEST_PUBLIC, dataset, key)} |"
        )
    return rows


def model_section(name: str, card: dict, records: Path, configs: Path) -> list[str]:
    short = short_recipe(card, configs)
    runs = read_records(records, short)
    return [
        f"## `{name}`: {card.get('data')}",
        "",
        *training_lines(card, short, runs, default_seed(configs)),
        "",
        f"| metric | what it is | `{name}`, validation | `{short}`, validation, "
        "mean ± sd (runs) | longer training changed it by | paper | best public figure |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *metric_rows(card, runs),
        "",
    ]


INTRO = """# Shipped models: results

Written by `python3 scripts/results_page.py` from the shipped models' cards
(`models/<name>/model.yaml`) and the kept runs of the short recipes (`docs/records/`);
not edited by hand. Every figure of ours is a **validation** figure: the held-out frames
of the Cell Tracking Challenge training sequences, the held-out slices of the ISBI
training volume. The paper's figures and the best public ones are on the challenges'
hidden **test sets**: beside ours, not comparable as equals. The models are also scored
on annotated images that this repository does not contain.

## Validation targets

Post-processing chosen on other frames (slices) than those it is scored on.

| model | metric | target | validation | |
| --- | --- | --- | --- | --- |
"""


def page(models: Path, records: Path, configs: Path) -> str:
    """The whole results page."""
    cards = read_models(models)
    lines = [INTRO.rstrip("\n")]
    for name, card in cards:
        lines += target_rows(name, card)
    lines.append("")
    for name, card in cards:
        lines += model_section(name, card, records, configs)
    return "\n".join(lines).rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--records", type=Path, default=ROOT / "docs" / "records")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "model-results.md")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = page(args.models, args.records, args.configs) + "\n"
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output}: not what the records give; run scripts/results_page.py")
            return 1
        print(f"{args.output}: up to date")
        return 0
    args.output.write_text(text)
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
