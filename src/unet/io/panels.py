"""Pictures of a segmentation and its errors: input | ground truth | prediction | errors.

One rendering function (:func:`render_panel`) for every place that shows a result: the run
report (:mod:`unet.evaluation.report`), W&B and TensorBoard (:mod:`unet.training.callbacks`) and
the notebooks.
NumPy and Pillow only (no Lightning), so that prediction and notebooks can use it.

Errors are coloured by kind. For cell data they are object errors of the predicted
instances against the ground-truth instances (:func:`cell_errors`); for ISBI (membranes)
and for the tiles of the per-epoch validation they are pixel errors of p > 0.5 against the
classes (:func:`pixel_errors`). Unannotated pixels (weight 0) are never errors.

Choices the paper leaves open (it shows no error maps): an object "covers" another when
more than half of the other's pixels lie inside it, as in the SEG measure's matching.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# kind id -> (name, RGB); ids are what the error maps hold, 0 = no error
KINDS: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("false merge", (230, 25, 75)),
    2: ("false split", (255, 225, 25)),
    3: ("missed cell", (0, 130, 200)),
    4: ("false cell", (240, 50, 230)),
    5: ("missed membrane", (245, 130, 48)),
    6: ("false membrane", (70, 240, 240)),
    7: ("missed cell pixel", (0, 130, 200)),
    8: ("false cell pixel", (240, 50, 230)),
}
TITLES = ("input", "ground truth", "prediction", "errors")
GAP, HEADER, LEGEND = 4, 14, 16


def _overlaps(labels: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """(max truth id + 1, max predicted id + 1) pixel counts of truth id x predicted id."""
    truth, predicted = instances.ravel().astype(np.int64), labels.ravel().astype(np.int64)
    columns = int(predicted.max(initial=0)) + 1
    rows = int(truth.max(initial=0)) + 1
    return np.bincount(truth * columns + predicted, minlength=rows * columns).reshape(rows, -1)


def cell_errors(
    labels: np.ndarray, instances: np.ndarray, annotated: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) error kinds of predicted instances against ground-truth instances.

    - false merge: a predicted object covering two or more true cells (its pixels);
    - false split: a true cell holding two or more predicted objects (the cell's pixels);
    - missed cell: a true cell covered by no predicted object and not split (its pixels);
    - false cell: a predicted object lying mostly outside every true cell (its pixels),
      unless it lies mostly on unannotated pixels (``annotated`` False: a cell nobody drew).

    Args:
        labels: (H, W) predicted instance ids, 0 = background.
        instances: (H, W) true instance ids, 0 = background.
        annotated: (H, W) bool, pixels with ground truth (weight > 0); default all.
    """
    table = _overlaps(labels, instances).astype(np.float64)  # (truth, predicted)
    truth_size, pred_size = table.sum(1), table.sum(0)
    covers = table > 0.5 * np.maximum(truth_size[:, None], 1)  # pred covers truth cell
    inside = table > 0.5 * np.maximum(pred_size[None, :], 1)  # pred lies inside truth cell
    covers[0, :], inside[0, :], covers[:, 0], inside[:, 0] = False, False, False, False
    kinds = np.zeros(labels.shape, np.uint8)
    truth_ids, pred_ids = np.flatnonzero(truth_size[1:]) + 1, np.flatnonzero(pred_size[1:]) + 1
    merged = [p for p in pred_ids if covers[:, p].sum() >= 2]
    split = [t for t in truth_ids if inside[t].sum() >= 2]
    missed = [t for t in truth_ids if not covers[t].any() and t not in split]
    outside = [p for p in pred_ids if not inside[:, p].any() and p not in merged]
    if annotated is not None:
        outside = [p for p in outside if annotated[labels == p].mean() > 0.5]
    # drawn in this order: a later kind wins where two overlap
    kinds[np.isin(instances, missed)] = 3
    kinds[np.isin(labels, outside)] = 4
    kinds[np.isin(instances, split)] = 2
    kinds[np.isin(labels, merged)] = 1
    return kinds


def pixel_errors(
    prob: np.ndarray, classes: np.ndarray, weight: np.ndarray, membranes: bool
) -> np.ndarray:
    """(H, W) pixel error kinds of p(cell) > 0.5 against the classes (1 = cell), where
    weight > 0: missed / false membrane (ISBI) or missed / false cell pixel (cell data)."""
    cell, truth, known = prob > 0.5, classes == 1, weight > 0
    kinds = np.zeros(prob.shape, np.uint8)
    kinds[known & cell & ~truth] = 5 if membranes else 8
    kinds[known & ~cell & truth] = 6 if membranes else 7
    return kinds


def gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: an image stretched between its 1st and 99th percentiles."""
    lo, hi = np.percentile(image, (1, 99))
    scaled = np.clip((image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def tint(base: np.ndarray, ids: np.ndarray, alpha: float = 0.45, seed: int = 0) -> np.ndarray:
    """``base`` (H, W, 3) with each id > 0 tinted in its own bright colour."""
    palette = np.random.default_rng(seed).uniform(0.25, 1.0, (int(ids.max(initial=0)) + 1, 3))
    out, objects = base.copy(), ids > 0
    out[objects] = (1 - alpha) * out[objects] + alpha * palette[ids[objects]]
    return out


def classes_rgb(classes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(H, W, 3) float: cell white, background (membrane) black, unannotated mid gray."""
    values = np.where(weight > 0, (classes == 1).astype(np.float32), 0.5)
    return np.repeat(values[..., None], 3, axis=-1)


