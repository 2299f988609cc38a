"""Probability map -> instance labels: what happens between the network and a label image.

The loss teaches the network to leave a thin background line between touching cells (the
separation borders, paper Sec. 3), so the connected components of its cell probability are
cells shrunk by that line, and a line that is not quite closed merges two cells. The steps
below turn the probability of the cell class into one label per cell; each is optional, and
the defaults are the paper's plain connected components of ``p > 0.5``:

1. seeds: the 4-connected components of ``p > threshold``; seeds of fewer than
   ``min_area`` pixels are dropped (specks of noise are the commonest false positives);
2. ``fill_holes``: background that one seed encloses becomes part of it;
3. ``regrow``: the seeds grow back over the pixels with ``p > grow_threshold`` by a seeded
   watershed (scikit-image), on ``1 - p`` (``"probability"``: two cells meet along the
   valley of the probability, where the network put the border) or on the distance to the
   grown mask's edge (``"distance"``: they meet halfway between the seeds' cores). A high
   ``threshold`` with a low ``grow_threshold`` splits cells that a gap in the border would
   merge and still gives the cells their full size;
4. ``border_min_area``: objects that touch the image border and have fewer pixels than
   this are dropped (the slivers of cells outside the frame).

Labels are numbered 1..n in scan order, 0 = background. Plain NumPy/SciPy/scikit-image, no
torch: usable from a notebook. :func:`choose_postprocessing` picks the settings that score
best on validation images; the trained checkpoint stores them (``unet.inference.checkpoint``).

Choices the paper leaves open: it does not say how cells were labelled for the cell tracking
submissions. ISBI 2012 was scored on the probability map itself.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential, watershed

from unet.errors import UserError

REGROW_CHOICES = ("none", "probability", "distance")


class PostProcessingError(UserError, ValueError):
    """A post-processing setting that cannot work."""


@dataclass(frozen=True)
class PostProcessing:
    """Settings that turn a cell-probability map into instance labels (module docstring).

    Args:
        threshold: seeds are the 4-connected components of ``p > threshold``, in (0, 1).
        min_area: seeds with fewer pixels are dropped (0 or 1: none).
        fill_holes: background enclosed by a single seed joins it.
        regrow: ``"none"``, ``"probability"`` or ``"distance"`` (module docstring).
        grow_threshold: with ``regrow``, seeds grow over ``p > grow_threshold``; in
            [0, threshold]. None: ``threshold`` (the seeds only reclaim what a watershed
            splits off, such as holes the same threshold leaves).
        border_min_area: objects touching the image border with fewer pixels are dropped.
    """

    threshold: float = 0.5
    min_area: int = 0
    fill_holes: bool = False
    regrow: str = "none"
    grow_threshold: float | None = None
    border_min_area: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise PostProcessingError(
                f"postprocess.{name}={getattr(self, name)!r}: expected {expected}"
            )

        for name in ("threshold", "grow_threshold"):
            value = getattr(self, name)
            if name == "grow_threshold" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                fail(name, "a number")
        if not 0.0 < self.threshold < 1.0:
            fail("threshold", "a probability strictly between 0 and 1")
        if self.grow_threshold is not None and not 0.0 <= self.grow_threshold <= self.threshold:
            fail(
                "grow_threshold",
                f"a probability in [0, threshold={self.threshold}] (seeds grow into "
                "pixels less certain than themselves)",
            )
        for name in ("min_area", "border_min_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(name, "a whole number of pixels >= 0")
        if not isinstance(self.fill_holes, bool):
            fail("fill_holes", "true or false")
        if self.regrow not in REGROW_CHOICES:
            fail("regrow", f"one of {', '.join(REGROW_CHOICES)}")

    @classmethod
    def from_dict(cls, values: dict | None) -> PostProcessing:
        """Settings from a plain dict (a checkpoint's or a config's); unknown keys fail."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PostProcessingError(
                f"postprocess: unknown setting(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain values (for checkpoints and JSON)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> PostProcessing:
        """These settings with some changed (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return PostProcessing.from_dict(self.to_dict() | changes)

    def __call__(self, probability: np.ndarray) -> np.ndarray:
        """Instance labels (H, W), int32, 1..n, for one (H, W) map of cell probability."""
        probability = np.asarray(probability)
        if probability.ndim != 2:
            raise PostProcessingError(
                f"post-processing takes one (height, width) probability map, found shape "
                f"{probability.shape}"
            )
        labels = seeds(probability, self.threshold, self.min_area)
        if self.fill_holes:
            labels = fill_holes(labels)
        if self.regrow != "none":
            grow = self.threshold if self.grow_threshold is None else self.grow_threshold
            labels = regrow(labels, probability, grow, self.regrow)
        if self.border_min_area > 0:
            labels = drop_small_border_objects(labels, self.border_min_area)
        return relabel_sequential(labels.astype(np.int32, copy=False))[0]


def postprocessing_for(stored: PostProcessing | None, overrides: dict | None) -> PostProcessing:
    """The post-processing to use: what validation chose and a checkpoint stores (the plain
    defaults if it stores none), with the settings a user gave (non-null) replacing those."""
    return (stored or PostProcessing()).replace(**dict(overrides or {}))


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` without the objects of fewer than ``min_area`` pixels (ids unchanged)."""
    if min_area <= 1:
        return labels
    small = np.bincount(labels.ravel()) < min_area  # (n + 1,)
    small[0] = False
    return np.where(small[labels], 0, labels)


