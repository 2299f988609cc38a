"""ISBI 2012 EM segmentation challenge (Drosophila ssTEM, 512x512 slices).

Files, as in the public download: ``train-volume.tif`` and ``train-labels.tif`` (multi-page
TIFFs, any slice count, compressed or not; labels 255 = cell interior, 0 = membrane) and
``test-volume.tif`` (no labels; ``src/predict.py`` reads it like any other input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unet.data.augment.paper import Augmentation
from unet.data.base import SegmentationDataModule, Split
from unet.data.readers import (
    DataError,
    binary_labels,
    read_tiff,
    require_contrast,
    require_file,
    require_two_classes,
)
from unet.data.samples import standardize
from unet.data.settings import TileSettings
from unet.data.weight_maps import cached_binary_weight_map
from unet.io.pixel_size import read_pixel_size

DOWNLOAD_HINT = (
    "Put the ISBI 2012 files (train-volume.tif, train-labels.tif, test-volume.tif) in "
    "<data_dir>/isbi2012/, where <data_dir> is $UNET_DATA_DIR or the data.data_dir setting. "
    "Download them from the ISBI 2012 challenge site (Arganda-Carreras et al. 2015)."
)


def as_stack(array: np.ndarray, path: Path) -> np.ndarray:
    """A (N, H, W) stack from a single image (H, W) or a multi-page TIFF."""
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(
            f"{path}: expected a gray-value stack (slices, height, width), "
            f"found shape {array.shape}"
        )
    return array


def read_isbi_training(
    data_dir: str | Path, nonfinite: str = "refuse"
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) raw slices and (N, H, W) class maps (1 = cell interior, 0 = membrane);
    ``nonfinite``: what to do with NaN or infinite pixels (``unet.data.readers``)."""
    folder = Path(data_dir) / "isbi2012"
    if not folder.is_dir():
        raise DataError(
            f"ISBI 2012 data folder not found: {folder.resolve()} does not exist. {DOWNLOAD_HINT}"
        )
    volume_path = require_file(folder / "train-volume.tif", "ISBI training volume", DOWNLOAD_HINT)
    labels_path = require_file(folder / "train-labels.tif", "ISBI training labels", DOWNLOAD_HINT)
    volume = as_stack(read_tiff(volume_path, nonfinite, "data.nonfinite"), volume_path)
    labels = as_stack(read_tiff(labels_path), labels_path)
    if volume.shape != labels.shape:
        raise DataError(
            f"{labels_path}: label stack shape {labels.shape} does not match the volume "
            f"{volume_path.name} shape {volume.shape}; expected one label slice per image slice"
        )
    classes = require_two_classes(binary_labels(labels, labels_path), labels_path)
    for k, image in enumerate(volume):
        require_contrast(image, f"{volume_path} slice {k}")
    return volume, classes


def split_slices(num_slices: int, val_slices: int | list[int]) -> tuple[list[int], list[int]]:
    """Training and validation slice indices; an int n means the last n slices (a contiguous
    block: neighbouring slices are 50 nm apart and look alike, so interleaving would leak).

    Both parts must be non-empty: the best checkpoint is chosen on the validation slices.
    """
    if isinstance(val_slices, int):
        if not 1 <= val_slices < num_slices:
            raise DataError(
                f"data.val_slices={val_slices}: expected 1 <= val_slices < {num_slices} (the "
                f"volume has {num_slices} slices; at least one must validate and one train)"
            )
        val = list(range(num_slices - val_slices, num_slices))
    else:
        val = sorted({int(i) for i in val_slices})
        bad = [i for i in val if not 0 <= i < num_slices]
        if bad or not val or len(val) >= num_slices:
            raise DataError(
                f"data.val_slices={list(val_slices)}: expected slice indices in "
                f"[0, {num_slices - 1}] (the volume has {num_slices} slices) that leave "
                f"training slices{f'; out of range: {bad}' if bad else ''}"
            )
    train = [i for i in range(num_slices) if i not in val]
    return train, val


class IsbiDataModule(SegmentationDataModule):
    """ISBI 2012: random training tiles and whole validation slices of ``train-volume.tif``.

    Frame ids are the slice indices ("20"); there are no instance masks (the ISBI
    metrics score the binary labels).

    Args:
        data_dir: folder that holds ``isbi2012/``.
        val_slices: number of slices at the end of the volume held out for validation, or
            a list of slice indices.
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
        val_slices: int | list[int] = 5,
        augmentation: Augmentation | None = None,
        **tiles: Any,
    ):
        super().__init__(TileSettings(**tiles), augmentation)
        # a plain list, not Hydra's ListConfig: checkpoints must load with weights_only=True
        val_slices = val_slices if isinstance(val_slices, int) else [int(i) for i in val_slices]
        self.save_hyperparameters(ignore=["augmentation"])  # an object, not a setting to log
        self.record_tiles()

    def read_splits(self) -> dict[str, Split]:
        hp = self.hparams
        volume, classes = read_isbi_training(hp.data_dir, hp.nonfinite)
        self.pixel_size = read_pixel_size(Path(hp.data_dir) / "isbi2012" / "train-volume.tif")
        if hp.crop:
            volume, classes = volume[:, : hp.crop, : hp.crop], classes[:, : hp.crop, : hp.crop]
        images = [standardize(s) for s in volume]
        weights = [cached_binary_weight_map(c, hp.w0, hp.sigma, hp.cache_dir) for c in classes]
        train, val = split_slices(len(volume), hp.val_slices)
        return {
            name: Split(
                ids=[str(i) for i in indices],
                images=[images[i] for i in indices],
                classes=[classes[i] for i in indices],
                weights=[weights[i] for i in indices],
                names=[f"train-volume.tif slice {i}" for i in indices],
            )
            for name, indices in (("train", train), ("val", val))
        }
