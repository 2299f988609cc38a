"""Challenge metrics on plain NumPy arrays (no Lightning, no Hydra; usable from a notebook).

- ``pixels``: the ISBI 2012 pixel error, F1, IoU and Dice of the cell class; the one rule
  that training's per-epoch validation and ``eval.py`` share (:class:`PixelCounts`).
- ``isbi``: ISBI 2012 EM segmentation challenge (Arganda-Carreras et al. 2015): Rand error,
  V_rand and V_info after border thinning and the warping error, each swept over
  binarisation thresholds; ``score_isbi_stack`` computes them all, the pixel error too.
- ``contingency``: the Rand and information scores of two segmentations of a slice.
- ``thinning``: the predicted membrane thinned to one-pixel lines (for V_rand, V_info).
- ``warping``: topology-preserving warping of a binary label (Jain et al. 2010), the
  simple-point test it rests on, and the classification of the remaining topological errors.
- ``classes``: per-class IoU and Dice of a K-class argmax (:class:`ClassCounts`).
- ``cells``: Cell Tracking Challenge SEG (Jaccard of matched objects) and object-level
  diagnostics (misses, false splits, merges, false positives).
- ``inputs``, ``thresholds``: the input checks and threshold sweeps they share.
"""

from unet.errors import MetricInputError
from unet.metrics.cells import ObjectMatches, match_objects, score_cell_frames
from unet.metrics.classes import ClassCounts, class_scores
from unet.metrics.contingency import SplitMerge, info_scores, rand_scores
from unet.metrics.isbi import rand_error, score_isbi_stack, v_scores, warping_error
from unet.metrics.pixels import Confusion, PixelCounts, pixel_error, pixel_scores
from unet.metrics.thinning import thin_boundaries
from unet.metrics.thresholds import DEFAULT_THRESHOLDS, PIXEL_THRESHOLDS, Sweep
from unet.metrics.warping import (
    TopologicalErrors,
    simple_pixels,
    topological_errors,
    warp_label,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PIXEL_THRESHOLDS",
    "ClassCounts",
    "Confusion",
    "MetricInputError",
    "ObjectMatches",
    "PixelCounts",
    "SplitMerge",
    "Sweep",
    "TopologicalErrors",
    "class_scores",
    "info_scores",
    "match_objects",
    "pixel_error",
    "pixel_scores",
    "rand_error",
    "rand_scores",
    "score_cell_frames",
    "score_isbi_stack",
    "simple_pixels",
    "thin_boundaries",
    "topological_errors",
    "v_scores",
    "warp_label",
    "warping_error",
]
