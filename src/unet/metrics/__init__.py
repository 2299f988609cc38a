"""Challenge metrics on plain NumPy arrays (no Lightning, no Hydra; usable from a notebook).

- ``isbi``: ISBI 2012 EM segmentation challenge (Arganda-Carreras et al. 2015): pixel error,
  Rand error, V_rand and V_info after border thinning and the warping error, each swept over
  binarisation thresholds; ``score_isbi_stack`` computes them all at once.
- ``warping``: topology-preserving warping of a binary label (Jain et al. 2010), the
  simple-point test it rests on, and the classification of the remaining topological errors.
- ``cells``: Cell Tracking Challenge SEG (Jaccard of matched objects) and object-level
  diagnostics (misses, false splits, merges, false positives).
"""

from unet.errors import MetricInputError
from unet.metrics.cells import ObjectMatches, match_objects, score_cell_frames
from unet.metrics.isbi import (
    DEFAULT_THRESHOLDS,
    PIXEL_THRESHOLDS,
    SplitMerge,
    Sweep,
    info_scores,
    pixel_error,
    rand_error,
    rand_scores,
    score_isbi_stack,
    thin_boundaries,
    v_scores,
    warping_error,
)
from unet.metrics.warping import (
    TopologicalErrors,
    simple_pixels,
    topological_errors,
    warp,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PIXEL_THRESHOLDS",
    "MetricInputError",
    "ObjectMatches",
    "SplitMerge",
    "Sweep",
    "TopologicalErrors",
    "info_scores",
    "match_objects",
    "pixel_error",
    "rand_error",
    "rand_scores",
    "score_cell_frames",
    "score_isbi_stack",
    "simple_pixels",
    "thin_boundaries",
    "topological_errors",
    "v_scores",
    "warp",
    "warping_error",
]
