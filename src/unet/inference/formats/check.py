"""Exported weights against PyTorch: the same probabilities at several valid input sizes.

NaN-safe: a network whose own output is not finite is refused (nothing to compare it
with), and a NaN in the exported output counts as an infinite difference (``max`` and
``>`` would pass NaN silently).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from unet.errors import UserError
from unet.inference.formats.any_size import AnySizeUNet, minimum_size
from unet.model import shapes
from unet.model.network import NetConfig

TOLERANCE = 1e-4  # largest allowed |exported - PyTorch| probability


class ExportCheckError(UserError, RuntimeError):
    """Exported weights whose outputs differ from PyTorch's, or are not finite."""


def require_finite(what: str, output: np.ndarray, size: tuple[int, ...]) -> None:
    """An ExportCheckError unless the network's ``output`` for an input of ``size`` is finite."""
    bad = int((~np.isfinite(output)).sum())
    if bad:
        shown = "x".join(str(n) for n in size)
        raise ExportCheckError(
            f"{what}: the network's own output holds {bad:,} NaN or infinite values of "
            f"{output.size:,} for a {shown} input; not exporting it -- the checkpoint is "
            "damaged or its weights overflow: retrain or use another checkpoint"
        )


def check_sizes(config: NetConfig) -> list[tuple[int, int]]:
    """Three valid (H, W) input sizes, the last one not square: the smallest, the next, and
    the smallest by two steps more."""
    smallest, step = shapes.size_rule(config.depth, config.padding)
    return [
        (smallest, smallest),
        (smallest + step, smallest + step),
        (smallest, smallest + 2 * step),
    ]


def sizes_to_check(model: torch.nn.Module) -> list[tuple[int, int]]:
    """:func:`check_sizes` for the bare network; for :class:`AnySizeUNet` the minimum and
    two sizes off the pooling grid, the last one not square."""
    if not isinstance(model, AnySizeUNet):
        return check_sizes(model.config)
    m, grid = minimum_size(model.config), 2**model.config.depth
    return [(m, m), (m + 1, m + 1), (m + 3, m + 2 * grid + 5)]


@torch.no_grad()
def largest_difference(
    run: Callable[[np.ndarray], np.ndarray],
    model: torch.nn.Module,
    sizes: list[tuple[int, int]],
    batch: int = 2,
    what: str = "export",
) -> float:
    """max |run(x) - model(x)| over random standardised inputs (batch, C, H, W) of ``sizes``,
    C = ``model.config.in_channels``; infinite where ``run`` gives NaN or infinite values.

    ``run`` maps a float32 NumPy array to the exported model's output.

    Raises:
        ExportCheckError: the PyTorch model's own output is not finite (``what`` names it).
    """
    generator = torch.Generator().manual_seed(0)
    channels = model.config.in_channels
    worst = 0.0
    for h, w in sizes:
        x = torch.randn(batch, channels, h, w, generator=generator)
        expected = model(x).numpy()
        require_finite(what, expected, (h, w))
        found = run(x.numpy())
        if found.shape != expected.shape or not np.isfinite(found).all():
            return float("inf")
        worst = max(worst, float(np.abs(found - expected).max()))
    return worst


def require_match(
    what: str, run: Callable[[np.ndarray], np.ndarray], model: torch.nn.Module
) -> float:
    """The largest difference from PyTorch at :func:`check_sizes`; an error above TOLERANCE."""
    sizes = sizes_to_check(model)
    difference = largest_difference(run, model, sizes, what=what)
    if not difference <= TOLERANCE:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ExportCheckError(
            f"{what}: outputs differ from PyTorch's by {difference:.3g} at input sizes {shown}; "
            f"expected at most {TOLERANCE}"
        )
    return difference
