"""Running a U-Net on images of any size: mirror-pad to a valid input, crop the output back.

Works on plain tensors, for notebooks as well as for the LightningModule's validation.
"""

from __future__ import annotations

import torch
from torch import nn

from unet import shapes
from unet.mirror import mirror_pad


def _axis_plan(size: int, depth: int, padding: str) -> tuple[int, int, int]:
    """(input length, pad before, output offset) to predict ``size`` pixels in one pass."""
    if padding == "valid":
        in_size = shapes.smallest_input_covering(size, depth, padding)
    else:
        step = 2**depth
        in_size = -(-size // step) * step
    out_size = shapes.output_size(in_size, depth, padding)
    before = (in_size - out_size) // 2 if padding == "valid" else (in_size - size) // 2
    # Output pixel j sees input pixel j + (in - out) / 2; image pixel y is input y + before.
    offset = before - (in_size - out_size) // 2
    return in_size, before, offset


def predict_whole_image(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) for images (B, C, H, W) of any size, in one forward pass.

    The image is extended by mirroring to the smallest input the network accepts (paper,
    Fig. 2: missing context is extrapolated by mirroring) and the output cropped to (H, W).
    """
    h, w = image.shape[-2:]
    in_h, top, off_y = _axis_plan(h, net.depth, net.padding)
    in_w, left, off_x = _axis_plan(w, net.depth, net.padding)
    padded = mirror_pad(image, top, in_h - h - top, left, in_w - w - left)
    logits = net(padded)
    return logits[..., off_y : off_y + h, off_x : off_x + w]
