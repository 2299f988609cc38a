"""Your own images: a folder of images and a folder of masks (``data=folder``).

Pairs are matched by file name stem (:mod:`unet.data.pairs` reads and checks them); the
validation set is a separate pair of folders, a fraction of the training pairs (spread
evenly over their sorted names) or a list of name stems. Everything after reading is the
paper's data sets' own path: weight maps (class balance + border term, cached) from
:mod:`unet.data.weight_maps`, random elastic tiles and whole validation images from
:class:`unet.data.base.SegmentationDataModule`.

Before training a summary is printed (pairs, sizes, dtypes, class histogram per split,
unlabelled fraction), and every problem is one line naming the file: an image without a
mask or a mask without an image, a size mismatch, mask values outside the declared
classes, a class that never appears in training, an empty folder, images whose channel
counts disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet.data.augment.paper import Augmentation
from unet.data.base import SegmentationDataModule, Split
from unet.data.pairs import (
    MASK_TYPES,
    Pair,
    check_channels,
    find_pairs,
    mask_targets,
    read_mask,
    read_pair_image,
)
from unet.data.readers import DataError
from unet.data.samples import standardize
from unet.data.settings import TileSettings
from unet.distributed import is_rank_zero
from unet.io.pixel_size import read_pixel_size


def evenly_spaced(count: int, fraction: float) -> list[int]:
    """``round(fraction * count)`` (at least 1) indices spread evenly over 0..count-1."""
    m = max(1, round(fraction * count))
    return sorted({min(int((i + 0.5) * count / m), count - 1) for i in range(m)})


def split_pairs(pairs: list[Pair], val: float | Sequence[str]) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs of one folder: a fraction in (0, 1) or a list of ids."""
    ids = [p.id for p in pairs]
    if isinstance(val, int | float) and not isinstance(val, bool):
        if not 0 < val < 1:
            raise DataError(f"data.val={val}: expected a fraction in (0, 1) or a list of names")
        if len(pairs) < 2:
            raise DataError(
                f"{pairs[0].image.parent}: 1 image; a validation fraction needs at least 2 "
                "pairs (or give data.val_images and data.val_masks folders)"
            )
        chosen = set(evenly_spaced(len(pairs), float(val)))
    else:
        unknown = [v for v in val if v not in ids]
        if unknown or not val:
            raise DataError(
                f"data.val={list(val)}: {unknown or 'empty'}; expected names (file stems) of "
                f"training pairs, e.g. {ids[:3]}"
            )
        chosen = {ids.index(v) for v in val}
    train = [p for k, p in enumerate(pairs) if k not in chosen]
    if not train:
        raise DataError(f"data.val={val} leaves no training pairs among {len(pairs)}")
    return train, [p for k, p in enumerate(pairs) if k in chosen]


def class_histogram(split: Split, num_classes: int) -> np.ndarray:
    """(K,) labelled pixels (weight > 0) of each class over the split."""
    counts = np.zeros(num_classes, np.int64)
    for c, w in zip(split.classes, split.weights, strict=True):
        counts += np.bincount(c[w > 0].ravel(), minlength=num_classes)[:num_classes]
    return counts


def describe_split(name: str, pairs: list[Pair], split: Split, raw: dict, num_classes: int) -> str:
    """One summary line of a split: pairs, sizes, dtypes, class shares, unlabelled share."""
    sizes = Counter(f"{c.shape[0]}x{c.shape[1]}" for c in split.classes)
    hist = class_histogram(split, num_classes)
    total = sum(c.size for c in split.classes)
    shares = ", ".join(f"{k}: {100 * n / max(hist.sum(), 1):.1f}%" for k, n in enumerate(hist))
    return (
        f"  {name}: {len(pairs)} pairs; sizes {', '.join(f'{s} ({n})' for s, n in sizes.items())}; "
        f"images {', '.join(sorted(raw['dtypes']))}, {raw['channels']} channel(s); "
        f"classes {shares}; unlabelled {100 * raw['unlabelled'] / max(total, 1):.1f}%"
    )


