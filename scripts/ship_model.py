"""Put a finished training run into ``models/<name>/``: the checkpoint without optimizer state,
its checksum, and a model card written from the run's own records.

    python scripts/ship_model.py --run outputs/u373_long --name u373 \
        --command "python src/train.py experiment=u373_long" --load-log load.log

The model card's numbers are the run's final validation (``metrics.json``, written by
``src/train.py`` with the best checkpoint); nothing is typed by hand. The training time is
the run's own Timer (summed over every resumed part), the hardware this machine's (run this
script on the machine that trained).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unet.config.recorded_data import recorded_datamodule  # noqa: E402
from unet.evaluation.reference import MEANING, figure_text, paper_summary  # noqa: E402
from unet.inference.machine import describe  # noqa: E402
from unet.inference.shipped import CARD, MODELS_DIR, check_frame, sha256_of  # noqa: E402
from unet.io.atomic import atomic_file, write_text  # noqa: E402

# what a prediction or a fine-tune needs; optimizer and loop state stay behind
DROPPED = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "logger_versions")


def slim(checkpoint: dict) -> dict:
    return {k: v for k, v in checkpoint.items() if k not in DROPPED}


def train_seconds(checkpoint: dict, run: Path) -> tuple[float | None, str]:
    """Training time and where it was read: Lightning's Timer (kept across resumes), else
    the sum of the epoch times that ``train.log`` lists (``epoch N/M ... time X s``)."""
    timer = (checkpoint.get("callbacks") or {}).get("Timer") or {}
    elapsed = timer.get("time_elapsed") or {}
    if elapsed:
        return round(sum(float(v) for v in elapsed.values()), 1), "Lightning's Timer"
    log = run / "train.log"
    times = (
        re.findall(r"^epoch \d+/\d+ .* time ([0-9.]+) s$", log.read_text(), re.M)
        if (log.is_file())
        else []
    )
    if times:
        return round(sum(map(float, times)), 1), "the epoch times in train.log, summed"
    return None, "not recorded"


def load_range(load_log: Path | None) -> list[float] | None:
    """The smallest and largest 1-minute load average logged during training."""
    if load_log is None or not load_log.is_file():
        return None
    values = [float(line.split()[1]) for line in load_log.read_text().splitlines() if line]
    return [min(values), max(values)] if values else None


def dataset_name(data: dict) -> str:
    """The data set a run trained on, from its DataModule's recorded settings."""
    isbi = recorded_datamodule(data) == "unet.data.isbi.IsbiDataModule"
    return str(
        data.get("dataset")  # a Cell Tracking Challenge data set
        or ("isbi2012" if isbi else None)  # the folder the ISBI data live in
        or Path(str(data.get("data_dir", ""))).name  # own data: its folder
        or "own"
    )


def entry(args, checkpoint: dict, metrics: dict, path: Path, last: dict) -> dict:
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = dataset_name(data)
    choice = checkpoint.get("training_choice") or {}
    seconds, seconds_from = train_seconds(last, args.run)
    return {
        "file": path.name,
        "sha256": sha256_of(path),
        "data": dataset,
        "summary": args.summary,
        "authors": list(args.authors),
        "recipe": args.command,
        "split": {k: data.get(k) for k in ("sequences", "val_frames", "val_slices") if k in data},
        "training": {
            "precision": choice.get("precision"),
            "channels_last": choice.get("channels_last"),
            "epochs": int(last.get("epoch", -1)) + 1,
            "best_epoch": int(checkpoint.get("epoch", -1)) + 1,
            "steps": int(last.get("global_step", 0)),
            "seconds": seconds,
            "seconds_from": seconds_from,
            "seed": data.get("seed"),
            "machine": describe(),
            "load_average_range": load_range(args.load_log),
        },
        "net": checkpoint.get("net_config"),
        "tta": metrics.get("tta"),
        "postprocess": metrics.get("postprocess"),
        "postprocess_chosen_on": checkpoint.get("postprocess_chosen_on"),
        "validation": {k: v for k, v in metrics.items() if k.startswith("val/")},
        "paper": paper_summary(dataset),
    }


