"""Seconds to score the ISBI 2012 training labels with every challenge metric.

    python benchmarks/score_isbi.py [--data-dir ../shared/data] [--workers 1] [--repeats 1]

The "prediction" is a plausible probability map made from the labels themselves: the cell
mask smoothed with a Gaussian (sigma 2 px, so membranes blur and thin ones partly close)
plus Gaussian noise (sd 0.1), clipped to [0, 1], with a fixed seed. It prints the time of
``score_isbi_stack`` (all metrics in one pass, as an evaluation would call it) and of each
metric on its own (each recomputes the thresholded components it needs), with the values.
Times are wall-clock seconds and, in brackets, the CPU seconds of this process (the better
figure when other work shares the machine). ``--workers`` scores slices in parallel threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from unet.data.readers import binary_labels, read_tiff
from unet.metrics import pixel_error, rand_error, score_isbi_stack, v_scores, warping_error

ROOT = Path(__file__).resolve().parents[1]


def plausible_probabilities(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """(slices, H, W) float32 probability of the cell class, derived from the labels."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(cells.astype(np.float32), sigma=(0, 2, 2))
    noisy = smooth + rng.normal(0.0, 0.1, cells.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0)


def timed(function, *args, repeats: int = 1, **kwargs):
    """(wall seconds, CPU seconds) of the fastest of ``repeats`` runs, and its result."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("UNET_DATA_DIR", ROOT.parent / "shared" / "data")),
        help="folder with isbi2012/train-labels.tif (default: $UNET_DATA_DIR or ../shared/data)",
    )
    parser.add_argument("--workers", type=int, default=1, help="threads scoring slices")
    parser.add_argument("--repeats", type=int, default=1, help="report the best of N runs")
    args = parser.parse_args()

    path = args.data_dir / "isbi2012" / "train-labels.tif"
    cells = binary_labels(read_tiff(path), path)  # (slices, 512, 512), 1 = cell interior
    probabilities = plausible_probabilities(cells)
    print(
        f"{path}: {cells.shape[0]} slices of {cells.shape[1]}x{cells.shape[2]}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )

    (wall, cpu), scores = timed(
        score_isbi_stack, probabilities, cells, repeats=args.repeats, workers=args.workers
    )
    print(f"\nscore_isbi_stack, all metrics in one pass: {wall:.2f} s ({cpu:.2f} s CPU)")
    for name, value in scores.items():
        print(f"  {name:24s} {value:.6g}" if isinstance(value, float) else f"  {name:24s} {value}")

    print("\neach metric on its own:")
    for name, function, kwargs in (
        ("pixel_error (100 thresholds)", pixel_error, {}),
        ("rand_error (10 thresholds)", rand_error, {"workers": args.workers}),
        ("v_scores (10 thresholds)", v_scores, {"workers": args.workers}),
        ("warping_error (10 thresholds)", warping_error, {"workers": args.workers}),
    ):
        (wall, cpu), result = timed(function, probabilities, cells, repeats=args.repeats, **kwargs)
        if isinstance(result, dict):
            result = result["v_rand"]
        print(
            f"  {name:30s} {wall:6.2f} s ({cpu:6.2f} s CPU)  "
            f"best {result.value:.4f} at {result.threshold:g}"
        )


if __name__ == "__main__":
    main()