def seeds(probability: np.ndarray, threshold: float, min_area: int = 0) -> np.ndarray:
    """4-connected components of ``probability > threshold`` with at least ``min_area``
    pixels (ids as found, gaps where small ones were dropped)."""
    labels = connected_components(probability > threshold, connectivity=1)
    return remove_small(labels, min_area)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Background pixels enclosed by one object join it. Objects are 4-connected, so the
    background outside them is 8-connected (a diagonal gap does not open a hole)."""
    filled = labels.copy()
    eight = np.ones((3, 3), bool)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = ndimage.binary_fill_holes(labels[box] == index, structure=eight)
        region = filled[box]
        region[inside & (region == 0)] = index
    return filled


def regrow(
    labels: np.ndarray, probability: np.ndarray, grow_threshold: float, method: str
) -> np.ndarray:
    """Grow the seeds ``labels`` over ``probability > grow_threshold`` by a seeded watershed
    (4-connected) on ``1 - p`` (``"probability"``) or on the distance to the mask's edge
    (``"distance"``). Pixels the mask does not connect to a seed stay background."""
    mask = (probability > grow_threshold) | (labels > 0)
    if method == "probability":
        elevation = 1.0 - probability.astype(np.float32)
    elif method == "distance":
        elevation = -ndimage.distance_transform_edt(mask).astype(np.float32)
    else:
        raise PostProcessingError(f"postprocess.regrow={method!r}: expected probability|distance")
    return watershed(elevation, markers=labels, mask=mask, connectivity=1)


def drop_small_border_objects(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` without the objects that touch the image border and have fewer than
    ``min_area`` pixels."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    sizes = np.bincount(labels.ravel())
    drop = np.zeros(len(sizes), bool)
    drop[np.unique(edge)] = True
    drop &= sizes < min_area
    drop[0] = False
    return np.where(drop[labels], 0, labels)


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) float32: 1 inside objects, 0 on background and on a one-pixel line wherever
    two objects meet. The lines separate the objects under 4-connectivity (a pixel whose
    right or lower neighbour has another id becomes 0), so the components of the map are
    the objects again: the form the ISBI 2012 challenge scores."""
    cells = labels > 0
    cells[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    cells[:-1, :] &= labels[:-1, :] == labels[1:, :]
    return cells.astype(np.float32)


# The settings choose_postprocessing tries, one at a time; regrowth and the threshold it grows
# to only matter together, so they are tried as pairs.
GROW_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_GRID: dict[str | tuple[str, ...], Sequence] = {
    "threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    ("regrow", "grow_threshold"): (
        ("none", None),
        *((method, g) for method in ("probability", "distance") for g in GROW_THRESHOLDS),
    ),
    "min_area": (0, 10, 25, 50, 100, 200, 400),
    "fill_holes": (False, True),
    "border_min_area": (0, 50, 100, 200, 400, 800),
}


def choose_postprocessing(
    probabilities: Sequence[np.ndarray],
    score: Callable[[list[np.ndarray]], float],
    grid: dict[str | tuple[str, ...], Sequence] | None = None,
    start: PostProcessing | None = None,
    rounds: int = 2,
) -> tuple[PostProcessing, float]:
    """The settings that maximise ``score`` over ``probabilities``, by coordinate search.

    Starting from ``start`` (default: plain connected components of p > 0.5), each entry of
    the grid in turn (one setting, or a tuple of settings tried together) is set to the
    value that scores best with the others held, for ``rounds`` passes (the full product of
    the default grid would be 38,000 trials; this is about 60 per pass). Values that cannot
    work with the others (a ``grow_threshold`` above ``threshold``) are skipped; a lower
    ``threshold`` lowers ``grow_threshold`` with it. Ties keep the earlier, simpler value.

    Args:
        probabilities: (H, W) cell-probability maps of the validation images.
        score: labels of every image (in order) -> a number to maximise, e.g. SEG.
        grid: values to try per setting (default :data:`DEFAULT_GRID`).
        start: the first settings.
        rounds: passes over the settings.

    Returns:
        The chosen settings and their score.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    best = start or PostProcessing()
    cache: dict[PostProcessing, float] = {}

    def evaluate(settings: PostProcessing) -> float:
        if settings not in cache:
            cache[settings] = float(score([settings(p) for p in probabilities]))
        return cache[settings]

    best_score = evaluate(best)
    for _, key in itertools.product(range(rounds), grid):
        names = key if isinstance(key, tuple) else (key,)
        for value in grid[key]:
            changes = dict(zip(names, value if isinstance(key, tuple) else (value,), strict=True))
            grow = best.grow_threshold
            if "threshold" in changes and "grow_threshold" not in changes and grow is not None:
                changes["grow_threshold"] = min(grow, changes["threshold"])
            try:
                candidate = dataclasses.replace(best, **changes)
            except PostProcessingError:
                continue
            value_score = evaluate(candidate)
            if value_score > best_score:
                best, best_score = candidate, value_score
    return best, best_score
