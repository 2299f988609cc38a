"""What the Hydra entry points share: user errors end the program with one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from unet.errors import UserError

T = TypeVar("T")


def run_or_exit(fn: Callable[..., T], *args) -> T:
    """Call ``fn(*args)``; a :class:`UserError` prints ``error: <message>`` and exits with 2."""
    try:
        return fn(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
