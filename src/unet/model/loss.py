"""Pixel-wise softmax cross-entropy weighted by a per-pixel weight map (paper, eq. 1).

    E = sum_x w(x) * -log p_{l(x)}(x)

where p_k(x) is the softmax over the class logits at pixel x and l(x) the true class.

Normalisation: we divide the sum by the number of pixels (not by the sum of the weights),
so the loss is the mean over pixels of w(x) * -log p_{l(x)}(x). With a batch of one tile
(the paper's setting) this differs from the paper's plain sum only by a constant factor,
which the learning rate absorbs; unlike the sum, it keeps the gradient's scale
independent of the tile size, so one learning rate works for small and large tiles.
Dividing by sum(w) instead would make a pixel's weight depend on the rest of its tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pixels of w(x) * -log softmax(logits)[target] (see module docstring).

    Args:
        logits: (B, K, H, W) unnormalised class scores.
        target: (B, H, W) integer class indices in [0, K).
        weight: (B, H, W) non-negative per-pixel weights; None means all ones.
    """
    if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match"
        )
    # log_softmax subtracts the max logit first, so large logits do not overflow exp().
    log_p = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
    nll = -log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)  # (B, H, W)
    if weight is not None:
        if weight.shape != nll.shape:
            raise ValueError(
                f"weight {tuple(weight.shape)} does not match target {tuple(target.shape)}"
            )
        nll = nll * weight
    return nll.mean()


class WeightedCrossEntropy(nn.Module):
    """``nn.Module`` form of :func:`weighted_cross_entropy`, for configs."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return weighted_cross_entropy(logits, target, weight)
