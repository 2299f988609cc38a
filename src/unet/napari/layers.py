"""Layer data -> the images a network takes, and the checks that refuse what cannot work.

napari hands over arrays of any kind (NumPy, dask, zarr) and shape. A 1-channel network
takes (H, W) images and (frames, H, W) stacks, one frame at a time; a C-channel network
takes (C, H, W) images, RGB layers (H, W, C) and (frames, C, H, W) stacks. Frames are read
one at a time (``np.asarray`` of one index), so a dask- or zarr-backed stack never has to fit
in memory as a whole. Every refusal is one line naming the layer, what was found and what
to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unet.errors import UserError


class LayerError(UserError, ValueError):
    """A layer the network or the training set cannot take."""


@dataclass(frozen=True)
class Frames:
    """The frames of one image layer, as the network takes them.

    Attributes:
        data: the layer's array (any array-like; indexed lazily).
        stacked: whether the first axis runs over frames.
        channels_last: whether channels are the last axis (an RGB layer).
        shape: (H, W) or (frames, H, W): the shape of the labels that match.
    """

    data: object
    stacked: bool
    channels_last: bool
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0] if self.stacked else 1

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W) or (C, H, W), read from the layer now."""
        image = np.asarray(self.data[index] if self.stacked else self.data)
        return np.moveaxis(image, -1, 0) if self.channels_last else image


def frames_of(name: str, data, rgb: bool, channels: int) -> Frames:
    """The frames of the image layer ``name`` for a network of ``channels`` inputs."""
    shape = tuple(int(n) for n in np.shape(data))
    if channels == 1:
        if rgb:
            raise LayerError(
                f"image layer {name!r}: an RGB image of shape {shape}; the network takes 1 "
                "(gray) channel: convert the layer to gray, or choose a 3-channel model"
            )
        if len(shape) in (2, 3):
            return Frames(data, len(shape) == 3, False, shape)
        expected = "(height, width) or a stack (frames, height, width)"
    else:
        if rgb and shape[-1] == channels and len(shape) in (3, 4):
            return Frames(data, len(shape) == 4, True, shape[:-1])
        if len(shape) in (3, 4) and shape[-3] == channels:
            return Frames(data, len(shape) == 4, False, shape[:-3] + shape[-2:])
        expected = (
            f"({channels}, height, width), an RGB layer of {channels} channels, or a stack "
            f"(frames, {channels}, height, width)"
        )
    raise LayerError(
        f"image layer {name!r}: shape {shape}; the network takes {channels} channel(s): "
        f"expected {expected}"
    )


def check_same_shape(image: str, frames: Frames, labels: str, label_shape: Sequence[int]):
    """A LayerError unless the labels layer ``labels`` covers the image pixel for pixel."""
    if tuple(label_shape) != frames.shape:
        raise LayerError(
            f"labels layer {labels!r}: shape {tuple(label_shape)}, but image layer {image!r} "
            f"has {frames.shape}; choose the labels made for that image (same height, width "
            "and frames)"
        )
