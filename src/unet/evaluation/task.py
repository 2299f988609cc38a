"""Score a trained network, or predictions already written, on a dataset split.

One route for every score. The split's whole images are predicted once
(:func:`unet.inference.image.predict_image`: tiled, optionally with test-time augmentation), and
the probabilities are scored with :mod:`unet.metrics` on NumPy arrays:

- pixel metrics over the pixels with weight > 0 (unannotated cells are left out):
  ``pixel_error``, ``pixel_error_t05``, ``iou``, ``dice`` and the weighted ``loss``;
- the ISBI 2012 challenge metrics of the probability map (images without unlabelled
  pixels): ``rand_error``, ``v_rand``, ``v_info``, ``warping_error``;
- the metrics of the label images that ``src/predict.py`` writes, from the post-processing
  (:mod:`unet.inference.postprocess`): for cell data (instance masks) SEG and the object counts
  (``seg``, ``misses``, ...; ``seg_plain`` for plain components of p > 0.5), for ISBI the
  challenge metrics of the labels' boundary map (``labels_rand_error``, ...).

With K > 2 classes (a folder data set) the cell class of all of the above is the foreground
(any class but 0, p = 1 - p_0), and ``iou_class<k>``, ``dice_class<k>``, ``mean_iou`` and
``mean_dice`` of the argmax are added (:class:`unet.metrics.ClassCounts`); ``loss`` is the
K-class weighted cross-entropy.

With ``choose=True`` (the end of training) the post-processing is first chosen on the split
itself, to maximise SEG (cell data) or minimise the labels' Rand error (ISBI): the scores of
the labels are then optimistic for that split. ``seg_plain`` shows the untuned figure, and
``seg_heldout`` / ``labels_rand_error_heldout`` an honest one: settings chosen on one half
of the images, scored on the other (:func:`heldout_score`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from unet.config.checks import build, check_config
from unet.errors import UserError
from unet.evaluation.prediction_scores import score_prediction_file
from unet.evaluation.report import (
    ReportImage,
    dataset_name,
    error_kind,
    image_panel,
    shown_metrics,
    write_report,
)
from unet.inference.checkpoint import load_trained
from unet.inference.engines import engine_network, engine_tiler
from unet.inference.image import predict_image
from unet.inference.postprocess import (
    PostProcessing,
    boundary_map,
    choose_postprocessing,
    postprocessing_for,
)
from unet.inference.tiler import Tiler
from unet.io.atomic import write_json
from unet.io.output_safety import check_apart
from unet.io.progress import progress_bar
from unet.labels import CELL_CLASS, foreground, foreground_probability
from unet.metrics import (
    ClassCounts,
    PixelCounts,
    rand_error,
    score_cell_frames,
    score_isbi_stack,
    v_scores,
)
from unet.model.record import record_or_default, settings_for


@dataclass
class SplitPredictions:
    """The whole images of a split with their probabilities and ground truth.

    Attributes:
        probabilities: (H, W) probability of the cell class per image.
        classes: (H, W) class index per pixel (1 = cell) per image.
        weights: (H, W) loss weight per pixel per image (0 = not annotated).
        instances: (H, W) ground-truth instance ids per image (cell data), or None.
        class_probabilities: (K, H, W) per image for K > 2 classes, else None; then
            ``probabilities`` and ``classes`` are those of the foreground (any class but 0).
        all_classes: (H, W) class indices in [0, K) per image for K > 2, else None.
    """

    probabilities: list[np.ndarray]
    classes: list[np.ndarray]
    weights: list[np.ndarray]
    instances: list[np.ndarray] | None = None
    class_probabilities: list[np.ndarray] | None = None
    all_classes: list[np.ndarray] | None = None


def predict_split(
    net,
    datamodule: L.LightningDataModule,
    split: str,
    tiler: Tiler | None,
    tta: str,
    precision: str | int = 32,
) -> SplitPredictions:
    """Predict every whole image of ``split`` once (``unet.inference.image.predict_image``)."""
    if split not in datamodule.whole_sets:
        raise UserError(
            f"split={split!r}: expected one of {', '.join(sorted(datamodule.whole_sets))}"
        )
    dataset = datamodule.whole_sets[split]
    instances = datamodule.instances.get(split)
    with progress_bar(True, "eval") as bar:
        task = bar.add_task("images", total=len(dataset.images))
        predicted = []  # (H, W) cell probability per image; (K, H, W) for K > 2 classes
        for image in dataset.images:
            prob = predict_image(net, image, tiler, tta, precision)
            predicted.append(prob[CELL_CLASS] if net.config.num_classes == 2 else prob)
            bar.advance(task)
    if net.config.num_classes == 2:
        return SplitPredictions(predicted, list(dataset.classes), list(dataset.weights), instances)
    return SplitPredictions(
        [foreground_probability(p) for p in predicted],
        [foreground(c) for c in dataset.classes],
        list(dataset.weights),
        instances,
        class_probabilities=predicted,
        all_classes=list(dataset.classes),
    )


def pixel_scores(split: SplitPredictions) -> dict[str, float]:
    """Pixel metrics over the pixels with weight > 0, pooled over images, by the one rule
    of :mod:`unet.metrics.pixels` (the per-epoch validation's too)."""
    counts = PixelCounts()
    for p, c, w in zip(split.probabilities, split.classes, split.weights, strict=True):
        counts.add(p[None], c[None], (w > 0)[None])
    if split.class_probabilities is None:
        # weighted cross-entropy (unet.model.loss): mean over all pixels of w * -log p(true class)
        nll = [
            w * -np.log(np.clip(np.where(c == CELL_CLASS, p, 1.0 - p), 1e-7, 1.0))
            for p, c, w in zip(split.probabilities, split.classes, split.weights, strict=True)
        ]
        loss = float(sum(x.sum() for x in nll) / sum(x.size for x in nll))
        return counts.scores() | {"loss": loss}
    per_class = ClassCounts(len(split.class_probabilities[0]))
    nll = []
    for p, c, w in zip(split.class_probabilities, split.all_classes, split.weights, strict=True):
        per_class.add(p, c, w > 0)
        true_p = np.take_along_axis(p, c[None].astype(np.int64), axis=0)[0]  # (H, W)
        nll.append(w * -np.log(np.clip(true_p, 1e-7, 1.0)))
    loss = float(sum(x.sum() for x in nll) / sum(x.size for x in nll))
    return counts.scores() | per_class.scores() | {"loss": loss}


def _same_size_groups(indices: Sequence[int], shapes: Sequence[tuple]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for k in indices:
        groups.setdefault(tuple(shapes[k]), []).append(k)
    return list(groups.values())


def complete_images(split: SplitPredictions) -> list[int]:
    """The images without unannotated pixels (weight > 0 everywhere): the ISBI definitions
    know no unlabelled pixels."""
    return [k for k, w in enumerate(split.weights) if (w > 0).all()]


def challenge_scores(maps: Sequence[np.ndarray], split: SplitPredictions) -> dict[str, float]:
    """ISBI 2012 challenge metrics of cell-probability (or boundary) maps, over the images
    without unannotated pixels; images of several sizes are scored size by size and
    averaged, weighted by image count. Empty if every image has unannotated pixels."""
    complete = complete_images(split)
    totals: dict[str, float] = {}
    for group in _same_size_groups(complete, [m.shape for m in maps]):
        scores = score_isbi_stack(
            np.stack([maps[k] for k in group]),
            np.stack([split.classes[k] == CELL_CLASS for k in group]).astype(np.uint8),
        )
        for name in ("rand_error", "v_rand", "v_info", "warping_error"):
            totals[name] = totals.get(name, 0.0) + scores[name] * len(group)
    return {name: value / len(complete) for name, value in totals.items()}


def labels_rand_error(
    labels: Sequence[np.ndarray], split: SplitPredictions, v_rand: bool = False
) -> float | tuple[float, float]:
    """ISBI Rand error of the boundary maps of instance labels (complete images only);
    with ``v_rand`` also their V_rand (after border thinning), as ``(rand_error, v_rand)``."""
    complete = complete_images(split)
    scores = []
    for group in _same_size_groups(complete, [x.shape for x in labels]):
        maps = np.stack([boundary_map(labels[k]) for k in group])
        cells = np.stack([split.classes[k] == CELL_CLASS for k in group]).astype(np.uint8)
        error = rand_error(maps, cells, thresholds=(0.5,)).value
        v = v_scores(maps, cells, thresholds=(0.5,))["v_rand"].value if v_rand else 0.0
        scores.append((error, v, len(group)))
    total = sum(n for *_, n in scores)
    error = sum(e * n for e, _, n in scores) / total
    return (error, sum(v * n for _, v, n in scores) / total) if v_rand else error


def has_truth(split: SplitPredictions) -> bool:
    """Whether the split has something to score labels against: a ground-truth object
    (cell data), or an image without unannotated pixels (ISBI)."""
    if split.instances is not None:
        return any(x.max() > 0 for x in split.instances)
    return bool(complete_images(split))


def choose_for_split(split: SplitPredictions) -> tuple[PostProcessing, dict]:
    """Post-processing chosen on the split: max SEG (cell data), else min labels' Rand error.
    A split with nothing to score against keeps the defaults."""
    if not has_truth(split):
        return PostProcessing(), {"score": "none: the split has no ground truth to score"}
    if split.instances is not None:
        name = "seg"

        def score(labels):
            return score_cell_frames(labels, split.instances)["seg"]
    else:
        name = "labels_rand_error"

        def score(labels):
            return -labels_rand_error(labels, split)

    start = time.perf_counter()
    chosen, value = choose_postprocessing(split.probabilities, score)
    how = {"score": name, "value": abs(value), "seconds": round(time.perf_counter() - start, 1)}
    return chosen, how


def subset(split: SplitPredictions, indices: Sequence[int]) -> SplitPredictions:
    """The images ``indices`` of a split."""
    pick = [
        split.probabilities,
        split.classes,
        split.weights,
        split.instances,
        split.class_probabilities,
        split.all_classes,
    ]
    return SplitPredictions(*[None if x is None else [x[k] for k in indices] for x in pick])


def heldout_score(split: SplitPredictions) -> dict[str, float]:
    """The chosen post-processing's score on images it was not chosen on: the images are
    split in two halves (alternating), settings are chosen on each half and applied to the
    other, and the pooled labels are scored as ``choose_for_split`` scores them. Empty for a
    split of one image."""
    n = len(split.probabilities)
    halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    if n < 2 or not all(has_truth(subset(split, half)) for half in halves):
        return {}
    labels: list[np.ndarray | None] = [None] * n
    for chosen_on, applied_to in (halves, halves[::-1]):
        chosen, _ = choose_for_split(subset(split, chosen_on))
        for k in applied_to:
            labels[k] = chosen(split.probabilities[k])
    if split.instances is not None:
        return {"seg_heldout": score_cell_frames(labels, split.instances)["seg"]}
    error, v_rand = labels_rand_error(labels, split, v_rand=True)
    return {"labels_rand_error_heldout": error, "labels_v_rand_heldout": v_rand}


def label_scores(split: SplitPredictions, postprocess: PostProcessing) -> dict[str, float]:
    """Scores of the label images that ``postprocess`` makes of the probabilities."""
    labels = [postprocess(p) for p in split.probabilities]
    if not has_truth(split):
        return {}
    if split.instances is not None:
        scores = score_cell_frames(labels, split.instances)
        plain = [PostProcessing()(p) for p in split.probabilities]
        return scores | {"seg_plain": score_cell_frames(plain, split.instances)["seg"]}
    maps = [boundary_map(x) for x in labels]
    return {f"labels_{k}": v for k, v in challenge_scores(maps, split).items()}


def score_split(
    split: SplitPredictions, postprocess: PostProcessing | None = None, choose: bool = False
) -> tuple[dict[str, float], PostProcessing, dict]:
    """Every metric of a predicted split (module docstring).

    Returns:
        The metrics (``val/`` names), the post-processing used, and how it was chosen
        (empty unless ``choose``).
    """
    chosen_on: dict = {}
    if choose:
        postprocess, chosen_on = choose_for_split(split)
    postprocess = postprocess or PostProcessing()
    scores = pixel_scores(split)
    scores |= challenge_scores(split.probabilities, split)
    scores |= label_scores(split, postprocess)
    if choose:
        scores |= heldout_score(split)
    return {f"val/{k}": float(v) for k, v in scores.items()}, postprocess, chosen_on


def command_line(entry_point: str) -> str:
    """The command that made this run (Hydra's overrides), for a report's heading."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return f"python src/{entry_point}.py (composed in Python)"
    return " ".join([f"python src/{entry_point}.py", *HydraConfig.get().overrides.task])


def split_report(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    name: str,
    split: SplitPredictions | None,
    postprocess: PostProcessing,
    metrics: dict,
    entry_point: str,
    curves: Sequence[Path] = (),
) -> list[tuple[str, np.ndarray]]:
    """Write the run report (:mod:`unet.evaluation.report`) of a predicted split to the output
    folder,
    from the probabilities already computed; returns its panels (image id, RGB picture)."""
    panels, dataset = [], dataset_name(cfg.data)
    errors = error_kind(dataset, split is not None and split.instances is not None)
    if split is not None:
        images, ids = datamodule.whole_sets[name].images, datamodule.frame_ids[name]
        for k, prob in enumerate(split.probabilities):
            truth = None if split.instances is None else split.instances[k]
            item = ReportImage(ids[k], images[k], split.classes[k], split.weights[k], prob, truth)
            panels.append((item.name, image_panel(item, postprocess, errors == "membranes")))
    title = f"Report: {command_line(entry_point)}"
    write_report(cfg.paths.output_dir, title, metrics, dataset, name, panels, curves, errors=errors)
    return panels


def print_table(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in shown_metrics(metrics).items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.ckpt_path`` (or the written predictions ``cfg.predictions``,
    :mod:`unet.evaluation.prediction_scores`) on
    ``cfg.split``, with the post-processing stored in the checkpoint unless overridden.

    Writes ``<output_dir>/metrics.json`` and the report (``report.md``,
    :mod:`unet.evaluation.report`)
    and prints a table.
    """
    check_config(cfg)  # types and ranges of every setting, before anything is read
    if not cfg.get("ckpt_path") and not cfg.get("predictions"):
        raise UserError("nothing to score: pass ckpt_path=<checkpoint> or predictions=<tif stack>")
    # its files are new ones (never replaced): only an output in an input could harm one
    check_apart(
        cfg.paths.output_dir,
        contains=False,
        key="paths.output_dir",
        ckpt_path=cfg.get("ckpt_path"),
        predictions=cfg.get("predictions"),
    )
    L.seed_everything(cfg.seed, workers=True)
    trust = cfg.get("trust_checkpoint", False)
    trained = load_trained(cfg.ckpt_path, trust=trust) if cfg.get("ckpt_path") else None
    datamodule = build(cfg, "data")
    datamodule.setup("validate")
    if cfg.get("predictions"):
        metrics = score_prediction_file(cfg.predictions, datamodule, cfg.split)
        metrics |= {"source": str(cfg.predictions)}
        split, postprocess = None, PostProcessing()
    else:
        postprocess = postprocessing_for(trained.postprocess, cfg.get("postprocess"))
        record = record_or_default(trained.record, trained.path)
        tta, precision = settings_for(record, cfg.tta, cfg.get("precision"))
        engine = cfg.get("engine", "torch")
        tiler = Tiler(overlap=record.overlap)
        tiler = engine_tiler(tiler, engine, trained.net.config, record.tile_size)
        net = engine_network(trained.net, engine, precision)
        split = predict_split(net, datamodule, cfg.split, tiler, tta, precision)
        metrics, postprocess, chosen_on = score_split(split, postprocess, cfg.get("choose", False))
        metrics |= {
            "source": str(cfg.ckpt_path),
            "tta": tta,
            "precision": str(precision),
            "engine": cfg.get("engine", "torch"),
            "postprocess": postprocess.to_dict(),
        }
        if chosen_on:
            metrics["postprocess_chosen_on"] = chosen_on | {"split": cfg.split}
    metrics |= {"split": cfg.split}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    split_report(cfg, datamodule, cfg.split, split, postprocess, metrics, "eval")
    print_table(metrics, f"{cfg.split} split, {Path(metrics['source']).name}")
    return metrics
