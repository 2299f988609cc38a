"""The exported network for zoo tools: any image size in, the same size out.

The U-Net itself takes only ``smallest + k * 2**depth`` pixels and (valid convolutions)
returns a smaller centre. Zoo tools (bioimage.io core, deepImageJ, ilastik, QuPath) check
an image against the declared size rule and tile it with their own rules, so the exported
weights do what :func:`unet.inference.tiler.predict_whole_image` does, inside the graph:

    image (B, C, H, W), H and W >= :func:`minimum_size`
    -> mirror-pad: the net's context on each side, plus padding up to a valid input
    -> U-Net + softmax -> crop to (H, W) -> class probabilities (B, K, H, W)

The pooling grid sits where ``predict_whole_image`` and :class:`unet.inference.tiler.Tiler` put
it: relative to the input's top-left pixel, so a tool's block whose origin is a multiple
of ``2**depth`` from the image's origin gives the whole image's values.

Choices:
- Mirroring is ``torch.nn.functional.pad(mode="reflect")`` (numpy's ``reflect``, as
  :mod:`unet.data.mirror`); it needs pads shorter than the image, which the minimum size ensures.
- Tool halo (:func:`tool_halo`): the net's one-sided context (valid) or
  :func:`unet.inference.tiler.edge_reach` (same), rounded up to ``2**depth`` so that blocks, and the
  frame a tool pads around a whole image, keep the pooling grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.tiler import edge_reach
from unet.model import shapes
from unet.model.network import NetConfig


def tool_halo(config: NetConfig) -> int:
    """Pixels a tool must discard at each block edge for exact stitching (multiple of 2**depth)."""
    step = 2**config.depth
    if config.padding == "valid":
        reach = shapes.halo(config.depth, config.padding) // 2
    else:
        reach = edge_reach(config.depth, config.padding, config.up_mode)
    return -(-reach // step) * step


def minimum_size(config: NetConfig) -> int:
    """The smallest side the exported network takes: more than twice :func:`tool_halo` (the
    zoo's rule for a halo), a multiple of ``2**depth`` (blocks of multiples keep the grid),
    and larger than every mirror pad."""
    return 2 * tool_halo(config) + 2**config.depth


def axis_sizes(config, any_size: bool = True) -> dict:
    """The size rule in bioimage.io terms: input minimum and step, output offset and halo.

    ``any_size``: the weights of :class:`unet.inference.formats.any_size.AnySizeUNet` (every side
    from
    the minimum on, output size = input size); else the bare network's valid sizes.
    """
    if any_size:
        return {"min": minimum_size(config), "step": 1, "offset": 0, "halo": tool_halo(config)}
    smallest, step = shapes.size_rule(config.depth, config.padding)
    halo = edge_reach(config.depth, config.padding, config.up_mode)
    if halo:  # the zoo requires an output of more than 2 x halo at the minimum size
        smallest = shapes.smallest_input_covering(2 * halo + 1, config.depth, config.padding)
    offset = -shapes.halo(config.depth, config.padding)
    return {"min": smallest, "step": step, "offset": offset, "halo": halo}


def axis_plan(size, depth: int, padding: str):
    """(pad before, pad after, output offset) to predict ``size`` pixels in one pass.

    The arithmetic of :func:`unet.inference.tiler._axis_plan`, written with ``+ - * //`` only so
    that
    it also works on the traced sizes of ``torch.jit.trace`` and the ONNX exporter.
    """
    smallest, step = shapes.size_rule(depth, padding)
    consumed = shapes.halo(depth, padding)  # input minus output length
    # the smallest valid input whose output covers ``size`` (size >= smallest - consumed)
    in_size = smallest + (size + consumed - smallest + step - 1) // step * step
    before = consumed // 2 if padding == "valid" else (in_size - size) // 2
    return before, in_size - size - before, before - consumed // 2


def any_size_record(config: NetConfig) -> dict:
    """What the package's record says about the weights: any size from the minimum on."""
    return {
        "minimum_size": minimum_size(config),
        "halo": tool_halo(config),
        "pooling_grid": 2**config.depth,
        "inner_network": "net (UNet logits at its valid sizes)",
    }


class AnySizeUNet(ProbabilityUNet):
    """:class:`ProbabilityUNet` that mirror-pads its input and crops its output back.

    Takes the ``UNet`` constructor arguments; the state dict is :class:`ProbabilityUNet`'s
    (``net.*``, the checkpoint's keys). Input (B, C, H, W) standardised images with H, W >=
    :func:`minimum_size`; output (B, K, H, W) class probabilities.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth, padding = self.config.depth, self.config.padding
        h, w = x.shape[-2], x.shape[-1]
        top, bottom, dy = axis_plan(h, depth, padding)
        left, right, dx = axis_plan(w, depth, padding)
        padded = F.pad(x, (left, right, top, bottom), mode="reflect")  # (B, C, H', W')
        prob = super().forward(padded)  # (B, K, H' - halo, W' - halo)
        return prob[..., dy : dy + h, dx : dx + w]
