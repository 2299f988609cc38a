"""Test-time augmentation: class probabilities averaged over flips and rotations of the input.

Each transformed copy of the image is predicted by the tiler (``unet.inference.tiler.Tiler``),
turned
back, and the softmax probabilities are averaged. Plain torch; usable from a notebook.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from unet.errors import UserError
from unet.inference.tiler import Tiler


class TTAError(UserError, ValueError):
    """An unknown test-time augmentation."""


# Test-time augmentation: the 8 symmetries of the square (dihedral group D4) as
# (quarter turns, mirror first). The paper (Sec. 4, ISBI) averaged "7 rotated versions of
# the input data" without saying which; "paper7" takes the 7 that are not the identity,
# the only choice of 7 that needs no arbitrary pick and is closed under inversion.
D4 = tuple((k, flip) for flip in (False, True) for k in range(4))
TTA = {"none": D4[:1], "flips8": D4, "paper7": D4[1:]}


def _transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _untransform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def check_tta(tta: str) -> tuple[tuple[int, bool], ...]:
    """The (quarter turns, mirror) pairs of a test-time augmentation name."""
    if tta not in TTA:
        raise TTAError(f"tta={tta!r}: expected one of {', '.join(TTA)}")
    return TTA[tta]


def count_tiles(net: nn.Module, size: tuple[int, int], tiler: Tiler, tta: str = "none") -> int:
    """Number of tiles ``predict_probabilities`` runs for one image of ``size`` (H, W)."""
    plans = {s: tiler.plan(net, s).num_tiles for s in (tuple(size), tuple(size)[::-1])}
    return sum(plans[tuple(size)[::-1] if k % 2 else tuple(size)] for k, _ in check_tta(tta))


def predict_probabilities(
    net: nn.Module,
    image: torch.Tensor,
    tiler: Tiler | None = None,
    tta: str = "none",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Class probabilities (B, K, H, W) for images (B, C, H, W), tiled, with optional TTA.

    ``tta``: ``"none"``, ``"flips8"`` (all 8 flips/rotations) or ``"paper7"`` (the 7 that
    are not the identity). Each transformed copy is predicted, turned back, and the softmax
    probabilities are averaged (not the logits: a copy that is confidently wrong should
    count as one vote, not outweigh the others).
    """
    tiler = tiler or Tiler()
    transforms = check_tta(tta)
    b = len(image)
    # copies that share a shape (k even / k odd) go through the tiler as one batch
    by_parity: dict[int, list[tuple[int, bool]]] = defaultdict(list)
    for k, flip in transforms:
        by_parity[k % 2].append((k, flip))
    total = None
    for group in by_parity.values():
        x = torch.cat([_transform(image, k, flip) for k, flip in group])
        prob = tiler(net, x, on_batch).softmax(dim=1)
        for n, (k, flip) in enumerate(group):
            back = _untransform(prob[n * b : (n + 1) * b], k, flip)
            total = back if total is None else total + back
    return total / len(transforms)
