"""One image in, class probabilities out: the inference step on plain NumPy arrays.

    image (H, W) or (C, H, W) -> standardise (as in training) -> tiler (+ test-time augmentation)
    -> softmax probabilities (K, H, W)

Separate from file handling (``unet.predict.files`` reads and writes files around it) and from
training; imports neither Lightning nor torchmetrics, so a notebook or another program
can use it with a network from :func:`unet.inference.checkpoint.load_network`::

    net = load_network("last.ckpt")
    prob = predict_image(net, image, Tiler(memory_gb=4), tta="flips8")[1]  # cell class
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from unet.data.samples import standardize
from unet.errors import UserError
from unet.inference.tiler import Tiler
from unet.inference.tta import predict_probabilities

PRECISIONS = {"32": None, "bf16": torch.bfloat16}


class InferenceSettingError(UserError, ValueError):
    """An inference setting that cannot work (precision, image shape)."""


class NonFiniteOutputError(UserError, ValueError):
    """Probabilities with NaN or infinite values: never written as a result."""


def require_finite_output(prob: np.ndarray, where: str, model: str | None = None) -> None:
    """A NonFiniteOutputError naming ``model`` (the checkpoint) and ``where`` (the frame,
    section or rows) unless every value of ``prob`` is finite. Writers call it before
    writing, so that a damaged or overflowing network stops with earlier outputs intact."""
    bad = int(np.size(prob) - np.count_nonzero(np.isfinite(prob)))
    if bad:
        raise NonFiniteOutputError(
            f"{model or 'the network'}: {where}: {bad:,} of {np.size(prob):,} probabilities "
            "are NaN or infinite; stopped before writing them (earlier outputs are kept) -- "
            "the network is damaged or overflows on this input: use another checkpoint, or "
            "precision=32 if bf16 was set"
        )


def autocast_dtype(precision: str | int) -> torch.dtype | None:
    """The autocast dtype of a precision setting (``32``, ``bf16``, ``bf16-mixed``...);
    None for full precision."""
    key = str(precision).removesuffix("-true").removesuffix("-mixed")
    if key not in PRECISIONS:
        raise InferenceSettingError(f"precision={precision!r}: expected 32 or bf16")
    return PRECISIONS[key]


def net_device(net: nn.Module) -> torch.device:
    """The device of the network's parameters (the CPU for one without parameters, such as
    an ONNX Runtime session in :class:`unet.inference.formats.loading.ExportedNet`)."""
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict_image(
    net: nn.Module,
    image: np.ndarray,
    tiler: Tiler | None = None,
    tta: str = "none",
    precision: str | int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Class probabilities (K, H, W), float32, of one gray-value image of any size.

    Args:
        net: the trained network, in ``eval()`` mode, on the device to use.
        image: (H, W) gray values, or (C, H, W) for a network of C > 1 input channels (any
            dtype); standardised per image (and channel) as in training.
        tiler: tile size and memory budget (default: automatic, exact stitching).
        tta: test-time augmentation: ``none``, ``flips8`` or ``paper7`` (``unet.inference.tta``).
        precision: ``32`` or ``bf16`` (autocast; probabilities are float32 either way).
        on_batch: called with the number of tiles after every forward pass.
    """
    image = np.asarray(image)
    channels = net.config.in_channels
    expected = (2,) if channels == 1 else (3,)
    if image.ndim not in expected or (image.ndim == 3 and image.shape[0] != channels):
        shape = "(height, width) gray values" if channels == 1 else f"({channels}, height, width)"
        raise InferenceSettingError(
            f"predict_image: the network takes {channels} input channel(s); expected one "
            f"{shape} image, found shape {image.shape}"
        )
    dtype = autocast_dtype(precision)
    device = net_device(net)
    x = torch.from_numpy(standardize(image)).to(device)  # (H, W) or (C, H, W)
    x = x[None, None] if x.ndim == 2 else x[None]  # (1, C, H, W)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        prob = predict_probabilities(net, x, tiler or Tiler(), tta, on_batch=on_batch)
    return prob[0].float().cpu().numpy()
