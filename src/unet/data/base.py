"""What every dataset's DataModule shares: the three loaders and what evaluation reads.

A dataset module (``unet.data.isbi``, ``unet.data.ctc``) only reads its files into
:class:`Split` records, one per split; this base class turns them into random training
tiles, whole validation images, and the per-split records that evaluation uses:

- ``whole_sets[split]``: the split's whole images with class and weight maps
  (:class:`unet.data.samples.WholeImageDataset`), and ``whole_image_dataloader(split)``;
- ``frame_ids[split]``: one name per image ("20" for ISBI slice 20, "01/054" for a Cell
  Tracking Challenge frame), in the order of ``whole_sets[split]``;
- ``instances[split]``: the ground-truth instance masks (one id per cell) of a dataset that
  has them (Cell Tracking Challenge); an empty dict for one that has not (ISBI 2012).

All three are filled by ``setup()`` and hold the splits ``"train"`` and ``"val"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from unet.data.augment.paper import Augmentation
from unet.data.samples import RandomTileDataset, WholeImageDataset, training_dataloader
from unet.data.settings import TileSettings
from unet.io.pixel_size import PixelSize

SPLITS = ("train", "val")


@dataclass
class Split:
    """The images of one split, ready for training: standardised, with class and weight maps.

    ``instances`` are the ground-truth instance masks, or None for a dataset without them.
    """

    ids: list[str]
    images: list[np.ndarray]  # (H, W) float32, standardised
    classes: list[np.ndarray]  # (H, W) class indices, 1 = cell interior
    weights: list[np.ndarray]  # (H, W) float32 loss weights, 0 = not scored
    instances: list[np.ndarray] | None = None  # (H, W) instance ids, 0 = background
    names: list[str] | None = None  # for messages, e.g. "train-volume.tif slice 3"


class SegmentationDataModule(L.LightningDataModule):
    """Random training tiles and whole validation images from a dataset's splits.

    Subclasses read their files in :meth:`read_splits`, take the tile settings as keywords
    (``**tiles``, the fields of :class:`unet.data.settings.TileSettings`), call
    ``save_hyperparameters`` for their own arguments and then :meth:`record_tiles`.

    Args:
        tiles: the training tiles, the loader and the weight maps.
        augmentation: moves each training tile's image, classes and weights together
            (:class:`unet.data.augment.paper.Augmentation`; None: plain tiles).
    """

    def __init__(self, tiles: TileSettings, augmentation: Augmentation | None = None):
        super().__init__()
        self.tiles = tiles
        self.augmentation = augmentation
        self.train_set: RandomTileDataset | None = None
        self.val_set: WholeImageDataset | None = None
        # what evaluation reads (module docstring); filled by setup()
        self.whole_sets: dict[str, WholeImageDataset] = {}
        self.frame_ids: dict[str, list[str]] = {}
        self.instances: dict[str, list[np.ndarray]] = {}
        # the training images' pixel size (None: unknown), set by read_splits; the
        # checkpoint records it (unet.io.pixel_size)
        self.pixel_size: PixelSize | None = None

    def record_tiles(self) -> None:
        """Add every tile setting to ``hparams``: the checkpoint records the data settings
        in full (``datamodule_hyper_parameters``), defaults included, as one flat dict."""
        self.hparams.update(asdict(self.tiles))

    def read_splits(self) -> dict[str, Split]:
        """The dataset's ``"train"`` and ``"val"`` splits (read, standardised, weighted)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.read_splits()
        hp = self.tiles
        train = splits["train"]
        self.train_set = RandomTileDataset(
            train.images,
            train.classes,
            train.weights,
            tile_size=hp.tile_size,
            samples_per_epoch=hp.samples_per_epoch,
            augmentation=self.augmentation,
            seed=hp.seed,
            names=train.names,
        )
        self.whole_sets = {
            name: WholeImageDataset(s.images, s.classes, s.weights) for name, s in splits.items()
        }
        self.val_set = self.whole_sets["val"]
        self.frame_ids = {name: list(s.ids) for name, s in splits.items()}
        self.instances = {
            name: s.instances for name, s in splits.items() if s.instances is not None
        }

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)
        return training_dataloader(
            self.train_set, self.tiles.batch_size, self.tiles.num_workers, rank, world_size
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=0)

    def whole_image_dataloader(self, split: str) -> DataLoader:
        """Whole images of ``split`` ("train" or "val"), one per batch, for scoring."""
        check_split(split)
        return DataLoader(self.whole_sets[split], batch_size=1, num_workers=0)


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else a ValueError naming them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split
