"""Choosing the training precision: bf16 autocast where the hardware runs it natively.

Measured on the 2-core development machines (README, Benchmarks): on a CPU with
``avx512_bf16`` a train step under bf16 autocast ran 1.6x (16-channel net) to 2.2x (paper
net) faster than fp32; on a CPU without it (AVX2 only) the same step ran 20x slower, because
PyTorch then emulates bf16. ``trainer.precision=auto`` picks bf16 only where it is native.
"""

from __future__ import annotations

from pathlib import Path

import torch

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


def resolve_precision(precision: str | int, accelerator: str, cpuinfo: str | None = None) -> str:
    """Lightning's precision for ``trainer.precision``; ``auto`` becomes ``bf16-mixed`` where
    the device runs bf16 natively (a CUDA GPU that supports it, a CPU with avx512_bf16 or
    AMX) and ``32-true`` elsewhere. Other values are returned unchanged."""
    if str(precision) != "auto":
        return precision
    use_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if use_gpu:
        return (
            "bf16-mixed"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "32-true"
        )
    return "bf16-mixed" if cpu_has_native_bf16(cpuinfo) else "32-true"
