"""What bf16 inference changes in the labels of the shipped models, on their validation splits.

    UNET_DATA_DIR=../shared/data python3 benchmarks/bf16_labels.py [--models u373 hela isbi] \
        [--variants torch:bf16 openvino:bf16]

Each shipped model predicts its validation split (the data and split its card records, its
test-time augmentation and tile size, as ``src/eval.py`` does) once in fp32 with PyTorch,
the reference, and once per variant (``engine:precision``). Printed per model and variant:

- the largest difference of the cell probability;
- pixels that flip: the share of pixels whose label (object or background) differs after
  the model's own post-processing;
- objects that change: objects of the reference labels that no object of the variant
  matches (more than half of the reference object covered and the match unique), and the
  other way round;
- the score of the labels (SEG for cell data, Rand error of the labels' boundary map for
  ISBI) under both, and the difference.

Variants whose engine is not installed, or bf16 where the CPU has no native bf16 (it is
emulated there: about 20x slower), are skipped with a line. The machine is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from unet.config.checks import build
from unet.config.models import with_shipped_models
from unet.config.recorded_data import with_recorded_data
from unet.evaluation.task import predict_split, score_split
from unet.inference.checkpoint import load_trained
from unet.inference.engines import engine_network, installed
from unet.inference.machine import cpu_model
from unet.inference.postprocess import postprocessing_for
from unet.inference.precision import cpu_has_native_bf16
from unet.inference.shipped import shipped_models
from unet.inference.tiler import Tiler
from unet.metrics import match_objects
from unet.model.record import record_or_default

ROOT = Path(__file__).resolve().parents[1]


def eval_config(name: str, data_dir: Path):
    """The eval config of ``src/eval.py ckpt_path=<name>``: the card's data and split."""
    overrides = [f"ckpt_path={name}", f"paths.data_dir={data_dir}"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    return with_recorded_data(with_shipped_models(cfg), overrides)


def compare(reference, variant, postprocess) -> dict:
    """Differences of ``variant``'s predictions from ``reference``'s (SplitPredictions)."""
    flips, pixels, lost, gained, objects = 0, 0, 0, 0, 0
    largest = 0.0
    for p_ref, p_var in zip(reference.probabilities, variant.probabilities, strict=True):
        largest = max(largest, float(np.abs(p_ref - p_var).max()))
        a, b = postprocess(p_ref), postprocess(p_var)
        flips += int(((a > 0) != (b > 0)).sum())
        pixels += a.size
        # the Cell Tracking Challenge's matching, each side as the other's "truth"
        kept = match_objects(b, a)
        objects += len(kept.truth_ids)
        lost += kept.misses
        gained += match_objects(a, b).misses
    return {
        "largest probability difference": largest,
        "pixels that flip": flips / pixels,
        "reference objects": objects,
        "objects not matched in the variant": lost,
        "variant objects not matched in the reference": gained,
    }


def label_score(split, postprocess) -> tuple[str, float]:
    metrics, _, _ = score_split(split, postprocess=postprocess)
    key = "val/seg" if "val/seg" in metrics else "val/labels_rand_error"
    return key, metrics[key]


def run_model(name: str, data_dir: Path, variants: list[tuple[str, str]]) -> None:
    cfg = eval_config(name, data_dir)
    trained = load_trained(cfg.ckpt_path)
    datamodule = build(cfg, "data")
    datamodule.setup("validate")
    record = record_or_default(trained.record, trained.path)
    tiler = Tiler(tile_size=record.tile_size, overlap=record.overlap)
    postprocess = postprocessing_for(trained.postprocess, cfg.get("postprocess"))
    start = time.perf_counter()
    reference = predict_split(trained.net, datamodule, "val", tiler, record.tta, 32)
    seconds = time.perf_counter() - start
    key, ref_score = label_score(reference, postprocess)
    print(
        f"\n{name}: {len(reference.probabilities)} validation images, TTA {record.tta}, "
        f"tile {record.tile_size}; fp32 PyTorch {seconds:.1f} s, {key} {ref_score:.4f}"
    )
    for engine, precision in variants:
        if not installed(engine):
            print(f"  {engine}:{precision}: skipped ({engine} is not installed)")
            continue
        if precision == "bf16" and not cpu_has_native_bf16():
            print(f"  {engine}:{precision}: skipped (no native bf16 on this CPU)")
            continue
        net = engine_network(trained.net, engine, precision)
        start = time.perf_counter()
        split = predict_split(net, datamodule, "val", tiler, record.tta, precision)
        seconds = time.perf_counter() - start
        _, score = label_score(split, postprocess)
        diff = compare(reference, split, postprocess)
        print(
            f"  {engine}:{precision}: {seconds:.1f} s, {key} {score:.4f} "
            f"({score - ref_score:+.4f})"
        )
        for what, value in diff.items():
            shown = f"{value:.2e}" if isinstance(value, float) else str(value)
            print(f"    {what}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted(shipped_models()))
    parser.add_argument("--variants", nargs="+", default=["torch:bf16", "openvino:bf16"])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("UNET_DATA_DIR", "data"))
    )
    args = parser.parse_args()
    variants = [tuple(v.split(":", 1)) for v in args.variants]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}")
    for name in args.models:
        run_model(name, args.data_dir.resolve(), variants)


if __name__ == "__main__":
    main()
