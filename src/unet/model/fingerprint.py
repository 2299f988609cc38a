"""A checkpoint's architecture record checked against its weights, by running them.

Some settings of the architecture change no weight shape: ``padding`` valid vs same
rebuilds a network that loads the same weights without complaint and predicts something
else. So a checkpoint also stores a probe: the logits its network gave, at save time, for
a fixed pseudo-random input. Loading rebuilds the network from the stored ``net_config``,
loads the weights and must reproduce the probe; a record that was edited (or weights
that were swapped) do not.

Weights are checked to be finite first: one NaN weight makes every output NaN, and NaN
compares as "not different" to anything, so a NaN probe must count as a mismatch too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from unet.model.shapes import InvalidInputSizeError, output_size, smallest_input_covering

PROBE_OUTPUT = 4  # side of the probe's output window: a few dozen numbers
TOLERANCE = 1e-2  # relative to the logits' scale: TF32/bf16 kernels and devices differ
DAMAGED = "the file is damaged -- retrain or use another checkpoint"


def _probe_input(size: int, channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2015)
    return torch.randn(1, channels, size, size, generator=generator)  # (1, C, S, S)


@torch.no_grad()
def _run(net: nn.Module, size: int) -> torch.Tensor:
    channels = net.config.in_channels
    was_training = net.training
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        net.eval()  # no dropout, batch norm from running statistics
        return net(_probe_input(size, channels).to(device)).float().cpu()
    finally:
        net.train(was_training)


def probe_size(config) -> int:
    """The probe's input side for an architecture (NetConfig)."""
    return smallest_input_covering(PROBE_OUTPUT, config.depth, config.padding)


def record_probe(net: nn.Module) -> dict | None:
    """The probe to store with ``net``'s weights: input side and logits (1, K, h, w)."""
    size = probe_size(net.config)
    return {"input_size": size, "logits": _run(net, size)}


def nonfinite_weights(
    named: Iterable[tuple[str, torch.Tensor]], what: str = "weights"
) -> str | None:
    """Why the floating-point tensors of ``named`` are unusable ("3 of 1,234 weights are NaN
    or infinite (first: down.0.conv1.weight)"); None if all are finite."""
    bad, total, first = 0, 0, None
    for name, tensor in named:
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue  # e.g. batch norm's num_batches_tracked
        count = int((~torch.isfinite(tensor)).sum())
        bad, total = bad + count, total + tensor.numel()
        if count and first is None:
            first = name
    if not bad:
        return None
    return f"{bad:,} of {total:,} {what} are NaN or infinite (first: {first})"


def output_problem(net: nn.Module, size: int | None = None) -> str | None:
    """Why ``net`` cannot be used, judged from its output for the probe input: not finite,
    or not of the size its architecture record says (``valid``: smaller by the halo,
    ``same``: equal). None if the output is finite and of the recorded size."""
    config = net.config
    size = size or probe_size(config)
    try:
        found = _run(net, size)
    except InvalidInputSizeError as err:
        return f"the probe input ({size} px) does not fit it: {err}"
    except Exception as err:  # an exported graph of another padding (ONNX Runtime's types too)
        first = " ".join(str(err).split())[:160]
        return (
            f"it cannot run a {size}x{size} input, valid for its architecture record "
            f"(padding={config.padding}): {first}"
        )
    side = output_size(size, config.depth, config.padding)
    expected = (1, config.num_classes, side, side)
    if tuple(found.shape) != expected:
        return (
            f"its output for a {size}x{size} input has shape {tuple(found.shape)}, the "
            f"architecture record (padding={config.padding}) says {expected}"
        )
    if not torch.isfinite(found).all():
        return f"its output for a {size}x{size} probe input is NaN or infinite"
    return None


def record_probability_probe(net: nn.Module) -> dict:
    """The probe as plain JSON data for an exported model's record: input side and the
    softmax class probabilities (1, K, h, w) as nested lists."""
    probe = record_probe(net)
    return {"input_size": probe["input_size"], "probabilities": probe["logits"].softmax(1).tolist()}


def probability_probe_mismatch(net: nn.Module, probe: dict) -> str | None:
    """Why ``net`` (logits or log-probabilities out, as
    :class:`unet.inference.formats.loading.ExportedNet`)
    does not reproduce a :func:`record_probability_probe`; None if it does. NaN-safe."""
    expected = torch.tensor(probe["probabilities"], dtype=torch.float32)
    try:
        found = _run(net, int(probe["input_size"])).softmax(1)
    except Exception as err:  # an exported graph that cannot take the size (ONNX Runtime too)
        return f"it cannot run the probe input ({probe['input_size']} px): {err}"
    if found.shape != expected.shape:
        return f"its output has shape {tuple(found.shape)}, the stored one {tuple(expected.shape)}"
    error = float((found - expected).abs().max())
    if not error <= TOLERANCE:  # NaN fails too
        return f"its probabilities differ from the stored ones by {error:.2g}"
    return None


def probe_mismatch(net: nn.Module, probe: dict | None) -> str | None:
    """Why ``net`` (rebuilt and loaded) does not reproduce the stored ``probe``; None if it does
    (or if there is no probe, as in checkpoints written before probes existed). NaN or
    infinite values, stored or found, count as a mismatch."""
    if not probe:
        return None
    expected = probe["logits"]
    try:
        found = _run(net, int(probe["input_size"]))
    except InvalidInputSizeError as err:
        return f"the probe input ({probe['input_size']} px) does not fit it: {err}"
    if found.shape != expected.shape:
        return f"its output has shape {tuple(found.shape)}, the stored one {tuple(expected.shape)}"
    if not (torch.isfinite(found).all() and torch.isfinite(expected).all()):
        return "its output or the stored one is NaN or infinite"
    scale = float(expected.abs().max()) + 1e-6
    error = float((found - expected).abs().max()) / scale
    if not error <= TOLERANCE:
        return f"its output differs from the stored one by {error:.2g} of the logits' scale"
    return None


def network_hash(net: nn.Module) -> str:
    """SHA-256 of a network's architecture record and weights: which model wrote a store."""
    digest = hashlib.sha256(repr(net.config).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
