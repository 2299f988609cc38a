"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), as a plain ``nn.Module``.

Paper, Sec. 2 and Fig. 1: a contracting path of ``depth`` levels, each two 3x3 convs +
ReLU followed by a 2x2 max pool (stride 2), doubling the channels from ``base_channels``;
a bottleneck of two 3x3 convs; an expanding path of 2x2 up-convolutions that halve the
channels, concatenation with the centre-cropped skip connection, and two 3x3 convs + ReLU;
a final 1x1 conv to ``num_classes`` logits. With the defaults this is the paper's network:
23 conv layers, 31,030,658 parameters, 572x572 in -> 388x388 out.

This module imports neither Lightning nor Hydra so that it can be used on its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from unet.model import shapes

UP_MODES = ("transpose", "bilinear")


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two axes of ``x`` to ``size`` around the centre."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def norm_layer(norm: str | None, channels: int) -> nn.Module | None:
    """``"batch"``: batch norm; ``"instance"``: each image's (each tile's) own statistics per
    channel, with a learned scale and shift; None: no normalisation (the paper)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return None


class DoubleConv(nn.Sequential):
    """Two 3x3 convs, each followed by (an optional normalisation and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: str, norm: str | None):
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=pad, bias=norm is None))
            if (layer := norm_layer(norm, out_channels)) is not None:
                layers.append(layer)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Double the size and halve the channels, concatenate the cropped skip, two convs."""

    def __init__(
        self, in_channels: int, out_channels: int, padding: str, norm: str | None, up_mode: str
    ):
        super().__init__()
        if up_mode == "transpose":  # paper: "2x2 up-convolution that halves the channels"
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:  # bilinear upsampling, then a 1x1 conv to halve the channels (same sizes)
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C/2, 2H, 2W)
        skip = center_crop(skip, x.shape[-2:])  # the skip is larger with valid padding
        return self.conv(torch.cat([skip, x], dim=1))  # (B, C/2, 2H-4, 2W-4) when valid


# architecture fields added after records were first written, with the value older
# records mean (they load unchanged)
ADDED_FIELDS = {"instance_norm": False}


def with_added_fields(values: dict) -> dict:
    """A stored architecture record with the fields added since it was written, at the
    values older records mean."""
    return {**ADDED_FIELDS, **values}


@dataclass(frozen=True)
class NetConfig:
    """The architecture of a :class:`UNet`: its constructor arguments, as one typed record
    (checkpoints store it, and the tiler and exporters read it).

    Fields as in :class:`UNet`. Invalid values raise ``ValueError`` naming the field.
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 4
    base_channels: int = 64
    padding: str = "valid"
    dropout: float = 0.5
    batch_norm: bool = False
    up_mode: str = "transpose"
    instance_norm: bool = False

    def __post_init__(self) -> None:
        if self.batch_norm and self.instance_norm:
            raise ValueError("batch_norm and instance_norm exclude each other: choose one")
        if self.padding not in shapes.PADDINGS:
            raise ValueError(f"padding must be one of {shapes.PADDINGS}, got {self.padding!r}")
        if self.up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {self.up_mode!r}")
        for name in ("in_channels", "num_classes", "depth", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, values: dict) -> NetConfig:
        """The record of a plain dict (a checkpoint's); every field must be there."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = with_added_fields(values)
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise ValueError(
                f"architecture record: missing {missing or 'nothing'}, unknown "
                f"{unknown or 'nothing'}; expected exactly the fields {', '.join(names)}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain values (for checkpoints)."""
        return dataclasses.asdict(self)


class UNet(nn.Module):
    """U-Net for 2D segmentation, paper defaults.

    Args:
        in_channels: Channels of the input image (1 for the paper's gray-value images).
        num_classes: Output channels (logits, one per class).
        depth: Number of 2x2 max pools (4 in the paper).
        base_channels: Channels of the first level; doubled at each level (64 in the paper).
        padding: ``"valid"`` (paper: unpadded convs, the output is smaller than the input)
            or ``"same"`` (zero-padded convs, output size = input size).
        dropout: Dropout probability at the end of the contracting path (paper: dropout
            layers there; the original release used 0.5). 0 disables it.
        batch_norm: Batch norm after every 3x3 conv (not in the paper).
        instance_norm: Instance norm after every 3x3 conv instead (not in the paper): each
            image's, or each tile's, own statistics, in training and in prediction alike,
            which is what batch norm computes in training with one tile per batch.
        up_mode: ``"transpose"`` (paper: 2x2 up-convolution) or ``"bilinear"``
            (bilinear upsampling followed by a 1x1 conv).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        padding: str = "valid",
        dropout: float = 0.5,
        batch_norm: bool = False,
        up_mode: str = "transpose",
        instance_norm: bool = False,
    ):
        super().__init__()
        # Kept so that checkpoints can be checked against the architecture they need.
        self.config = NetConfig(
            in_channels=in_channels,
            num_classes=num_classes,
            depth=depth,
            base_channels=base_channels,
            padding=padding,
            dropout=float(dropout),
            batch_norm=bool(batch_norm),
            up_mode=up_mode,
            instance_norm=bool(instance_norm),
        )
        norm = "batch" if batch_norm else "instance" if instance_norm else None
        self.depth, self.padding = depth, padding
        channels = [base_channels * 2**i for i in range(depth + 1)]  # 64 ... 1024

        self.down = nn.ModuleList()
        c_in = in_channels
        for c in channels[:-1]:
            self.down.append(DoubleConv(c_in, c, padding, norm))
            c_in = c
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bottleneck = DoubleConv(channels[-2], channels[-1], padding, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            Up(channels[i + 1], channels[i], padding, norm, up_mode) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: NetConfig) -> UNet:
        """The network of an architecture record."""
        return cls(**config.to_dict())

    def reset_parameters(self) -> None:
        """Paper, Sec. 3: weights from N(0, sqrt(2/N)), N = number of inputs of one neuron."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # stride 2, kernel 2: each output pixel sees one tap of every input channel
                fan_in = (
                    m.in_channels
                    * (m.kernel_size[0] // m.stride[0])
                    * (m.kernel_size[1] // m.stride[1])
                )
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            else:
                if isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                continue
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, ...]:
        """Output (H, W) for an input (H, W); raises InvalidInputSizeError if invalid."""
        return shapes.check_input_shape(input_shape, self.depth, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_channels, H, W) images to (B, num_classes, H', W') logits."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        self.output_shape(tuple(x.shape[-2:]))  # clear message before any conv fails
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))  # paper: dropout at the end of the contracting path
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip)
        return self.head(x)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def forward_flops(config: NetConfig, input_shape: tuple[int, int], batch: int = 1) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = UNet.from_config(config)
        x = torch.empty(batch, config.in_channels, *input_shape)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()