class FolderDataModule(SegmentationDataModule):
    """Images and masks from two folders, matched by name (module docstring).

    Frame ids are the image file name stems; ``instances`` holds the instance masks of
    ``mask_type="instance"`` data sets (scored with SEG at the end of training).

    Args:
        data_dir: the folder that holds ``images`` and ``masks``.
        images, masks: the folders of images and of masks (relative to ``data_dir``, or
            absolute).
        mask_suffix: a mask's name stem is its image's + this (e.g. ``"_mask"``).
        val_images, val_masks: a separate validation set (both, or neither).
        val: without validation folders: a fraction of the pairs in (0, 1), or a list of
            name stems.
        mask_type: ``"semantic"`` (class indices, or values mapped by ``value_map``) or
            ``"instance"`` (one id per object, 0 = background; two classes).
        num_classes: K, the classes of a semantic mask (2 for instance masks).
        in_channels: the channels of every image (1 gray, 3 RGB, ...); checked.
        value_map: raw mask value -> class index, e.g. ``{0: 0, 255: 1}`` (None: the
            values are the class indices 0..K-1).
        unlabelled: the mask value of pixels left out of the loss and the metrics.
        summary: print the data summary at setup.
        augmentation: moves each training tile's image, classes and weights together
            (:class:`unet.data.augment.paper.Augmentation`; None: plain tiles).
        **tiles: the training tiles, the loader and the weight maps: the fields of
            :class:`unet.data.settings.TileSettings` (``tile_size``, ``samples_per_epoch``,
            ``batch_size``, ``num_workers``, ``w0``, ``sigma``, ``border_size``,
            ``cache_dir``, ``crop``, ``seed``, ``nonfinite``); an unknown key is a TypeError.
    """

    def __init__(
        self,
        data_dir: str,
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str = "",
        val_images: str | None = None,
        val_masks: str | None = None,
        val: float | Sequence[str] = 0.2,
        mask_type: str = "semantic",
        num_classes: int = 2,
        in_channels: int = 1,
        value_map: Mapping | None = None,
        unlabelled: int | None = None,
        summary: bool = True,
        augmentation: Augmentation | None = None,
        **tiles: Any,
    ):
        super().__init__(TileSettings(**tiles), augmentation)
        if mask_type not in MASK_TYPES:
            raise DataError(f"data.mask_type={mask_type!r}: expected one of {MASK_TYPES}")
        if mask_type == "instance" and num_classes != 2:
            raise DataError(
                f"data.num_classes={num_classes} with instance masks: expected 2 (background "
                "and object); for more classes use semantic masks"
            )
        if (val_images is None) != (val_masks is None):
            raise DataError("data.val_images and data.val_masks: expected both folders or neither")
        # plain values, not Hydra's containers: checkpoints must load with weights_only=True
        val = float(val) if isinstance(val, int | float) else [str(v) for v in val]
        value_map = None if not value_map else {int(k): int(v) for k, v in value_map.items()}
        if value_map and not set(value_map.values()) <= set(range(num_classes)):
            raise DataError(
                f"data.value_map={value_map}: maps to classes outside 0..{num_classes - 1} "
                f"(data.num_classes={num_classes})"
            )
        self.save_hyperparameters(ignore=["augmentation"])
        self.record_tiles()

    def _folder(self, name: str) -> Path:
        return Path(self.hparams.data_dir) / name  # an absolute name replaces data_dir

    def pair_sets(self) -> dict[str, list[Pair]]:
        """The ``"train"`` and ``"val"`` pairs, found and matched (nothing read yet)."""
        hp = self.hparams
        pairs = find_pairs(self._folder(hp.images), self._folder(hp.masks), hp.mask_suffix)
        if hp.val_images is None:
            train, val = split_pairs(pairs, hp.val)
        else:
            folders = self._folder(hp.val_images), self._folder(hp.val_masks)
            train, val = pairs, find_pairs(*folders, hp.mask_suffix)
        return {"train": train, "val": val}

    def read_set(self, pairs: list[Pair]) -> tuple[Split, dict]:
        """Read, check and weight one split's pairs; also what the summary reports."""
        hp = self.hparams
        images, raw_images = [], []
        classes, weights, instances = [], [], []
        unlabelled, dtypes = 0, set()
        for pair in pairs:
            image = read_pair_image(pair, self.hparams.nonfinite)
            dtypes.add(str(image.dtype))
            mask = read_mask(pair, image.shape[-2:])
            if hp.crop:
                image, mask = image[..., : hp.crop, : hp.crop], mask[: hp.crop, : hp.crop]
            targets = mask_targets(
                mask,
                pair.mask,
                mask_type=hp.mask_type,
                num_classes=hp.num_classes,
                value_map=hp.value_map,
                unlabelled=hp.unlabelled,
                w0=hp.w0,
                sigma=hp.sigma,
                border_size=hp.border_size,
                cache_dir=hp.cache_dir,
            )
            raw_images.append(image)
            images.append(standardize(image))
            classes.append(targets.classes)
            weights.append(targets.weights)
            instances.append(targets.instances)
            unlabelled += targets.unlabelled
        check_channels(raw_images, pairs, hp.in_channels)
        split = Split(
            ids=[p.id for p in pairs],
            images=images,
            classes=classes,
            weights=weights,
            instances=instances if hp.mask_type == "instance" else None,
            names=[str(p.image) for p in pairs],
        )
        return split, {"dtypes": dtypes, "channels": hp.in_channels, "unlabelled": unlabelled}

    def read_splits(self) -> dict[str, Split]:
        hp = self.hparams
        sets = self.pair_sets()
        splits, lines = {}, []
        for name, pairs in sets.items():
            splits[name], raw = self.read_set(pairs)
            lines.append(describe_split(name, pairs, splits[name], raw, hp.num_classes))
        require_every_class(splits["train"], sets["train"], hp.num_classes)
        self.pixel_size = read_pixel_size(sets["train"][0].image)  # the first image's
        if hp.summary and is_rank_zero():
            kind = f"{hp.mask_type} masks, {hp.num_classes} classes"
            print(f"folder data set {hp.data_dir} ({kind}):", *lines, sep="\n")
        return splits


def require_every_class(split: Split, pairs: list[Pair], num_classes: int) -> None:
    """Refuse training masks in which a class never appears (labelled pixels only): the
    network could never learn it, and its class-balance weight would be undefined."""
    hist = class_histogram(split, num_classes)
    missing = [k for k in range(num_classes) if hist[k] == 0]
    if missing:
        folder = pairs[0].mask.parent
        raise DataError(
            f"{folder}: class {missing[0]} never appears in the {len(pairs)} training masks "
            f"(labelled pixels per class: {hist.tolist()}); expected every class 0.."
            f"{num_classes - 1} in at least one training mask: check data.num_classes and "
            "data.value_map"
        )
