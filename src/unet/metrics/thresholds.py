"""Binarisation thresholds of the ISBI 2012 metrics, and a metric swept over them.

A threshold t makes the predicted cells ``p > t``, as the challenge's Fiji scripts binarise
a probability map (``unet.metrics.pixels`` states the pixel error's rule in full).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from unet.errors import MetricInputError

# The Fiji scripts sweep 0.0..1.0 in steps of 0.1. 1.0 is left out: with p > t it always
# gives an empty prediction, which the warping error (splits and merges only) scores as
# perfect.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(k / 10 for k in range(10))  # 0.0 .. 0.9
# The pixel error's finer sweep; k / 100 is the float nearest to k/100, so it holds the
# Fiji script's 0.0, 0.1, ..., 0.9 exactly.
PIXEL_THRESHOLDS: tuple[float, ...] = tuple(k / 100 for k in range(100))  # 0.00 .. 0.99


class Sweep(NamedTuple):
    """A metric over thresholds: its best value, where, and the whole curve."""

    value: float  # the best value: the minimum of an error, the maximum of a score
    threshold: float  # the threshold that gives it
    per_threshold: np.ndarray  # (T,) the value at each threshold, in the order given


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """(T,) float64 thresholds, or MetricInputError unless a non-empty sequence in [0, 1]."""
    try:
        values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.size == 0 or np.isnan(values).any() or values.min() < 0 or values.max() > 1:
        raise MetricInputError(
            f"thresholds {list(thresholds)!r} are not usable; expected a non-empty sequence of "
            "numbers in [0, 1]"
        )
    return values


def best(values: np.ndarray, thresholds: np.ndarray, minimize: bool) -> Sweep:
    """The best of per-threshold ``values`` (the first on ties) and where it is."""
    index = int(np.argmin(values) if minimize else np.argmax(values))
    return Sweep(float(values[index]), float(thresholds[index]), values)
