"""Training and validation samples: (image, classes, weights) triples as tensors.

Data flow: full images (already read and weighted) -> random tiles with mirror
extrapolation and augmentation (one resampling, :mod:`unet.data.augment.paper`) -> tensors. The
network's own size needs (valid sizes, cropping targets to its output window) are handled
by the model, not here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unet.data.augment.paper import Augmentation
from unet.data.mirror import crop_with_mirror


def standardize(image: np.ndarray) -> np.ndarray:
    """Per-image zero mean, unit variance, as float32 (the same at training and prediction);
    a (C, H, W) image is standardised channel by channel."""
    image = image.astype(np.float32)
    if image.ndim == 3:
        return np.stack([standardize(channel) for channel in image])
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def channels_first(image: np.ndarray) -> torch.Tensor:
    """(C, H, W) tensor of a (H, W) gray image (C = 1) or a (C, H, W) one."""
    image = np.ascontiguousarray(image)
    return torch.from_numpy(image[None] if image.ndim == 2 else image)


class EpochIndexSampler(Sampler[int]):
    """Yields ``epoch * n + i`` for the sample indices i in 0..n-1 that are this rank's.

    A sample's randomness is keyed by (seed, epoch, i), so a run's tiles do not depend on
    the number of data-loader workers or processes. With ``world_size`` processes (DDP),
    rank r takes i = r, r + world_size, ... and every rank the same count (n //
    world_size; the remainder is left out), so that global step k of a run with W
    processes and batch size B sees the same tiles as step k of one process with batch
    size W * B. Lightning calls ``set_epoch`` at the start of every epoch (for this sampler
    too, with ``use_distributed_sampler=False``, which the trainer configs set).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        if n < world_size:
            raise ValueError(
                f"{n} samples per epoch cannot be shared by {world_size} processes; "
                "raise data.samples_per_epoch"
            )
        self.n, self.rank, self.world_size, self.epoch = n, rank, world_size, 0
        self.start = 0  # this rank's samples to leave out at the next pass (a resumed epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.n + self.rank + self.start * self.world_size
        self.start = 0  # only the first pass after a resume starts late
        return iter(
            range(first, self.epoch * self.n + len(self) * self.world_size, self.world_size)
        )


