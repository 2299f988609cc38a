"""A checkpoint's architecture record checked against its weights, by running them.

Some settings of the architecture change no weight shape: ``padding`` valid vs same
rebuilds a network that loads the same weights without complaint and predicts something
else. So a checkpoint also stores a probe: the logits its network gave, at save time, for
a fixed pseudo-random input. Loading rebuilds the network from the stored ``net_config``,
loads the weights and must reproduce the probe; a record that was edited (or weights
that were swapped) do not.
"""

from __future__ import annotations

import torch
from torch import nn

from unet.shapes import InvalidInputSizeError, smallest_input_covering

PROBE_OUTPUT = 4  # side of the probe's output window: a few dozen numbers
TOLERANCE = 1e-2  # relative to the logits' scale: TF32/bf16 kernels and devices differ


def _probe_input(size: int, channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2015)
    return torch.randn(1, channels, size, size, generator=generator)  # (1, C, S, S)


@torch.no_grad()
def _run(net: nn.Module, size: int) -> torch.Tensor:
    channels = net.config.in_channels
    was_training = net.training
    device = next(net.parameters()).device
    try:
        net.eval()  # no dropout, batch norm from running statistics
        return net(_probe_input(size, channels).to(device)).float().cpu()
    finally:
        net.train(was_training)


def record_probe(net: nn.Module) -> dict | None:
    """The probe to store with ``net``'s weights: input side and logits (1, K, h, w)."""
    config = net.config
    size = smallest_input_covering(PROBE_OUTPUT, config.depth, config.padding)
    return {"input_size": size, "logits": _run(net, size)}


def probe_mismatch(net: nn.Module, probe: dict | None) -> str | None:
    """Why ``net`` (rebuilt and loaded) does not reproduce the stored ``probe``; None if it does
    (or if there is no probe, as in checkpoints written before probes existed)."""
    if not probe:
        return None
    expected = probe["logits"]
    try:
        found = _run(net, int(probe["input_size"]))
    except InvalidInputSizeError as err:
        return f"the probe input ({probe['input_size']} px) does not fit it: {err}"
    if found.shape != expected.shape:
        return f"its output has shape {tuple(found.shape)}, the stored one {tuple(expected.shape)}"
    scale = float(expected.abs().max()) + 1e-6
    error = float((found - expected).abs().max()) / scale
    if error > TOLERANCE:
        return f"its output differs from the stored one by {error:.2g} of the logits' scale"
    return None
