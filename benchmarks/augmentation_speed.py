"""Time to make one augmented training tile, on one CPU core.

    python benchmarks/augmentation_speed.py [--tiles 200] [--sizes 572 508] [--data-dir DIR]
                                            [--default-malloc]

The augmentation is ``configs/data/augmentation/paper.yaml`` (paper elastic deformation,
rotation by any angle, flips, gray values), applied to a HeLa frame with its weight map
(a random image when the data is not there). Printed per tile size, median over the tiles:
- plain crop: the mirrored window without augmentation (the floor);
- positions: elastic field + rotation + flips folded into one source map;
- resample: cutting the window and the three remaps (image cubic, weights linear, labels
  nearest);
- gray values: gamma, contrast, brightness;
- dataset item: ``RandomTileDataset[i]``, all of the above plus tensors;
- extra []: the whole augmentation with an empty albumentations list (``extra: []``);
- extra list: with the list of ``configs/data/augmentation/paper_extra.yaml`` (grid
  distortion, blur, noise), each transform applied every time (p = 1) and as configured.
OpenCV, torch and BLAS are held to one thread, and glibc keeps freed buffers for reuse
(:func:`unet.data.samples.keep_freed_memory`), as in a data-loader worker;
``--default-malloc`` leaves glibc's defaults, to show what that setting saves.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from unet.data.augment.paper import resample  # noqa: E402
from unet.data.mirror import crop_with_mirror  # noqa: E402
from unet.data.samples import RandomTileDataset, keep_freed_memory, standardize  # noqa: E402
from unet.data.weight_maps import instance_weight_map  # noqa: E402
from unet.inference.machine import cpu_model  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sample_frame(data_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    import tifffile

    folder = data_dir / "DIC-C2DH-HeLa"
    if (folder / "01" / "t039.tif").is_file():
        image = tifffile.imread(folder / "01" / "t039.tif")
        instances = tifffile.imread(folder / "01_GT" / "SEG" / "man_seg039.tif")
        return "HeLa 01/039 (512x512)", image, instances
    rng = np.random.default_rng(0)
    instances = np.kron(rng.integers(0, 20, (16, 16)), np.ones((32, 32), np.int32))
    return "random (512x512)", rng.integers(0, 255, (512, 512), np.uint8), instances


def albumentations_version() -> str:
    import albumentations

    return albumentations.__version__


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (caches, first-call allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def time_tile(size: int, augmentation, image, classes, weights, tiles: int) -> dict[str, float]:
    """Median ms per tile of each stage, for tiles of ``size``."""
    seeds = iter(range(10**9))

    def rng():
        return np.random.default_rng(next(seeds))

    def positions():
        return augmentation.source_positions(rng(), (256, 256), size)

    maps = [positions() for _ in range(20)]  # angles differ, and so do the windows
    dataset = RandomTileDataset([image], [classes], [weights], size, 10**6, augmentation)
    arrays, how = (image, classes, weights), ("cubic", "nearest", "linear")
    stages = {
        "plain crop": lambda: [crop_with_mirror(a, 0, 0, size, size) for a in arrays],
        "positions": positions,
        "resample": lambda: resample(arrays, *maps[next(seeds) % len(maps)], how),
        "gray": lambda: augmentation.gray_values(image[:size, :size], rng()),
        "item": lambda: dataset[next(seeds)],
    }
    return {k: median_ms(f, tiles) for k, f in stages.items()}


def time_extra(size: int, image, classes, weights, tiles: int) -> dict[str, float]:
    """Median ms per tile of the whole augmentation with albumentations lists after it."""
    seeds = iter(range(10**9))
    paper = OmegaConf.load(CONFIGS / "data" / "augmentation" / "paper.yaml").augmentation
    typical = OmegaConf.load(CONFIGS / "data" / "augmentation" / "paper_extra.yaml")
    always = [dict(t, p=1.0) for t in typical.augmentation.extra]
    variants = {
        "extra []": instantiate(paper),
        "extra list": instantiate(paper, extra=typical.augmentation.extra),
        "extra list p=1": instantiate(paper, extra=always),
    }

    def make(augmentation):
        return lambda: augmentation(
            image, classes, weights, (256, 256), size, np.random.default_rng(next(seeds))
        )

    return {k: median_ms(make(a), tiles) for k, a in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[572, 508])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("UNET_DATA_DIR", "data"))
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    kept = False if args.default_malloc else keep_freed_memory()

    augmentation = instantiate(
        OmegaConf.load(CONFIGS / "data" / "augmentation" / "paper.yaml").augmentation
    )
    name, raw, instances = sample_frame(args.data_dir)
    classes, weights = instance_weight_map(instances)
    image = standardize(raw)
    print(f"cpu: {cpu_model()}; 1 thread (torch, OpenCV {cv2.__version__}, BLAS)")
    print(f"freed buffers kept for reuse (as in a worker): {'yes' if kept else 'no'}")
    print(f"frame: {name}; {augmentation}")
    print(
        f"{'tile':>5} {'plain crop':>10} {'positions':>10} {'resample':>8} {'gray':>8} "
        f"{'item':>8}   (ms per tile, median of {args.tiles})"
    )
    for size in args.sizes:
        ms = time_tile(size, augmentation, image, classes, weights, args.tiles)
        print(
            f"{size:>5} {ms['plain crop']:>10.2f} {ms['positions']:>10.2f} {ms['resample']:>8.2f} "
            f"{ms['gray']:>8.2f} {ms['item']:>8.2f}",
            flush=True,
        )
    print(f"with albumentations {albumentations_version()} after it (ms per tile, median):")
    for size in args.sizes:
        ms = time_extra(size, image, classes, weights, args.tiles)
        print(f"{size:>5} " + " ".join(f"{k}: {v:.2f}" for k, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()
