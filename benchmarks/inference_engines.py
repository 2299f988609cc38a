"""End-to-end prediction of one 2,048x2,048 image with each inference engine and precision.

    PYTHONPATH=src python benchmarks/inference_engines.py [--size 2048] [--tile 508]

The ``isbi_cpu`` network (depth 4, 16 base channels, batch norm, valid padding) with
random-initialised weights (speed does not depend on the weights; the label comparison is
then between near-random maps, a strict test). Each row is the second of two
``predict_image`` runs (the first traces and compiles the engine's graphs into the cache).
Engines that run compiled graphs get two rows: tiles of ``--tile`` (the tile the recipe
validated with, today's path) and the tiles predict and eval give them when
``tiler.tile_size`` is null (``unet.inference.engines.engine_tiler``); "seconds" is the
second run, with the first (tracing and compiling included) in brackets.
GFLOP/s counts the network FLOPs of every tile (``unet.model.network.forward_flops``) over the
seconds, also as a share of the machine's peak: a 4,096^3 ``torch.matmul`` in fp32 and
bf16 (best of 7), measured in the same run.

``--checkpoint`` (a checkpoint or a shipped model's name) runs trained weights instead,
and ``--image`` a real image: a TIFF, its frames laid side by side to fill the size (e.g.
``$UNET_DATA_DIR/isbi2012/train-volume.tif``: 16 of its 512 x 512 sections).

The MONAI rows run ``monai.inferers.sliding_window_inference`` (``pip install '.[bench]'``)
with the same weights: it needs outputs of the input's size, so the network runs with
``padding="same"`` (same convolution weights), on windows of the tile size (rounded to a
multiple of 16: 512 for 508) overlapping as the tiler's do, Gaussian blending. The row
"torch, same padding" is our tiler on that net, and the MONAI rows' differences are from
it (the valid-padding rows' from the first row).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial

import numpy as np
import torch

from unet.data.samples import standardize
from unet.inference.engines import engine_network, engine_tiler, installed
from unet.inference.image import predict_image
from unet.inference.machine import cpu_model
from unet.inference.postprocess import PostProcessing
from unet.inference.precision import cpu_has_native_bf16
from unet.inference.tiler import Tiler
from unet.model.network import NetConfig, UNet, forward_flops

ISBI_CPU = NetConfig(base_channels=16, batch_norm=True, dropout=0.0)
VARIANTS = [
    ("torch", "32"),
    ("torch", "bf16"),
    ("onnxruntime", "32"),
    ("openvino", "32"),
    ("openvino", "bf16"),
    ("auto", "32"),
]


def matmul_gflops(dtype: torch.dtype, n: int = 4096) -> float:
    """GFLOP/s of an n x n x n matrix product (best of 7, after two warm-up runs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b)) for _ in range(7))
    return 2 * n**3 / best / 1e9


