"""Choosing the training precision and memory layout for this machine.

bf16 autocast where the hardware runs it natively; ``channels_last`` where a measured train
step is faster with it.

Measured on the 2-core development machines (docs/benchmarks.md): on a CPU with
``avx512_bf16`` a train step under bf16 autocast ran 1.6x (16-channel net) to 2.2x (paper
net) faster than fp32; on a CPU without it (AVX2 only) the same step ran 20x slower, because
PyTorch then emulates bf16. ``trainer.precision=auto`` picks bf16 only where it is native.
``model.channels_last=auto`` times a few train steps of a copy of the network on a random
batch of the training tile's shape, with and without ``channels_last``, and keeps the faster
(1.09x for the 16-channel net, 1.15x for the paper net on that CPU, fp32; 1.10x over bf16
alone).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

# CPU flags (Linux /proc/cpuinfo) of native bf16 matrix arithmetic
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 matrix products natively (else PyTorch emulates them)."""
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a CUDA GPU here."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str | int, accelerator: str, cpuinfo: str | None = None) -> str:
    """Lightning's precision for ``trainer.precision``; ``auto`` becomes ``bf16-mixed`` where
    the device runs bf16 natively (a CUDA GPU that supports it, a CPU with avx512_bf16 or
    AMX) and ``32-true`` elsewhere. Other values are returned unchanged."""
    if str(precision) != "auto":
        return precision
    if uses_gpu(accelerator):
        return (
            "bf16-mixed"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "32-true"
        )
    return "bf16-mixed" if cpu_has_native_bf16(cpuinfo) else "32-true"


# the gain channels_last must show over the contiguous layout to be chosen (timing noise)
MARGIN = 0.02


@dataclass(frozen=True)
class TrainingChoice:
    """How this machine trains: Lightning's precision, the memory layout, and the measured
    seconds per train step (None where nothing was measured)."""

    precision: str
    channels_last: bool
    step_seconds: float | None = None

    def line(self) -> str:
        """One line for the start of a run."""
        step = f"; {self.step_seconds:.3f} s per train step" if self.step_seconds else ""
        return (
            f"training: precision {self.precision}, channels_last "
            f"{str(self.channels_last).lower()}{step}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def train_step_seconds(
    net: nn.Module, shape: tuple[int, ...], precision: str, channels_last: bool, steps: int = 2
) -> float:
    """Best seconds of ``steps`` train steps (forward, backward, optimiser step; after one
    warm-up step) of a copy of ``net`` on a random batch of ``shape`` (B, C, H, W), on the
    device of ``net``'s parameters, under ``precision``'s autocast."""
    model = copy.deepcopy(net).train()
    device = next(model.parameters()).device
    x = torch.randn(shape, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(precision).split("-")[0])
    best = float("inf")
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().logsumexp(dim=1).mean()  # any loss of every output
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first step builds the kernels
            best = min(best, time.perf_counter() - start)
    return best


def choose_training(
    net: nn.Module,
    shape: tuple[int, ...],
    precision: str | int,
    accelerator: str,
    channels_last: bool | str,
) -> TrainingChoice:
    """The precision (:func:`resolve_precision`) and layout to train ``net`` on batches of
    ``shape`` with. Where either is ``auto`` the train step is timed (on a copy, on the
    device that trains); for ``channels_last=auto`` with and without it, keeping
    ``channels_last`` only if it is at least :data:`MARGIN` faster. Nothing is timed where
    both are given."""
    resolved = str(resolve_precision(precision, accelerator))
    if str(precision) != "auto" and channels_last != "auto":
        return TrainingChoice(resolved, bool(channels_last))
    device = torch.device("cuda" if uses_gpu(accelerator) else "cpu")
    moved = copy.deepcopy(net).to(device)
    layouts = (False, True) if channels_last == "auto" else (bool(channels_last),)
    seconds = {last: train_step_seconds(moved, shape, resolved, last) for last in layouts}
    chosen = bool(channels_last)
    if channels_last == "auto":
        chosen = seconds[True] < (1 - MARGIN) * seconds[False]
    return TrainingChoice(resolved, chosen, round(seconds[chosen], 4))