def card(name: str, info: dict) -> str:
    t = info["training"]
    machine = t["machine"]
    hours = f"{t['seconds'] / 3600:.2f} h" if t["seconds"] else "not recorded"
    rows = [
        f"| `{k}` | {figure_text(v)} | {MEANING.get(k, '')} |"
        for k, v in info["validation"].items()
        if isinstance(v, int | float)
    ]
    load = t["load_average_range"]
    lines = [
        f"# `{name}`: {info['summary']}",
        "",
        "Use it by name wherever a checkpoint path is taken:",
        "",
        "```bash",
        f"python src/predict.py ckpt_path={name} input=<image> output=<folder>",
        f"python src/eval.py ckpt_path={name}",
        f"python src/export.py ckpt_path={name} output=<package.zip>",
        f"python src/train.py experiment=folder_cpu model.init_from={name} ...  # fine-tune",
        "```",
        "",
        "## Data and split",
        "",
        f"- Data set: {info['data']}; split settings: `{json.dumps(info['split'])}`.",
        "- All numbers below are **validation** numbers on the held-out part of the",
        "  training data; the paper's figures are on the challenge's hidden test set",
        f"  ({info['paper'].removesuffix(' (test set)')}), so the two are not directly",
        "  comparable.",
        "",
        "## Training",
        "",
        f"- Recipe: `{info['recipe']}`",
        f"- Precision {t['precision']}, channels_last {t['channels_last']}; "
        f"{t['epochs']} epochs ({t['steps']} steps), best epoch {t['best_epoch']}, "
        f"seed {t['seed']}.",
        f"- Training time {hours} ({t['seconds_from']}, every resumed part included) on "
        f"{machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}"
        + (f"; 1-minute load average {load[0]:.1f}-{load[1]:.1f} while it ran." if load else "."),
        f"- Network: `{json.dumps(info['net'])}`.",
        "",
        "## Validation (best checkpoint, final validation of the run)",
        "",
        f"Test-time augmentation `{info['tta']}`; post-processing chosen on the validation",
        f"{'slices' if 'val_slices' in info['split'] else 'frames'}: "
        f"`{json.dumps(info['postprocess'])}`.",
        "",
        "| metric | value | what it is |",
        "| --- | --- | --- |",
        *rows,
        "",
        "## File",
        "",
        f"`{info['file']}`, SHA-256 `{info['sha256']}` (checked before every use).",
        "",
    ]
    return "\n".join(lines)


def predicted(model: str | Path, frame: Path, output: Path) -> dict:
    """What ``src/predict.py`` gives for one frame with the shipped model, as numbers."""
    import subprocess

    import numpy as np
    import tifffile

    subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "predict.py"),
            f"ckpt_path={model}",
            f"input={frame}",
            f"output={output}",
            "overlays=false",
            "progress=false",
        ],
        check=True,
        cwd=ROOT,
    )
    probabilities = tifffile.imread(output / "probabilities.tif").astype(np.float64)
    labels = [tifffile.imread(p) for p in sorted((output / "labels").glob("*.tif"))]
    foreground = probabilities[-1] if probabilities.ndim == 3 else probabilities
    return {
        "mean_probability": round(float(foreground.mean()), 6),
        "objects": int(sum(len(np.unique(lab[lab > 0])) for lab in labels)),
        "labelled_fraction": round(float(np.mean([np.mean(lab > 0) for lab in labels])), 6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the training run's folder")
    parser.add_argument("--name", required=True, help="the short name (models/<name>/)")
    parser.add_argument("--command", required=True, help="the command that trained it")
    parser.add_argument("--summary", required=True, help="one line: what the model segments")
    parser.add_argument(
        "--authors",
        nargs="+",
        default=["unet contributors"],
        help="who trained it (the bioimage.io package lists them)",
    )
    parser.add_argument("--load-log", type=Path, default=None)
    parser.add_argument("--models", type=Path, default=MODELS_DIR)
    parser.add_argument(
        "--check-frame",
        required=True,
        help="one validation frame, relative to the data folder, predicted at shipping time "
        "and again by the tests (e.g. PhC-C2DH-U373/02/t077.tif)",
    )
    parser.add_argument(
        "--check-slice",
        type=int,
        default=None,
        help="where the check frame is a stack (ISBI 2012's train-volume.tif): the slice "
        "predicted, counted from 0 (e.g. 24, a validation slice)",
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    best = Path(metrics["checkpoint"])
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    last = torch.load(args.run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    folder = args.models / args.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.ckpt"
    with atomic_file(path) as tmp:
        torch.save(slim(checkpoint), tmp)
    info = entry(args, checkpoint, metrics, path, last)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        frame = check_frame(args.data_dir / args.check_frame, args.check_slice, Path(tmp))
        numbers = predicted(path, frame, Path(tmp) / "out")
    where = {} if args.check_slice is None else {"slice": args.check_slice}
    info["check"] = {"frame": args.check_frame, **where, **numbers}
    info = json.loads(json.dumps(info, default=str))  # plain types (torch's version string)
    write_text(folder / CARD, yaml.safe_dump(info, sort_keys=False))
    write_text(folder / "README.md", card(args.name, info))
    size = path.stat().st_size / 1e6
    print(f"{folder}: model.ckpt {size:.1f} MB, sha256 {info['sha256'][:12]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
