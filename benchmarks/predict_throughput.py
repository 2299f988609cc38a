"""Prediction throughput of the overlap-tile tiler, and how far it is from the FLOP limit.

    python benchmarks/predict_throughput.py [--size 2048] [--slices 30] [--device cpu]
        [--memory-gb N] [--precision 32|bf16] [--no-monai]

The paper's network (``UNet()`` defaults, random weights, eval mode) on a size x size image
and on a stack of ``--slices`` 512 x 512 slices, tiled within the memory budget:
- megapixels/s, measured once after a warm-up;
- the lower bound: the network FLOPs of the smallest valid covering (one whole-image pass
  per image, ``unet.model.network.forward_flops``) divided by the machine's conv throughput,
  measured here on a 64->64 3x3 conv at 256x256; ``x limit`` = measured time / lower bound.
  It splits into the tiles' extra FLOPs (overlapping context) and the achieved GFLOP/s;
- peak memory of the run next to the tiler's estimate.
The same weights with ``padding="same"``: the tiler against MONAI's
``sliding_window_inference`` (same tile size, same overlap in pixels, same batch, Gaussian
blending), each with its largest difference from a whole-image pass (where a seam shows).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch import nn

from unet.inference.tiler import (
    Tiler,
    available_memory_bytes,
    predict_whole_image,
    tile_memory_bytes,
)
from unet.model import shapes
from unet.model.network import NetConfig, UNet, forward_flops


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hardware(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} threads"


def conv_gflops(device: str, dtype: torch.dtype | None) -> float:
    """Measured GFLOP/s of a 64->64 3x3 conv on 256x256 maps (the machine's conv speed)."""
    batch = 16 if device == "cuda" else 1  # one 256x256 map cannot fill a GPU
    conv = nn.Conv2d(64, 64, 3, padding=1).to(device)
    x = torch.randn(batch, 64, 256, 256, device=device)
    flops = 2 * 64 * 64 * 9 * 256 * 256 * batch
    best = float("inf")
    with torch.inference_mode(), autocast(device, dtype):
        for _ in range(3):
            conv(x)
        for _ in range(10):  # the best of 10: other processes only ever slow it down
            sync(device)
            start = time.perf_counter()
            for _ in range(5):
                conv(x)
            sync(device)
            best = min(best, (time.perf_counter() - start) / 5)
    return flops / best / 1e9


def autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process's peak RSS on Linux."""

    def __init__(self, device: str):
        self.device, self.bytes = device, None

    def _rss_peak(self) -> int | None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:  # "5" resets the peak resident set size (Linux)
                Path("/proc/self/clear_refs").write_text("5")
                self.base = self._rss_peak()
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        elif self.base is not None:
            self.bytes = self._rss_peak() - self.base


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def covering_flops(config: NetConfig, size: tuple[int, int]) -> int:
    """FLOPs of one whole-image pass over the smallest valid input covering ``size``."""
    depth, padding = config.depth, config.padding
    step = 2**depth
    if padding == "valid":
        shape = tuple(shapes.smallest_input_covering(s, depth) for s in size)
    else:
        shape = tuple(-(-s // step) * step for s in size)
    return forward_flops(config, shape)


def tiled_flops(net: UNet, tiler: Tiler, size: tuple[int, int]) -> int:
    plan = tiler.plan(net, size)
    return sum(n * forward_flops(net.config, shape) for shape, n in plan.tile_shapes().items())


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def report(name, net, tiler, size, count, seconds, peak, gflops):
    plan = tiler.plan(net, size)
    lower = count * covering_flops(net.config, size)
    tiles = count * tiled_flops(net, tiler, size)
    limit = lower / (gflops * 1e9)
    shapes_text = " + ".join(f"{n}x{h}x{w}" for (h, w), n in plan.tile_shapes().items())
    estimate = tile_memory_bytes(net, max(plan.rows.in_sizes), max(plan.cols.in_sizes))
    print(
        f"{name:<26} {count * size[0] * size[1] / 1e6 / seconds:>6.2f} MP/s  {seconds:>7.1f} s  "
        f"limit {limit:>6.1f} s  x limit {seconds / limit:>5.2f}  "
        f"(tile FLOPs x{tiles / lower:.3f}, {tiles / seconds / 1e9:.0f} GFLOP/s)  "
        f"tiles {shapes_text}, batch {plan.batch_size}  "
        f"peak {gib(peak)} GiB (estimate {gib(estimate * min(plan.batch_size, plan.num_tiles))})",
        flush=True,
    )


def bench_paper(net, tiler, args, gflops, dtype) -> None:
    """The paper's network on one large image and on a stack of 512x512 slices."""
    device, size = args.device, (args.size, args.size)
    with torch.inference_mode(), autocast(device, dtype):
        tiler(net, torch.randn(1, 1, 388, 388, device=device))  # warm-up
        image = torch.randn(1, 1, *size, device=device)
        with PeakMemory(device) as peak:
            _, seconds = timed(lambda: tiler(net, image), device)
        name = f"paper net {args.size}x{args.size}"
        report(name, net, tiler, size, 1, seconds, peak.bytes, gflops)
        if args.slices:
            stack = torch.randn(args.slices, 1, 1, 512, 512, device=device)
            with PeakMemory(device) as peak:  # one slice at a time, as src/predict.py does
                _, seconds = timed(lambda: [tiler(net, s) for s in stack], device)
            name = f"paper net {args.slices}x512x512"
            report(name, net, tiler, (512, 512), args.slices, seconds, peak.bytes, gflops)


def bench_same(net, tiler, args, gflops, dtype) -> None:
    """The paper's weights with same padding: the tiler against MONAI's sliding window."""
    device, size = args.device, (args.size, args.size)
    same = UNet(padding="same").to(device).eval()
    same.load_state_dict(net.state_dict())
    image = torch.randn(1, 1, *size, device=device)
    plan = tiler.plan(same, size)
    with torch.inference_mode(), autocast(device, dtype):
        with PeakMemory(device) as peak:
            ours, seconds = timed(lambda: tiler(same, image), device)
        report(
            f"same net {args.size}x{args.size}", same, tiler, size, 1, seconds, peak.bytes, gflops
        )
        whole = None
        need = tile_memory_bytes(same, *size)
        if need < 0.6 * available_memory_bytes(torch.device(device)):
            whole = predict_whole_image(same, image).float()
            print(f"  tiler: largest |logit - whole-image pass| = {(ours - whole).abs().max():.2e}")
        else:
            print(f"  (no whole-image reference: it would need about {gib(need)} GiB)")
        try:
            from monai.inferers import sliding_window_inference
        except ImportError:
            print("  MONAI comparison skipped: monai is not installed (pip install monai)")
            return
        if args.no_monai or plan.num_tiles == 1:
            print("  MONAI comparison skipped" + (": one tile" if plan.num_tiles == 1 else ""))
            return
        tile = plan.rows.in_sizes[0]
        overlap = tile - (plan.rows.out_starts[1] - plan.rows.out_starts[0])  # px
        theirs, monai_seconds = timed(
            lambda: sliding_window_inference(
                image,
                roi_size=(tile, tile),
                sw_batch_size=plan.batch_size,
                predictor=same,
                overlap=(overlap - 0.5) / tile,  # MONAI's stride: int(roi * (1 - overlap))
                mode="gaussian",
            ),
            device,
        )
        print(
            f"  MONAI sliding_window_inference (roi {tile}, overlap {overlap} px, gaussian): "
            f"{monai_seconds:.1f} s; tiler / MONAI time = {seconds / monai_seconds:.2f}"
        )
        if whole is not None:
            print(
                f"  MONAI: largest |logit - whole-image pass| = {(theirs - whole).abs().max():.2e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the large image")
    parser.add_argument("--slices", type=int, default=30, help="512x512 slices in the stack")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--memory-gb", type=float, default=None, help="tiler budget (default: automatic)"
    )
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--nets", nargs="+", choices=("paper", "same"), default=["paper", "same"])
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI comparison")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)

    print(
        f"device: {args.device} ({hardware(args.device)}); torch {torch.__version__}; "
        f"fp{args.precision}"
    )
    gflops = conv_gflops(args.device, dtype)
    print(f"conv throughput (64->64 3x3 conv, 256x256): {gflops:.0f} GFLOP/s", flush=True)
    net = UNet().to(args.device).eval()  # the paper's network, random weights
    # the automatic budget follows the free memory: fixed once here so that plans repeat
    tiler = Tiler(memory_gb=args.memory_gb or Tiler().memory_budget(net) / 2**30)
    print(f"tiler memory budget: {gib(tiler.memory_budget(net))} GiB")
    if "paper" in args.nets:
        bench_paper(net, tiler, args, gflops, dtype)
    if "same" in args.nets:
        bench_same(net, tiler, args, gflops, dtype)


if __name__ == "__main__":
    main()
