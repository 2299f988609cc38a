"""Own-data comparisons: data=folder against data=hela, and fine-tuning against scratch.

    UNET_DATA_DIR=../shared/data python3 benchmarks/own_data.py hela [--seeds 1 2 3]
    UNET_DATA_DIR=../shared/data python3 benchmarks/own_data.py finetune \
        [--starts isbi hela u373 <checkpoint> ...] [--minutes 5]

- ``hela``: the HeLa frames with SEG masks laid out as a folder data set (instance masks,
  the regions of unannotated cells, as data=hela finds them from the tracking markers,
  marked with the ``unlabelled`` value; the validation frames of data=hela), trained with
  ``experiment=folder_cpu`` and, as the reference, ``experiment=hela_cpu``, per seed.
  Printed: the validation SEG of both per seed and mean ± sd. The weight maps of the two
  routes are equal (tests/data/test_folder.py), so the SEGs should agree within the
  seeds' spread.
- ``finetune``: two U373 training frames (the first two annotated frames of sequence 01)
  and data=u373's validation frames as a folder data set; ``--minutes`` of training from
  each start model (``model.init_from``: a shipped model's name or a checkpoint; by
  default every shipped model) against the same time from scratch. Printed: the
  validation SEG of each. The shipped ``u373`` model was trained on all U373 training
  frames but these validation frames, so its start shows what a model of the same kind of
  images gives, not a fresh data set.

The trainings run one after the other through ``scripts/results_table.py`` (hardware
record, resumable runs, ``results.md`` per root); each takes up to 30 minutes (hela) or
``--minutes`` plus the final validation (finetune) on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from unet.data.ctc import annotated_frame_numbers, read_frame, unannotated_regions
from unet.inference.shipped import shipped_models

ROOT = Path(__file__).resolve().parents[1]
UNLABELLED = 65535  # no HeLa or U373 frame has that many cells
HELA_MARGIN, U373_MARGIN = 120, 80  # data/hela.yaml, data/u373.yaml: unannotated_margin


def lay_out(data_dir: Path, dataset: str, frames: list[str], margin: float, root: Path) -> None:
    """Frames "<seq>/<number>" as ``root/images/<seq>_<number>.tif`` and instance masks
    ``root/masks/...``, unannotated regions set to ``UNLABELLED``."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for frame_id in frames:
        sequence, number = frame_id.split("/")
        frame = read_frame(data_dir / dataset, sequence, number)
        mask = frame.instances.astype(np.uint16)
        mask[unannotated_regions(frame.instances, frame.markers, margin)] = UNLABELLED
        name = f"{sequence}_{number}.tif"
        tifffile.imwrite(root / "images" / name, frame.image)
        tifffile.imwrite(root / "masks" / name, mask)


def annotated(data_dir: Path, dataset: str) -> list[str]:
    folder = data_dir / dataset
    return [f"{s}/{n}" for s in ("01", "02") for n in annotated_frame_numbers(folder, s)]


def train(experiment: str, seeds, root: Path, overrides: list[str]) -> list[float | None]:
    """Run (or skip, if finished) the trainings; the validation SEG of each seed."""
    command = [sys.executable, "scripts/results_table.py", "--experiments", experiment]
    command += ["--seeds", *map(str, seeds), "--root", str(root)]
    command += ["--records", str(root / "records"), "--", *overrides]  # not the recipes' runs
    subprocess.run(command, cwd=ROOT, check=True)
    seg = []
    for seed in seeds:
        metrics = root / experiment / f"seed{seed}" / "metrics.json"
        seg.append(json.loads(metrics.read_text()).get("val/seg") if metrics.is_file() else None)
    return seg


def summary(name: str, values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    spread = f" ± {statistics.stdev(done):.3f}" if len(done) > 1 else ""
    mean = f"{statistics.mean(done):.3f}{spread}" if done else "not run"
    return f"{name:>28}: SEG {mean}  (per seed: {', '.join(f'{v:.3f}' for v in done)})"


def compare_hela(data_dir: Path, out: Path, seeds) -> None:
    folder = out / "hela_folder"
    if not (folder / "masks").is_dir():
        lay_out(
            data_dir, "DIC-C2DH-HeLa", annotated(data_dir, "DIC-C2DH-HeLa"), HELA_MARGIN, folder
        )
    reference = train("hela_cpu", seeds, out / "hela", [])
    own = train(
        "folder_cpu",
        seeds,
        out / "hela",
        [
            f"data.data_dir={folder}",
            "data.mask_type=instance",
            f"data.unlabelled={UNLABELLED}",
            "data.val=['01_054','02_038']",  # data=hela's validation frames
        ],
    )
    print(summary("data=hela (hela_cpu)", reference))
    print(summary("data=folder (folder_cpu)", own))


def compare_finetune(data_dir: Path, out: Path, starts: list[str], minutes: int, seeds) -> None:
    train_frames = annotated(data_dir, "PhC-C2DH-U373")[:2]
    folder = out / "u373_two_frames"
    if not (folder / "masks").is_dir():
        lay_out(data_dir, "PhC-C2DH-U373", train_frames, U373_MARGIN, folder)
        lay_out(data_dir, "PhC-C2DH-U373", ["01/112", "02/077"], U373_MARGIN, folder / "val")
    common = [
        f"data.data_dir={folder}",
        "data.mask_type=instance",
        f"data.unlabelled={UNLABELLED}",
        "data.val_images=val/images",
        "data.val_masks=val/masks",
        "data.samples_per_epoch=25",  # about 20 s per epoch on 2 cores: about 10 epochs
        "trainer.max_epochs=10",  # the cosine schedule's length; max_time ends it first if slower
        f"trainer.max_time=00:00:{minutes:02d}:00",
    ]
    results = {"from scratch": train("folder_cpu", seeds, out / "u373_scratch", common)}
    for start in starts:
        tag = Path(start).stem if Path(start).suffix else start
        results[f"fine-tuned from {start}"] = train(
            "folder_cpu", seeds, out / f"u373_from_{tag}", [*common, f"model.init_from={start}"]
        )
    print(f"U373, training frames {train_frames}, {minutes} minutes each:")
    for name, values in results.items():
        print(summary(name, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("comparison", choices=("hela", "finetune"))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("UNET_DATA_DIR", "data"))
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/own_data"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--starts",
        nargs="+",
        default=sorted(shipped_models()),
        help="finetune: start models (shipped names or checkpoints); default every shipped one",
    )
    parser.add_argument("--minutes", type=int, default=5)
    args = parser.parse_args()
    out = args.out.resolve()
    if args.comparison == "hela":
        compare_hela(args.data_dir, out, args.seeds)
    else:
        starts = [s if s in shipped_models() else str(Path(s).resolve()) for s in args.starts]
        compare_finetune(args.data_dir, out, starts, args.minutes, args.seeds)


if __name__ == "__main__":
    main()
