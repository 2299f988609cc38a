"""Train-step speed of precision and memory-layout variants, relative to fp32 eager.

    python benchmarks/train_step_variants.py [--nets isbi_cpu paper] [--rounds 4] [--compile]

One step is forward, weighted cross-entropy, backward and an Adam step on a random tile
already in memory (batch 1, the experiments' tile sizes). Variants: fp32 eager (the
reference), ``channels_last``, bf16 autocast, bf16 autocast + ``channels_last`` and, with
``--compile``, ``torch.compile`` (its compile time is printed separately). The variants run
interleaved, round after round in the same process, so that a change in the machine's load
shifts all of them alike; the figure is the fastest round of each. The CPU's native-bf16
flags are printed: without them PyTorch emulates bf16 (``unet.inference.precision``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from unet.inference.precision import NATIVE_BF16_FLAGS, cpu_flags
from unet.model.loss import weighted_cross_entropy
from unet.model.network import UNet, center_crop

NETS = {  # (architecture, tile) as in experiment=isbi_cpu and experiment=isbi_paper
    "isbi_cpu": (dict(base_channels=16, batch_norm=True, dropout=0.0), 508),
    "paper": (dict(), 572),
}
VARIANTS = {  # name: (bf16 autocast, channels_last)
    "fp32": (False, False),
    "channels_last": (False, True),
    "bf16": (True, False),
    "bf16+channels_last": (True, True),
}


def make_step(arch: dict, tile: int, bf16: bool, channels_last: bool, compile_net: bool):
    """A closure that runs one training step of a fresh network."""
    torch.manual_seed(0)
    net = UNet(**arch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    model = torch.compile(net) if compile_net else net
    x = torch.randn(1, 1, tile, tile).to(memory_format=layout)  # (B, C, H, W)
    target = torch.randint(0, 2, (1, tile, tile))
    weight = torch.rand(1, tile, tile)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        size = tuple(logits.shape[-2:])
        loss = weighted_cross_entropy(
            logits.float(), center_crop(target, size), center_crop(weight, size)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", default=["isbi_cpu"], choices=list(NETS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()

    native = sorted(cpu_flags() & set(NATIVE_BF16_FLAGS))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16 flags: {native or 'none'}"
    )
    for name in args.nets:
        arch, tile = NETS[name]
        steps = {v: make_step(arch, tile, *flags, False) for v, flags in VARIANTS.items()}
        if args.compile:
            steps["compile"] = make_step(arch, tile, False, False, True)
            first = timed(steps["compile"]) + timed(steps["compile"])
            print(f"{name}: torch.compile's first two steps took {first:.1f} s")
        for step in steps.values():
            step()  # warm-up
        best = {v: float("inf") for v in steps}
        for _ in range(args.rounds):
            for v, step in steps.items():
                best[v] = min(best[v], timed(step))
        print(f"{name} (tile {tile}): seconds per step, speed-up over fp32 eager")
        for v, seconds in best.items():
            print(f"  {v:<20} {seconds:8.3f} s  {best['fp32'] / seconds:5.2f}x")


if __name__ == "__main__":
    main()