class ResumableLoader(DataLoader):
    """A training DataLoader that can continue an epoch where a checkpoint left it.

    Lightning saves ``state_dict()`` in every checkpoint (``loops.fit_loop.combined_loader``)
    and, resuming mid-epoch, calls ``load_state_dict`` before it iterates: the next pass then
    leaves out the batches the interrupted run had already trained on, so that the resumed
    run sees the uninterrupted run's tiles in its order (they are keyed by (seed, epoch,
    index), :class:`RandomTileDataset`). Its length stays the whole epoch's, as Lightning's
    step counting expects. Needs an :class:`EpochIndexSampler`.

    The iterator is made at the first ``next()``, not at ``iter()``: Lightning calls
    ``iter()`` before it sets the resumed epoch on the sampler, and loader workers take
    their first indices from the sampler as soon as the iterator exists.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = 0  # batches handed out in the current pass, counting skipped ones
        self._resume: dict | None = None

    def __iter__(self) -> Iterator:
        return self._pass()

    def _epoch(self) -> int:
        # another sampler (Lightning's for trainer.overfit_batches): no epochs, no resume
        return self.sampler.epoch if isinstance(self.sampler, EpochIndexSampler) else -1

    def _pass(self) -> Iterator:
        self.batches = 0
        if self._resume is not None and self._resume["epoch"] == self._epoch() >= 0:
            self.batches = int(self._resume["batches"])
            self.sampler.start = self.batches * self.batch_size
        self._resume = None
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches have been handed out."""
        return {"epoch": self._epoch(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Leave out ``state["batches"]`` batches when epoch ``state["epoch"]`` is next read."""
        self._resume = dict(state)


class RandomTileDataset(Dataset):
    """Random square tiles of ``tile_size`` from a set of images, mirrored beyond the borders.

    A tile's centre is uniform over the image, so every pixel is equally often inside the
    network's output window (the window is centred in the tile). Images may have any
    (H, W), larger or smaller than the tile.

    Args:
        images: list of (H, W) or (C, H, W) float32 images (standardised).
        classes: list of (H, W) integer class maps.
        weights: list of (H, W) float32 weight maps.
        tile_size: input tile side length.
        samples_per_epoch: dataset length (one epoch).
        augmentation: moves image, classes and weights together (None: plain windows).
        seed: with the epoch and the sample index, determines every random choice.
        names: a name per image for messages (e.g. "train-volume.tif slice 3"); a sample's
            ``source`` (image index, centre row, centre column) points into them.
    """

    def __init__(
        self,
        images,
        classes,
        weights,
        tile_size: int,
        samples_per_epoch: int,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        names: list[str] | None = None,
    ):
        if not (len(images) == len(classes) == len(weights)) or not images:
            raise ValueError("images, classes and weights must be non-empty lists of equal length")
        self.images, self.classes, self.weights = images, classes, weights
        self.tile_size, self.samples_per_epoch = tile_size, samples_per_epoch
        self.augmentation, self.seed = augmentation, seed
        self.names = names or [f"training image {k}" for k in range(len(images))]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(index), self.samples_per_epoch)
        rng = np.random.default_rng([self.seed, epoch, i])
        k = int(rng.integers(len(self.images)))
        h, w = self.images[k].shape[-2:]  # (H, W) or (C, H, W)
        centre = int(rng.integers(h)), int(rng.integers(w))
        arrays = self.images[k], self.classes[k], self.weights[k]
        if self.augmentation is None:
            top, left = centre[0] - self.tile_size // 2, centre[1] - self.tile_size // 2
            crops = [crop_with_mirror(a, top, left, self.tile_size, self.tile_size) for a in arrays]
        else:
            crops = self.augmentation(*arrays, centre=centre, size=self.tile_size, rng=rng)
        image, classes, weights = crops
        return {
            "image": channels_first(image),  # (C, T, T)
            "target": torch.from_numpy(classes.astype(np.int64)),  # (T, T)
            "weight": torch.from_numpy(np.ascontiguousarray(weights)),  # (T, T)
            "source": torch.tensor([k, *centre]),  # (3,): which image, where; for messages
        }


def keep_freed_memory() -> bool:
    """Let this process reuse freed tile-sized buffers instead of mapping fresh pages.

    Every training sample allocates about 20 MB of 0.3-3 MB arrays (source windows, maps,
    tiles). glibc serves such sizes with fresh ``mmap`` pages or trims them off the heap
    once freed, so each sample paid for thousands of page faults: about 8 ms of a 19 ms
    572x572 sample on this project's 2-core test machine (benchmarks/augmentation_speed.py,
    with and without ``--default-malloc``). Raising glibc's mmap and trim thresholds
    keeps the memory in the heap for the next sample. Called in every data-loader worker;
    returns False (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20))


def _init_worker(worker_id: int) -> None:
    keep_freed_memory()


def training_dataloader(
    dataset: RandomTileDataset,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
):
    """Batches of random tiles, each keyed by (seed, epoch, index) whatever the workers;
    this rank's share of them under DDP (:class:`EpochIndexSampler`)."""
    if num_workers == 0:
        keep_freed_memory()  # the samples are made in this process
    else:
        # One OpenCV thread per worker: the workers already run side by side. Set here, in
        # the parent: OpenCV's thread pool cannot be resized in a forked worker (it hangs).
        cv2.setNumThreads(1)
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochIndexSampler(len(dataset), rank, world_size),
        num_workers=num_workers,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,  # the epoch travels in the index
        drop_last=True,
    )


class WholeImageDataset(Dataset):
    """Whole images with their class and weight maps, for validation and testing."""

    def __init__(self, images, classes, weights):
        self.images, self.classes, self.weights = images, classes, weights

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {
            "image": channels_first(self.images[k]),  # (C, H, W)
            "target": torch.from_numpy(self.classes[k].astype(np.int64)),
            "weight": torch.from_numpy(self.weights[k]),
        }
