"""Image/mask pairs of a folder data set: found by file name, read, checked, made into targets.

Layout (any names; ``data=folder`` sets them)::

    <data_dir>/images/a.tif, b.png, ...   one image per file: gray, RGB or (C, H, W) TIFF;
                                          8/16-bit or float; any size
    <data_dir>/masks/a.png, b.tif, ...    one mask per image, same name stem (+ mask_suffix)

A mask is either

- ``semantic``: a class index per pixel, 0..K-1, or raw values mapped to classes by a
  ``value_map`` such as {0: 0, 255: 1};
- ``instance``: one id per object, 0 = background; the target is the paper's two-class map
  with separation borders between touching objects (:func:`unet.data.weight_maps.instance_targets`).

In both, the ``unlabelled`` value (if set) marks pixels that are left out of the loss
(weight 0) and of the metrics: sparse annotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet.data.frames import IMAGE_SUFFIXES, read_channels, read_image
from unet.data.readers import DataError, DataNotFoundError, instance_labels, require_contrast
from unet.data.weight_maps import cached_class_weight_map, cached_instance_weight_map

MASK_TYPES = ("semantic", "instance")


@dataclass
class Pair:
    """One image file and its mask file; ``id`` is the image's name stem."""

    id: str
    image: Path
    mask: Path


@dataclass
class Targets:
    """What training needs of one mask (all (H, W))."""

    classes: np.ndarray  # class indices in [0, K); 0 where unlabelled
    weights: np.ndarray  # float32 loss weights; 0 where unlabelled
    instances: np.ndarray | None  # instance ids (instance masks), 0 where unlabelled
    unlabelled: int  # how many pixels are unlabelled


def image_files(folder: Path, what: str) -> dict[str, Path]:
    """The TIFF and PNG files of ``folder`` by name stem; errors for a missing or empty
    folder and for two files with one stem."""
    if not folder.is_dir():
        raise DataNotFoundError(
            f"{folder}: {what} folder not found; expected a folder of TIFF or PNG files "
            "(set data.data_dir, or data.images / data.masks for other folder names)"
        )
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(
                f"{path} and {files[path.stem].name}: two {what} files with the name stem "
                f"{path.stem!r}; expected one file per name"
            )
        files[path.stem] = path
    if not files:
        raise DataError(
            f"{folder}: empty {what} folder: no {', '.join(IMAGE_SUFFIXES)} files; expected "
            f"one file per {what[:-1] if what.endswith('s') else what}"
        )
    return files


def _unmatched(extra: list[Path], other: Path, counterpart: str) -> DataError:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    return DataError(
        f"{extra[0]}: no {counterpart} with the same name in {other}{more}; expected every "
        "image to have a mask of the same name stem (.tif, .tiff or .png) and every mask an image"
    )


def find_pairs(images: Path, masks: Path, mask_suffix: str = "") -> list[Pair]:
    """Image/mask pairs matched by name stem (the mask's stem is the image's +
    ``mask_suffix``), in sorted order; an error for any file without its counterpart."""
    image_by_stem = image_files(images, "images")
    mask_by_stem = image_files(masks, "masks")
    wanted = {stem + mask_suffix: stem for stem in image_by_stem}
    lonely_images = [p for s, p in image_by_stem.items() if s + mask_suffix not in mask_by_stem]
    if lonely_images:
        raise _unmatched(lonely_images, masks, "mask")
    lonely_masks = [p for s, p in mask_by_stem.items() if s not in wanted]
    if lonely_masks:
        raise _unmatched(lonely_masks, images, "image")
    return [Pair(s, image_by_stem[s], mask_by_stem[s + mask_suffix]) for s in image_by_stem]


def read_pair_image(pair: Pair, nonfinite: str = "refuse") -> np.ndarray:
    """The pair's image, (H, W) or (C, H, W), with contrast; ``nonfinite``: what to do with
    NaN or infinite pixels (``unet.data.readers``)."""
    return require_contrast(read_channels(pair.image, nonfinite, "data.nonfinite"), str(pair.image))


