"""What each recorded validation metric is, and the published figures ours stand beside.

Keyed by the data set a model card records (``models/<name>/model.yaml``: ``data``):
``PhC-C2DH-U373``, ``DIC-C2DH-HeLa`` and ``isbi2012`` (the folder of the ISBI 2012 data).
Our figures are validation figures (held-out frames or slices of the training data); the
published ones are on the challenges' hidden test sets, so the two are beside each other,
not comparable as equals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# what each validation metric of metrics.json is (model cards and the results page)
MEANING = {
    "val/seg_heldout": "SEG, post-processing chosen on the other validation frames (held out)",
    "val/seg": "SEG, post-processing chosen and scored on the same validation frames",
    "val/seg_plain": "SEG of plain connected components of p > 0.5",
    "val/cell_iou": "mean IoU of the matched cells",
    "val/iou": "foreground IoU of pixels (not the paper's cell IOU)",
    "val/dice": "foreground Dice of pixels",
    "val/pixel_error": "pixel error at the best threshold",
    "val/loss": "weighted cross-entropy (the training loss)",
    "val/predicted_objects": "objects in the labels",
    "val/matched": "cells matched by an object covering more than half of them",
    "val/pixel_error_t05": "pixel error at p > 0.5",
    "val/pixel_error_threshold": "the threshold on p that gives the best pixel error",
    "val/frames": "validation frames scored",
    "val/rand_error": "Rand error (foreground-restricted) of the probability map",
    "val/v_rand": "V_rand of the probability map",
    "val/v_info": "V_info of the probability map",
    "val/warping_error": "warping error of the probability map",
    "val/labels_rand_error": "Rand error of the labels' boundary map, post-processing chosen "
    "on the same slices",
    "val/labels_v_rand": "V_rand of the labels' boundary map, post-processing chosen on the "
    "same slices",
    "val/labels_v_info": "V_info of the labels' boundary map",
    "val/labels_warping_error": "warping error of the labels' boundary map",
    "val/labels_rand_error_heldout": "Rand error of the labels, post-processing chosen on the "
    "other validation slices (held out)",
    "val/labels_v_rand_heldout": "V_rand of the labels, post-processing chosen on the other "
    "validation slices (held out)",
    "val/false_positives": "predicted objects that match no cell",
    "val/misses": "cells no predicted object matches",
    "val/splits": "cells split into several objects",
    "val/merges": "objects covering several cells",
    "val/truth_objects": "annotated cells in the validation frames",
}


@dataclass(frozen=True)
class Published:
    """A published figure: its value and where it comes from."""

    value: float
    source: str


_PAPER = "U-Net paper, challenge test set"
_SEG = ("val/seg_heldout", "val/seg")
_ISBI_RAND = ("val/labels_rand_error_heldout", "val/labels_rand_error", "val/rand_error")
_ISBI_V_RAND = ("val/labels_v_rand_heldout", "val/labels_v_rand", "val/v_rand")

# the paper's figures (Ronneberger et al. 2015, Table 1: ISBI 2012; Table 2: Cell Tracking
# Challenge 2015, where "IOU" is the challenge's SEG), per data set and metric
PAPER: dict[str, dict[str, Published]] = {
    "PhC-C2DH-U373": {k: Published(0.9203, _PAPER) for k in _SEG},
    "DIC-C2DH-HeLa": {k: Published(0.7756, _PAPER) for k in _SEG},
    "isbi2012": {
        "val/warping_error": Published(0.000353, _PAPER),
        "val/pixel_error": Published(0.0611, _PAPER),
        **{k: Published(0.0382, _PAPER) for k in _ISBI_RAND},
        **{
            k: Published(0.9728, "the U-Net entry of the ISBI 2012 leaderboard, test set")
            for k in _ISBI_V_RAND
        },
    },
}

# the best public figure we can cite, per data set and metric (none for the cell data sets:
# the Cell Tracking Challenge's leaderboard is not reachable from where these pages are made)
BEST_PUBLIC: dict[str, dict[str, Published]] = {
    "isbi2012": {
        k: Published(0.9868, "best entry of the ISBI 2012 leaderboard, test set")
        for k in _ISBI_V_RAND
    },
}


def paper_summary(dataset: str) -> str:
    """One line of the paper's figures for a data set (a model card's ``paper`` field)."""
    figures = PAPER.get(dataset)
    if not figures:
        return "none (own data)"
    if dataset == "isbi2012":
        names = (
            ("Rand error", "val/rand_error"),
            ("warping error", "val/warping_error"),
            ("pixel error", "val/pixel_error"),
        )
        shown = ", ".join(f"{name} {figures[key].value}" for name, key in names)
        return f"{shown} (test set)"
    return f"SEG {figures['val/seg'].value} (challenge test set)"


def figure_text(x: float | None, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits (more where it would show a whole number it is
    not: 0.99998 stays 0.99998), whole numbers as integers, a dash for None or NaN."""
    if x is None or not math.isfinite(x):
        return "-"
    if float(x).is_integer() and abs(x) >= 1:
        return str(int(x))
    text = f"{x:.{digits}g}"
    while float(text).is_integer() and digits < 12:
        digits += 1
        text = f"{x:.{digits}g}"
    return text