def errors_rgb(image: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """(H, W, 3) float: the image dimmed, each error pixel in its kind's colour."""
    out = 0.5 * gray(image)
    for kind in np.unique(kinds[kinds > 0]):
        out[kinds == kind] = np.array(KINDS[int(kind)][1]) / 255
    return out


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, fill=(0, 0, 0)) -> None:
    draw.text(xy, text, fill=fill, font=ImageFont.load_default())


def render_panel(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    kinds: np.ndarray,
    titles: tuple[str, ...] = TITLES,
) -> np.ndarray:
    """(HEADER + H + LEGEND, 4 W + 3 GAP, 3) uint8: the four pictures side by side on white,
    with their titles above and a legend of the error kinds present below.

    Args:
        image: (H, W) gray values (stretched for display).
        truth, prediction: (H, W, 3) float pictures in [0, 1] (e.g. :func:`tint`,
            :func:`classes_rgb`, or :func:`gray` of a probability map).
        kinds: (H, W) error kinds (:data:`KINDS`), 0 = no error.
    """
    h, w = image.shape
    pictures = [gray(image), truth, prediction, errors_rgb(image, kinds)]
    canvas = np.full((HEADER + h + LEGEND, 4 * w + 3 * GAP, 3), 255, np.uint8)
    for k, picture in enumerate(pictures):
        x = k * (w + GAP)
        canvas[HEADER : HEADER + h, x : x + w] = np.round(np.clip(picture, 0, 1) * 255)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for k, title in enumerate(titles):
        _label(draw, (k * (w + GAP) + 2, 1), title)
    x, y = 2, HEADER + h + 2
    present = [int(k) for k in np.unique(kinds) if k > 0]
    for kind in present or [0]:
        if kind == 0:
            _label(draw, (x, y), "no errors")
            break
        name, colour = KINDS[kind]
        draw.rectangle((x, y + 1, x + 9, y + 10), fill=colour, outline=(0, 0, 0))
        _label(draw, (x + 13, y), name)
        x += 13 + 7 * len(name) + 12
    return np.asarray(pil)


def cell_panel(
    image: np.ndarray,
    instances: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """The panel of a cell-data image: true and predicted instances tinted on the image,
    object errors (:func:`cell_errors`); unannotated pixels (weight 0) darkened in the truth."""
    base = gray(image)
    truth = tint(base, instances)
    if weight is not None:
        truth[weight == 0] *= 0.4
    annotated = None if weight is None else weight > 0
    kinds = cell_errors(labels, instances, annotated)
    return render_panel(image, truth, tint(base, labels, seed=1), kinds)


def membrane_panel(
    image: np.ndarray,
    classes: np.ndarray,
    prob: np.ndarray,
    weight: np.ndarray,
    membranes: bool = True,
) -> np.ndarray:
    """The panel of an ISBI image: classes, P(cell) in gray, membrane errors of p > 0.5
    (``membranes=False``: the same errors named as cell pixels, for other class masks)."""
    kinds = pixel_errors(prob, classes, weight, membranes)
    prediction = np.repeat(prob.astype(np.float32)[..., None], 3, axis=-1)
    return render_panel(image, classes_rgb(classes, weight), prediction, kinds)


def centre_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centre (H, W) of ``array`` (a valid-convolution net's output is smaller)."""
    top, left = (array.shape[0] - shape[0]) // 2, (array.shape[1] - shape[1]) // 2
    return array[top : top + shape[0], left : left + shape[1]]


def tile_panel(
    image: np.ndarray, classes: np.ndarray, prob: np.ndarray, weight: np.ndarray, membranes: bool
) -> np.ndarray:
    """The panel of a validation tile (per-epoch logging): classes, P(cell), pixel errors;
    input, classes and weights cut to the output's centre."""
    image, classes, weight = (centre_crop(a, prob.shape) for a in (image, classes, weight))
    kinds = pixel_errors(prob, classes, weight, membranes)
    prediction = np.repeat(prob.astype(np.float32)[..., None], 3, axis=-1)
    return render_panel(image, classes_rgb(classes, weight), prediction, kinds)


def thumbnail(picture: np.ndarray, size: int = 160) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 shrunk so that its longer side is at most ``size``."""
    pil = Image.fromarray(picture)
    pil.thumbnail((size, size))
    return np.asarray(pil)


def contact_sheet(
    pictures: list[np.ndarray], names: list[str], size: int = 160, columns: int | None = None
) -> np.ndarray:
    """(rows * (size + HEADER), columns * (size + GAP), 3) uint8: every picture as a
    thumbnail in a grid, each titled with its name (a stack's frames at one glance)."""
    if not pictures or len(pictures) != len(names):
        raise ValueError(f"need one name per picture, got {len(pictures)} and {len(names)}")
    columns = columns or max(1, int(np.ceil(np.sqrt(len(pictures)))))
    rows = int(np.ceil(len(pictures) / columns))
    sheet = np.full((rows * (size + HEADER), columns * (size + GAP), 3), 255, np.uint8)
    for k, picture in enumerate(pictures):
        small = thumbnail(picture, size)
        top, left = (k // columns) * (size + HEADER) + HEADER, (k % columns) * (size + GAP)
        sheet[top : top + small.shape[0], left : left + small.shape[1]] = small
    pil = Image.fromarray(sheet)
    draw = ImageDraw.Draw(pil)
    for k, name in enumerate(names):
        _label(draw, ((k % columns) * (size + GAP) + 1, (k // columns) * (size + HEADER)), name)
    return np.asarray(pil)