def mosaic(path: str, size: int) -> np.ndarray:
    """A size x size image from the TIFF at ``path``: its frames side by side, row after
    row (starting over where the frames run out), cropped."""
    import tifffile

    frames = tifffile.imread(path).astype(np.float32)
    frames = frames.reshape(-1, *frames.shape[-2:])
    h, w = frames.shape[1:]
    rows, cols = -(-size // h), -(-size // w)
    tiles = [frames[i % len(frames)] for i in range(rows * cols)]
    grid = np.block([[tiles[r * cols + c] for c in range(cols)] for r in range(rows)])
    return grid[:size, :size]


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def tiling(net: UNet, tiler: Tiler, size: tuple[int, int]) -> tuple[str, int]:
    """("largest tile side (number of tiles)", network FLOPs of every tile) of the plan
    for an image of ``size``."""
    plan = tiler.plan(net, size)
    flops = sum(n * forward_flops(net.config, shape) for shape, n in plan.tile_shapes().items())
    return f"{max(plan.rows.in_sizes)} ({plan.num_tiles})", flops


def row(name, precision, tiles, seconds, first, flops, peaks, diff: float, flipped) -> None:
    """One table row: seconds (of the run after the first), GFLOP/s and its share of the
    fp32 and bf16 matmul peaks."""
    rate = flops / seconds / 1e9
    shares = " | ".join(f"{100 * rate / peak:.0f}%" for peak in peaks)
    timing = f"{seconds:.2f} ({first:.1f})"
    print(
        f"| {name} | {precision} | {tiles} | {timing} | {rate:.0f} | {shares} | {diff:.1e} "
        f"| {flipped} |"
    )


def monai_window(tiler: Tiler, net: UNet, size: tuple[int, int]) -> tuple[int, float, int]:
    """(window, MONAI's overlap fraction, number of windows) matching the tiler's plan of
    ``net`` for an image of ``size``: the same tile and the same overlap in pixels."""
    plan = tiler.plan(net, size)
    tile = plan.rows.in_sizes[0]
    overlap = tile - (plan.rows.out_starts[1] - plan.rows.out_starts[0])  # px
    fraction = (overlap - 0.5) / tile  # MONAI's stride: int(roi * (1 - overlap))
    stride = int(tile * (1 - fraction))
    windows = [-(-(side - tile) // stride) + 1 for side in size]
    return tile, fraction, windows[0] * windows[1]


def monai_rows(net: UNet, image: np.ndarray, tiler: Tiler, peaks) -> None:
    """Our tiler and MONAI's sliding window on ``net``'s weights with same padding."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("(MONAI rows skipped: monai is not installed; pip install '.[bench]')")
        return
    same = UNet(**(net.config.to_dict() | {"padding": "same"})).eval()
    same.load_state_dict(net.state_dict())
    # a same-padded net takes multiples of 2**depth (508 -> 512)
    step = 2**same.config.depth
    tiler = Tiler(tile_size=step * round(tiler.tile_size / step), batch_size=tiler.batch_size)
    tile, fraction, windows = monai_window(tiler, same, image.shape)
    x = torch.from_numpy(standardize(image))[None, None]  # (1, 1, H, W), as predict_image

    def monai(precision: str) -> np.ndarray:
        bf16 = precision == "bf16"
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = sliding_window_inference(
                x, (tile, tile), tiler.batch_size, same, fraction, mode="gaussian"
            )
        return logits.float().softmax(dim=1)[0].numpy()

    ours, ours_flops = tiling(same, tiler, image.shape)
    runs = [("torch, same padding", "32", lambda: predict_image(same, image, tiler), ours_flops)]
    flops = windows * forward_flops(same.config, (tile, tile))
    for precision in ("32", "bf16"):
        runs.append((f"MONAI ({windows} windows)", precision, partial(monai, precision), flops))
    post, reference = PostProcessing(), None
    for (name, precision, run, count), tiles in zip(runs, [ours, tile, tile], strict=True):
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        start = time.perf_counter()
        prob = run()
        seconds = time.perf_counter() - start
        labels = post(prob[1]) > 0
        reference = reference or (prob, labels)
        diff = float(np.abs(prob - reference[0]).max())
        flipped = int(np.count_nonzero(labels != reference[1]))
        row(name, precision, tiles, seconds, first, count, peaks, diff, flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=508)
    parser.add_argument("--checkpoint", help="trained weights (a checkpoint or a shipped name)")
    parser.add_argument("--image", help="a TIFF image or stack (laid out as a mosaic)")
    args = parser.parse_args()
    os.environ.setdefault("UNET_CACHE_DIR", tempfile.mkdtemp(prefix="unet-engines-"))
    torch.manual_seed(0)
    if args.checkpoint:
        from unet.inference.checkpoint import load_network
        from unet.inference.shipped import resolve_model

        net = load_network(resolve_model(args.checkpoint))
    else:
        net = UNet(**ISBI_CPU.to_dict()).eval()
    if args.image:
        image = mosaic(args.image, args.size)  # predict_image standardises it
    else:
        image = np.random.default_rng(0).normal(size=(args.size, args.size)).astype(np.float32)
    tiler = Tiler(tile_size=args.tile, batch_size=1)
    _, flops = tiling(net, tiler, image.shape)
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"cpu: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bf16: {cpu_has_native_bf16()}; peak matmul {peak32:.0f} GFLOP/s fp32, "
        f"{peak16:.0f} GFLOP/s bf16; load average {load}"
    )
    print(f"{args.size}x{args.size} image, tiles of {args.tile}: {flops / 1e9:.1f} GFLOP")
    print(
        "| engine | precision | tiles | seconds (first run) | GFLOP/s | of fp32 peak "
        "| of bf16 peak | max prob diff | flipped labels |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    post = PostProcessing()
    reference, timings = None, []
    for engine, precision in VARIANTS:
        if engine not in ("torch", "auto") and not installed(engine):
            continue
        runner = engine_network(net, engine, precision)
        # the tiles predict and eval use with this engine when tiler.tile_size is null
        chosen = engine_tiler(Tiler(batch_size=1), engine, net.config, args.tile)
        for tiles in dict.fromkeys([tiler, chosen]):  # the validated tile, then the engine's
            start = time.perf_counter()
            predict_image(runner, image, tiles, precision=precision)  # traces, compiles, caches
            first = time.perf_counter() - start
            start = time.perf_counter()
            prob = predict_image(runner, image, tiles, precision=precision)
            seconds = time.perf_counter() - start
            labels = post(prob[1]) > 0
            if reference is None:
                reference = (prob, labels)
            diff = float(np.abs(prob - reference[0]).max())
            flipped = int(np.count_nonzero(labels != reference[1]))
            name = f"auto ({runner.chosen})" if engine == "auto" else engine
            shown, count = tiling(net, tiles, image.shape)
            row(name, precision, shown, seconds, first, count, (peak32, peak16), diff, flipped)
            timings.append((f"{name} {precision}, tiles {shown}", seconds, flipped))
    today = timings[0][1]
    auto = [t for t in timings if t[0].startswith("auto")][-1]
    bf16 = min((t for t in timings if " bf16," in t[0]), key=lambda t: t[1])
    for what, (name, seconds, flipped) in [("engine=auto", auto), ("fastest bf16", bf16)]:
        print(
            f"{what}: {name}: {today / seconds:.2f}x today's path (torch fp32, tiles of "
            f"{args.tile}), {flipped} labels flipped"
        )
    monai_rows(net, image, tiler, (peak32, peak16))
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
