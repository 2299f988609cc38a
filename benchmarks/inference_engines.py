"""End-to-end prediction of one 2,048x2,048 image with each inference engine and precision.

    PYTHONPATH=src python benchmarks/inference_engines.py [--size 2048] [--tile 508]

The ``isbi_cpu`` network (depth 4, 16 base channels, batch norm, valid padding) with
random-initialised weights (speed does not depend on the weights; the label comparison is
then between near-random maps, a strict test). Each row is the second of two
``predict_image`` runs (the first traces and compiles the engine's graphs into the cache).
GFLOP/s counts the network FLOPs of every tile (``unet.model.network.forward_flops``) over the
seconds, also as a share of the machine's peak: a 4,096^3 ``torch.matmul`` in fp32 and bf16,
measured in the same run.

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
from unet.inference.engines import engine_network, installed
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
    """GFLOP/s of an n x n x n matrix product (best of 3)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b)) for _ in range(3))
    return 2 * n**3 / best / 1e9


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def tiles_flops(net: UNet, tiler: Tiler, size: tuple[int, int]) -> int:
    """Network FLOPs of every tile of the plan for an image of ``size``."""
    plan = tiler.plan(net, size)
    return sum(n * forward_flops(net.config, shape) for shape, n in plan.tile_shapes().items())


def row(name: str, precision: str, seconds: float, flops: int, peaks, diff: float, flipped):
    """One table row: seconds, GFLOP/s and its share of the fp32 and bf16 matmul peaks."""
    rate = flops / seconds / 1e9
    shares = " | ".join(f"{100 * rate / peak:.0f}%" for peak in peaks)
    print(
        f"| {name} | {precision} | {seconds:.2f} | {rate:.0f} | {shares} | {diff:.1e} | {flipped} |"
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

    runs = [
        (
            f"torch, same padding ({tiler.plan(same, image.shape).num_tiles} tiles)",
            "32",
            lambda: predict_image(same, image, tiler),
            tiles_flops(same, tiler, image.shape),
        ),
    ]
    flops = windows * forward_flops(same.config, (tile, tile))
    for precision in ("32", "bf16"):
        runs.append((f"MONAI ({windows} windows)", precision, partial(monai, precision), flops))
    post, reference = PostProcessing(), None
    for name, precision, run, count in runs:
        run()
        start = time.perf_counter()
        prob = run()
        seconds = time.perf_counter() - start
        labels = post(prob[1]) > 0
        reference = reference or (prob, labels)
        diff = float(np.abs(prob - reference[0]).max())
        flipped = int(np.count_nonzero(labels != reference[1]))
        row(name, precision, seconds, count, peaks, diff, flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=508)
    args = parser.parse_args()
    os.environ.setdefault("UNET_CACHE_DIR", tempfile.mkdtemp(prefix="unet-engines-"))
    torch.manual_seed(0)
    net = UNet(**ISBI_CPU.to_dict()).eval()
    image = np.random.default_rng(0).normal(size=(args.size, args.size)).astype(np.float32)
    tiler = Tiler(tile_size=args.tile, batch_size=1)
    flops = tiles_flops(net, tiler, image.shape)
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"cpu: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bf16: {cpu_has_native_bf16()}; peak matmul {peak32:.0f} GFLOP/s fp32, "
        f"{peak16:.0f} GFLOP/s bf16; load average {load}"
    )
    print(f"{args.size}x{args.size} image, tiles of {args.tile}: {flops / 1e9:.1f} GFLOP")
    print(
        "| engine | precision | seconds | GFLOP/s | of fp32 peak | of bf16 peak "
        "| max prob diff | flipped labels |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    post = PostProcessing()
    reference = None
    for engine, precision in VARIANTS:
        if engine not in ("torch", "auto") and not installed(engine):
            continue
        runner = engine_network(net, engine, precision)
        predict_image(runner, image, tiler, precision=precision)  # traces, compiles, caches
        start = time.perf_counter()
        prob = predict_image(runner, image, tiler, precision=precision)
        seconds = time.perf_counter() - start
        labels = post(prob[1]) > 0
        if reference is None:
            reference = (prob, labels)
        diff = float(np.abs(prob - reference[0]).max())
        flipped = int(np.count_nonzero(labels != reference[1]))
        name = f"auto ({runner.chosen})" if engine == "auto" else engine
        row(name, precision, seconds, flops, (peak32, peak16), diff, flipped)
    monai_rows(net, image, tiler, (peak32, peak16))
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
