"""End-to-end prediction of one 2,048x2,048 image with each inference engine and precision.

    PYTHONPATH=src python benchmarks/inference_engines.py [--size 2048] [--tile 508]

The ``isbi_cpu`` network (depth 4, 16 base channels, batch norm, valid padding) with
random-initialised weights (speed does not depend on the weights; the label comparison is
then between near-random maps, a strict test). Each row is the second of two
``predict_image`` runs (the first traces and compiles the engine's graphs into the cache).
GFLOP/s counts the network FLOPs of every tile (``unet.network.forward_flops``) over the
seconds; the machine's peak is a 4,096^3 ``torch.matmul`` in fp32 and bf16, in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from unet.engines import engine_network, installed
from unet.inference import predict_image
from unet.machine import cpu_model
from unet.network import NetConfig, UNet, forward_flops
from unet.postprocess import PostProcessing
from unet.precision import cpu_has_native_bf16
from unet.tiler import Tiler

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
    print(
        f"cpu: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bf16: {cpu_has_native_bf16()}; peak matmul {peak32:.0f} GFLOP/s fp32, "
        f"{peak16:.0f} GFLOP/s bf16"
    )
    print(f"{args.size}x{args.size} image, tiles of {args.tile}: {flops / 1e9:.1f} GFLOP")
    print("| engine | precision | seconds | GFLOP/s | max prob diff | flipped labels |")
    print("| --- | --- | --- | --- | --- | --- |")
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
        print(
            f"| {name} | {precision} | {seconds:.2f} | {flops / seconds / 1e9:.0f} | "
            f"{diff:.1e} | {flipped} |"
        )


if __name__ == "__main__":
    main()