def read_mask(pair: Pair, shape: tuple[int, int]) -> np.ndarray:
    """The pair's mask as (H, W) integers, of the image's (H, W)."""
    mask = read_image(pair.mask)
    if mask.ndim != 2:
        raise DataError(
            f"{pair.mask}: a mask of shape {mask.shape}; expected one value per pixel, "
            "(height, width): class indices or instance ids"
        )
    if mask.shape != tuple(shape):
        raise DataError(
            f"{pair.mask}: mask size {mask.shape[0]}x{mask.shape[1]} differs from its image "
            f"{pair.image.name} ({shape[0]}x{shape[1]}); expected the same height and width"
        )
    if mask.dtype.kind == "f":
        if not np.array_equal(mask, np.round(mask)):
            raise DataError(
                f"{pair.mask}: a float mask with fractional values; expected whole numbers "
                "(class indices or instance ids)"
            )
        mask = mask.astype(np.int64)
    return mask.astype(np.int64) if mask.dtype == bool else mask


def _shown(values) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def semantic_classes(
    mask: np.ndarray,
    path: Path,
    num_classes: int,
    value_map: Mapping[int, int] | None,
    unlabelled: int | None,
) -> np.ndarray:
    """Class indices (uint8/uint16) of a semantic mask; 0 on ``unlabelled`` pixels. Values
    that are neither declared classes nor ``unlabelled`` are an error naming them."""
    declared = dict(value_map) if value_map else {k: k for k in range(num_classes)}
    values = np.unique(mask)
    unknown = [v for v in values.tolist() if v not in declared and v != unlabelled]
    if unknown:
        how = (
            f"the values of data.value_map ({_shown(declared)})"
            if value_map
            else f"class indices 0..{num_classes - 1} (data.num_classes={num_classes})"
        )
        hint = "" if value_map else "; for other values declare data.value_map, e.g. {0: 0, 255: 1}"
        extra = "" if unlabelled is None else f" or the unlabelled value {unlabelled}"
        raise DataError(
            f"{path}: mask values {_shown(unknown)} are outside the declared classes; "
            f"expected {how}{extra}{hint}"
        )
    lookup_values = np.array(sorted(declared), dtype=np.int64)
    lookup_classes = np.array([declared[v] for v in sorted(declared)], dtype=np.int64)
    index = np.searchsorted(lookup_values, mask).clip(0, len(lookup_values) - 1)
    classes = lookup_classes[index]
    if unlabelled is not None:
        classes[mask == unlabelled] = 0
    return classes.astype(np.uint8 if num_classes <= 256 else np.uint16)


def mask_targets(
    mask: np.ndarray,
    path: Path,
    *,
    mask_type: str,
    num_classes: int,
    value_map: Mapping[int, int] | None,
    unlabelled: int | None,
    w0: float,
    sigma: float,
    border_size: int,
    cache_dir: str | None,
) -> Targets:
    """Class map, the paper's weight map (cached) and instances of one mask."""
    ignore = None if unlabelled is None else mask == unlabelled
    count = 0 if ignore is None else int(ignore.sum())
    if ignore is not None and not ignore.any():
        ignore = None  # the same maps (and cache files) as without an unlabelled value
    if mask_type == "instance":
        instances = instance_labels(mask, path, mask.shape)
        if ignore is not None:
            instances = np.where(ignore, 0, instances)
        classes, weights = cached_instance_weight_map(
            instances, ignore, w0, sigma, border_size, cache_dir
        )
        return Targets(classes, weights, instances, count)
    classes = semantic_classes(mask, path, num_classes, value_map, unlabelled)
    weights = cached_class_weight_map(classes, num_classes, ignore, w0, sigma, cache_dir)
    return Targets(classes, weights, None, count)


def channel_count(image: np.ndarray) -> int:
    """C of a (H, W) (1) or (C, H, W) image."""
    return 1 if image.ndim == 2 else image.shape[0]


def check_channels(images: list[np.ndarray], pairs: list[Pair], in_channels: int) -> None:
    """Every image of a set has the same channel count, ``in_channels``; else one line
    naming an image that differs."""
    first = channel_count(images[0])
    for image, pair in zip(images, pairs, strict=True):
        if channel_count(image) != first:
            raise DataError(
                f"{pair.image}: {channel_count(image)} channel(s), but {pairs[0].image.name} "
                f"has {first}; expected the same channels in every image of a data set "
                "(save all as gray, or all as RGB / the same channel stack)"
            )
    if first != in_channels:
        raise DataError(
            f"{pairs[0].image}: the images have {first} channel(s) (shape "
            f"{images[0].shape}), data.in_channels={in_channels}; set "
            f"data.in_channels={first} (the model's in_channels follows it)"
        )
