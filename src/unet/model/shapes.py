"""Size arithmetic of the U-Net: which input sizes it accepts and what it outputs.

The network sees each spatial axis independently, so every function here works on one
axis length (an ``int``); ``check_input_shape`` applies it to (H, W).

With ``padding="valid"`` (the paper's unpadded convolutions) each level of the contracting
path removes 4 px (two 3x3 convs) and then halves the size with a 2x2 max pool, which must
see an even size (paper, Sec. 2: "select the input tile size such that all 2x2 max-pooling
operations are applied to a layer with an even x- and y-size"). The expanding path doubles
and removes 4 px per level. Depth 4 therefore maps 572 -> 388 and, generally, s -> s - 184.

With ``padding="same"`` the output equals the input, and the input must be divisible by
``2**depth``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from unet.errors import UserError

PADDINGS = ("valid", "same")


class InvalidInputSizeError(UserError, ValueError):
    """An input size the network cannot take; the message names the nearest valid sizes."""


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def output_size_or_none(size: int, depth: int = 4, padding: str = "valid") -> int | None:
    """Output length for an input length, or None when the network cannot take it."""
    _check_padding(padding)
    if size < 1:
        return None
    if padding == "same":
        return size if size % (2**depth) == 0 else None
    s = size
    for _ in range(depth):
        s -= 4  # two unpadded 3x3 convs
        if s < 2 or s % 2:  # the 2x2 max pool needs an even size
            return None
        s //= 2
    s -= 4  # bottleneck convs
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4  # 2x2 up-conv, then two unpadded 3x3 convs
    return s if s >= 1 else None


def is_valid_input_size(size: int, depth: int = 4, padding: str = "valid") -> bool:
    """Whether the network accepts an input of this length along one axis."""
    return output_size_or_none(size, depth, padding) is not None


def nearest_valid_input_sizes(size: int, depth: int = 4, padding: str = "valid") -> list[int]:
    """The nearest valid input lengths below and above ``size`` (one or two values)."""
    below = next((s for s in range(size, 0, -1) if is_valid_input_size(s, depth, padding)), None)
    # valid sizes recur every `step`, so this search ends
    above = next(s for s in itertools.count(max(size, 1)) if is_valid_input_size(s, depth, padding))
    return sorted({s for s in (below, above) if s is not None})


def output_size(size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output length for an input length; raises InvalidInputSizeError if it is not valid."""
    out = output_size_or_none(size, depth, padding)
    if out is None:
        near = nearest_valid_input_sizes(size, depth, padding)
        rule = (
            "every 2x2 max pool must see an even size and the output must be positive"
            if padding == "valid"
            else f"it must be divisible by 2**depth = {2**depth}"
        )
        raise InvalidInputSizeError(
            f"input size {size} is not valid for a U-Net of depth {depth} with {padding!r} "
            f"padding ({rule}); nearest valid sizes: {', '.join(map(str, near))}"
        )
    return out


def check_input_shape(
    shape: Sequence[int], depth: int = 4, padding: str = "valid"
) -> tuple[int, ...]:
    """Output (H, W) for an input (H, W); the error names the axis and the nearest valid sizes."""
    out = []
    for axis, size in zip(("height", "width"), shape, strict=True):
        try:
            out.append(output_size(int(size), depth, padding))
        except InvalidInputSizeError as err:
            raise InvalidInputSizeError(f"{axis}: {err}") from None
    return tuple(out)


def halo(depth: int = 4, padding: str = "valid") -> int:
    """Input minus output length (the context the network consumes); 184 for the paper net."""
    if padding == "same":
        return 0
    smallest = nearest_valid_input_sizes(1, depth, padding)[-1]
    return smallest - output_size(smallest, depth, padding)


def smallest_input_covering(out: int, depth: int = 4, padding: str = "valid") -> int:
    """The smallest valid input length whose output is at least ``out`` long.

    ``valid``: ``out`` + the halo, rounded up to a valid size (512 -> 700 for depth 4);
    ``same``: ``out`` rounded up to a multiple of ``2**depth``.
    """
    start = out + halo(depth, padding)
    return next(s for s in itertools.count(start) if is_valid_input_size(s, depth, padding))


def size_rule(depth: int = 4, padding: str = "valid") -> tuple[int, int]:
    """(smallest valid input length, step): the valid lengths are ``smallest + k * step``.

    ``valid``: (188, 16) for depth 4, since each of the ``depth`` max pools needs an even
    size and the map must stay positive; ``same``: (``2**depth``, ``2**depth``).
    """
    smallest = nearest_valid_input_sizes(1, depth, padding)[-1]
    return smallest, 2**depth
