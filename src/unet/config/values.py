"""The value tests of :mod:`unet.config.checks`'s settings table: each takes a config value and
says whether it is acceptable (``integer(0)``, ``one_of("a", "b")``, ``list_of(...)``).

Plain predicates on plain values (and OmegaConf containers), so that a new setting's test
reads like its rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high)


def number(low: float | None = None, high: float | None = None, open_high: bool = False):
    def ok(v: Any) -> bool:
        if not _is_number(v) or v != v:  # v != v: NaN
            return False
        return (low is None or v >= low) and (
            high is None or (v < high if open_high else v <= high)
        )

    return ok


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def string(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: not isinstance(v, bool) and v in choices


def either(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: any(check(v) for check in checks)


def list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list | tuple | ListConfig) and len(v) > 0 and all(map(check, v))


def fraction_or_count(v: Any) -> bool:
    """Lightning's ``limit_*_batches``/``overfit_batches``: a count, or a fraction in [0, 1]."""
    return (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def mapping_of_ints(v: Any) -> bool:
    """A {mask value: class} map: integer keys (or digit strings) and non-negative integers."""
    if not isinstance(v, dict | DictConfig) or not v:
        return False
    return all(re.fullmatch(r"-?\d+", str(k)) and integer(0)(c) for k, c in v.items())


def max_time(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None


def devices(v: Any) -> bool:
    if _is_int(v):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v == "auto" or re.fullmatch(r"-?\d+(,\s*\d+)*,?", v) is not None
    return list_of(integer(0))(v)


def device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None
