"""The run report: ``report.md`` and the PNGs it links, in a run (or eval) folder.

    <run>/report.md                the metric table (beside the paper's), curves, panels
    <run>/report/curves.png        train loss, validation metrics, learning rate
    <run>/report/<split>_<id>.png  input | ground truth | prediction | errors, per image

Readable on GitHub or any Markdown viewer. Made from the probabilities that the final
validation (or ``src/eval.py``) has already computed: nothing is predicted again. Every file
is written atomically (:mod:`unet.io.atomic`), ``report.md`` last. No Lightning here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from unet.inference.postprocess import PostProcessing
from unet.io.atomic import atomic_file, write_text
from unet.io.panels import KINDS, cell_panel, membrane_panel
from unet.io.writers import write_png
from unet.metrics.thresholds import PIXEL_THRESHOLDS

# The paper's test-set figures (Ronneberger et al. 2015, Tables 1 and 2), by data set:
# metric name -> (value, what the paper calls it).
PAPER: dict[str, dict[str, tuple[float, str]]] = {
    "isbi2012": {
        "val/warping_error": (0.000353, "warping error, Table 1"),
        "val/rand_error": (0.0382, "Rand error, Table 1"),
        "val/pixel_error": (0.0611, "pixel error, Table 1"),
    },
    "PhC-C2DH-U373": {"val/seg": (0.9203, "IOU, Table 2")},
    "DIC-C2DH-HeLa": {"val/seg": (0.7756, "IOU, Table 2")},
}


OWN_DATA = "own data"  # data=folder: no paper has figures for it


def dataset_name(data_cfg) -> str:
    """``isbi2012``, the Cell Tracking Challenge data set's name, or :data:`OWN_DATA`, from
    the ``data`` config (its keys tell them apart: only ISBI's has ``val_slices``, only the
    Cell Tracking Challenge's ``dataset``)."""
    if data_cfg.get("dataset"):
        return str(data_cfg.dataset)
    return "isbi2012" if "val_slices" in data_cfg else OWN_DATA


def error_kind(dataset: str, instances: bool) -> str:
    """What a report's error pictures show: ``objects`` (merges and splits of instances),
    ``membranes`` (ISBI's pixel errors) or ``pixels`` (pixel errors of other class masks)."""
    if instances:
        return "objects"
    return "membranes" if dataset == "isbi2012" else "pixels"


# The best pixel-error threshold is shown only strictly inside the sweep (0.00 .. 0.99): at
# either end the best is "every pixel a cell" or "almost none", which says the sweep found
# no threshold that separates the classes (e.g. dense masks of an untrained net), not where
# one lies.
def shown_metrics(metrics: dict) -> dict:
    """``metrics`` without those that mean nothing here (the rule above)."""
    threshold = metrics.get("val/pixel_error_threshold")
    if isinstance(threshold, int | float) and not (
        PIXEL_THRESHOLDS[0] < threshold < PIXEL_THRESHOLDS[-1]
    ):
        return {k: v for k, v in metrics.items() if k != "val/pixel_error_threshold"}
    return metrics


@dataclass
class ReportImage:
    """One image of a split with what its panel needs (plain arrays).

    Attributes:
        name: the image's id (``"20"``, ``"01/054"``).
        image: (H, W) gray values; classes, weight, prob: (H, W) as in
            :class:`unet.evaluation.task.SplitPredictions`; instances: (H, W) true ids or None.
    """

    name: str
    image: np.ndarray
    classes: np.ndarray
    weight: np.ndarray
    prob: np.ndarray
    instances: np.ndarray | None = None


def image_panel(
    item: ReportImage, postprocess: PostProcessing, membranes: bool = True
) -> np.ndarray:
    """Cell data: instances made by ``postprocess`` with object errors; otherwise pixel
    errors of p > 0.5, named as membranes (ISBI, ``membranes``) or as cell pixels.

    Multi-channel images are shown as their channel mean; for K > 2 classes the panel
    shows foreground (any class but 0) against background, as ``prob`` is the foreground
    probability there.
    """
    image = item.image if item.image.ndim == 2 else item.image.mean(axis=0)
    if item.instances is not None:
        return cell_panel(image, item.instances, postprocess(item.prob), item.weight)
    classes = item.classes
    if classes.max(initial=0) > 1:  # K classes: foreground against background
        classes = (classes > 0).astype(item.classes.dtype)
    return membrane_panel(image, classes, item.prob, item.weight, membranes)


def read_curves(files: Sequence[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) per column of Lightning CSV logs (a run and its resumptions, in order)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for file in files:
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None):
                        curves.setdefault(name, []).append((float(row["step"]), float(value)))
    return {k: tuple(np.array(v).T) for k, v in curves.items()}


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Three plots over training steps: losses, validation metrics, learning rate."""
    fig = Figure(figsize=(12, 3.4), dpi=100)
    axes = fig.subplots(1, 3)
    groups = [
        ("loss (weighted cross-entropy)", lambda n: n.endswith("loss")),
        ("validation metrics", lambda n: n.startswith("val/") and not n.endswith("loss")),
        ("learning rate", lambda n: n.startswith("lr-")),
    ]
    for ax, (title, wanted) in zip(axes, groups, strict=True):
        names = sorted(n for n in curves if wanted(n))
        for name in names:
            steps, values = curves[name]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=name)
        if names:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if any(n.startswith("lr-") for n in curves):
        axes[2].set_yscale("log")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def metric_table(metrics: dict, dataset: str, split: str) -> str:
    """Markdown: each scalar metric, this run's value and the paper's where it has one (a
    paper column only for the paper's data sets)."""
    paper = PAPER.get(dataset)
    columns = ["metric", f"this run ({split} split)"]
    if paper:
        columns.append(f"paper ({dataset} test set)")
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, value in shown_metrics(metrics).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and float(value).is_integer():  # counts: 13, not 13.0000
                ours = f"{int(value)}"
            elif math.isfinite(value) and abs(value) >= 1e-3:
                ours = f"{value:.4f}"
            else:
                ours = f"{value:.3g}"
            cells = [name, ours]
            if paper:
                cells.append(f"{paper[name][0]:g} ({paper[name][1]})" if name in paper else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def legend(kind: str) -> str:
    """What the error colours of :func:`error_kind`'s pictures mean, in Markdown."""
    kinds = {"objects": (1, 2, 3, 4), "membranes": (5, 6), "pixels": (7, 8)}[kind]
    meaning = {
        1: "one predicted object covers two or more true cells",
        2: "a true cell holds two or more predicted objects",
        3: "a true cell that no predicted object covers",
        4: "a predicted object outside every (annotated) true cell",
        5: "true membrane predicted as cell (p > 0.5): may merge neighbours",
        6: "true cell interior predicted as membrane: may split a cell",
        7: "a true foreground pixel predicted as background (p <= 0.5)",
        8: "a true background pixel predicted as foreground (p > 0.5)",
    }
    rows = [f"- {KINDS[k][0]} (RGB {KINDS[k][1]}): {meaning[k]}" for k in kinds]
    return "\n".join(rows)


def file_name(split: str, name: str) -> str:
    return f"{split}_{name.replace('/', '-')}.png"


def write_report(
    folder: str | Path,
    title: str,
    metrics: dict,
    dataset: str,
    split: str,
    panels: Sequence[tuple[str, np.ndarray]],
    curves: Sequence[Path] = (),
    notes: Sequence[str] = (),
    errors: str | None = None,
) -> Path:
    """Write ``report.md`` and its PNGs to ``folder``; returns the path of ``report.md``.

    Args:
        title: the report's heading (e.g. the command that made the run).
        metrics: the run's metrics (``val/`` names; non-numbers are listed under Settings).
        dataset: :func:`dataset_name`; split: the split the metrics are of.
        panels: (image id, picture from :func:`image_panel`) per image.
        curves: Lightning CSV metric files (empty: no learning curves).
        notes: extra lines under the heading.
        errors: what the panels' error colours are (:func:`error_kind`); None: objects for
            the Cell Tracking Challenge's data sets, membranes for ISBI, pixels otherwise.
    """
    errors = errors or error_kind(dataset, dataset in PAPER and dataset != "isbi2012")
    folder = Path(folder)
    pictures = folder / "report"
    pictures.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *notes, ""]
    lines += ["## Scores", "", metric_table(metrics, dataset, split), ""]
    if dataset in PAPER:
        lines.append(
            f"Our numbers are on the {split} split of the data here; the paper's are on the "
            "challenge's test set (Ronneberger et al. 2015), so they are a reference, not a "
            "match."
        )
    else:
        lines.append(f"Our numbers are on the {split} split of {dataset}; no paper has figures.")
    settings = {k: v for k, v in metrics.items() if not isinstance(v, int | float)}
    if settings:
        lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()]
    lines += ["", "## Learning curves", ""]
    if curves:
        plot_curves(read_curves(curves), pictures / "curves.png")
        lines.append("![learning curves](report/curves.png)")
    else:
        lines.append("No learning curves: the run had no CSV logger (`logger=csv`).")
    lines += ["", f"## {split.capitalize()} images", ""]
    lines += ["input | ground truth | prediction | errors. Error colours:", ""]
    lines += [legend(errors), ""]
    for name, picture in panels:
        png = write_png(pictures / file_name(split, name), picture)
        lines += [f"### {name}", "", f"![{split} image {name}](report/{png.name})", ""]
    path = folder / "report.md"
    write_text(path, "\n".join(lines))
    return path


def linked_images(report: str | Path) -> list[Path]:
    """The image files that a ``report.md`` links, relative to its folder."""
    report = Path(report)
    found = []
    for line in report.read_text().splitlines():
        start = line.find("](")
        if line.startswith("![") and start > 0:
            found.append(report.parent / line[start + 2 : line.index(")", start)])
    return found
