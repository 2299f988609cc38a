"""Exported weights against PyTorch: the same probabilities at several valid input sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from unet import shapes
from unet.errors import UserError
from unet.export.any_size import AnySizeUNet, minimum_size
from unet.network import NetConfig

TOLERANCE = 1e-4  # largest allowed |exported - PyTorch| probability


class ExportCheckError(UserError, RuntimeError):
    """Exported weights whose outputs differ from PyTorch's."""


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
) -> float:
    """max |run(x) - model(x)| over random standardised inputs (batch, C, H, W) of ``sizes``,
    C = ``model.config.in_channels``.

    ``run`` maps a float32 NumPy array to the exported model's output.
    """
    generator = torch.Generator().manual_seed(0)
    channels = model.config.in_channels
    worst = 0.0
    for h, w in sizes:
        x = torch.randn(batch, channels, h, w, generator=generator)
        expected = model(x).numpy()
        found = run(x.numpy())
        if found.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(found - expected).max()))
    return worst


def require_match(
    what: str, run: Callable[[np.ndarray], np.ndarray], model: torch.nn.Module
) -> float:
    """The largest difference from PyTorch at :func:`check_sizes`; an error above TOLERANCE."""
    sizes = sizes_to_check(model)
    difference = largest_difference(run, model, sizes)
    if not difference <= TOLERANCE:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ExportCheckError(
            f"{what}: outputs differ from PyTorch's by {difference:.3g} at input sizes {shown}; "
            f"expected at most {TOLERANCE}"
        )
    return difference
