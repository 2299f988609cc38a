"""Weight-map time per annotated Cell Tracking Challenge frame, against the naive computation.

    python benchmarks/weight_map_speed.py [--dataset DIC-C2DH-HeLa] [--repeats 5] [--data-dir DIR]

All three compute the class map with separation borders, w_c and the border term of eq. 2
(w0 = 10, sigma = 5) for every SEG frame of the dataset:
- ours: each cell's distance transform (OpenCV, exact Euclidean) only inside its bounding
  box grown by the distance beyond which the border term is below 1e-6
  (``unet.data.weight_maps``);
- naive: one full-image distance transform per cell, the same OpenCV transform;
- naive scipy: one full-image ``scipy.ndimage.distance_transform_edt`` per cell, d1 and d2
  by sorting the stack (the textbook version).
Printed per frame (median of the repeats, one thread) with the ratios and the largest
difference between our map and the scipy one.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from unet.data import weight_maps as wm  # noqa: E402
from unet.data.ctc import read_annotated_frames  # noqa: E402


def naive_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The same map with a full-image distance transform per cell."""
    classes, cells = wm.instance_targets(instances)
    return wm.class_balance_weights(classes) + wm.border_weights(cells, w0, sigma, exact=True)


def naive_scipy_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0):
    """Per-cell full-image scipy distance transforms, sorted for d1 and d2."""
    classes, cells = wm.instance_targets(instances)
    ids = [i for i in np.unique(cells) if i]
    dists = np.sort(np.stack([ndimage.distance_transform_edt(cells != i) for i in ids]), axis=0)
    term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    term[cells > 0] = 0.0
    return wm.class_balance_weights(classes) + term.astype(np.float32)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="DIC-C2DH-HeLa")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("UNET_DATA_DIR", "data"))
    args = parser.parse_args()
    frames = read_annotated_frames(args.data_dir, args.dataset, ["01", "02"], markers=False)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    print(f"cpu: {cpu}; 1 thread; {args.dataset}, {len(frames)} SEG frames")
    print(
        f"{'frame':<8} {'size':>9} {'cells':>5} {'ours ms':>8} {'naive ms':>9} {'ratio':>6} "
        f"{'scipy ms':>9} {'ratio':>6} {'max diff':>9}"
    )
    times = []
    for f in frames:
        inst = f.instances
        row = [
            median_ms(lambda inst=inst, fn=fn: fn(inst), args.repeats)
            for fn in (
                lambda i: wm.instance_weight_map(i)[1],
                naive_weight_map,
                naive_scipy_weight_map,
            )
        ]
        times.append(row)
        diff = np.abs(wm.instance_weight_map(inst)[1] - naive_scipy_weight_map(inst)).max()
        cells = len(np.unique(inst)) - 1
        shape = "x".join(map(str, inst.shape))
        ours, naive, scipy_ms = row
        print(
            f"{f.id:<8} {shape:>9} {cells:>5} {ours:>8.1f} {naive:>9.1f} {naive / ours:>6.1f} "
            f"{scipy_ms:>9.1f} {scipy_ms / ours:>6.1f} {diff:>9.1e}",
            flush=True,
        )
    ours, naive, scipy_ms = np.median(np.array(times), axis=0)
    print(
        f"{'median':<8} {'':>9} {'':>5} {ours:>8.1f} {naive:>9.1f} {naive / ours:>6.1f} "
        f"{scipy_ms:>9.1f} {scipy_ms / ours:>6.1f}"
    )


if __name__ == "__main__":
    main()
