"""The network as it is exported: U-Net logits -> softmax, one module.

Exported weights produce class probabilities (B, K, H', W') themselves, so that every
consumer (Fiji/deepImageJ, ilastik, QuPath, ONNX Runtime) gets probabilities without a
softmax step of its own (the zoo tools do not all implement one). The input is the image
(C channels) after per-image standardisation (zero mean, unit variance, channel by
channel), which the bioimage.io package declares as preprocessing and ``unet.inference.image``
does before tiling.
"""

from __future__ import annotations

import torch
from torch import nn

from unet.model.network import NetConfig, UNet


class ProbabilityUNet(nn.Module):
    """:class:`unet.model.network.UNet` followed by a softmax over the classes.

    Takes the ``UNet`` constructor arguments (the bioimage.io ``pytorch_state_dict``
    weights rebuild it from them). Its state dict keys are the checkpoint's (``net.*``).
    """

    def __init__(self, **net_kwargs):
        super().__init__()
        self.net = UNet(**net_kwargs)
        self.config: NetConfig = self.net.config

    @classmethod
    def wrap(cls, net: UNet) -> ProbabilityUNet:
        """A new module with a copy of ``net``'s weights, in ``eval()`` mode."""
        model = cls(**net.config.to_dict())
        model.net.load_state_dict(net.state_dict())
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) standardised images -> (B, K, H', W') class probabilities."""
        return self.net(x).softmax(dim=1)
