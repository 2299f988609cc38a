import platform

import numpy as np
import pytest
import torch
from scipy import ndimage

from unet.data.augment.paper import Augmentation
from unet.data.mirror import crop_with_mirror
from unet.data.samples import (
    EpochIndexSampler,
    RandomTileDataset,
    keep_freed_memory,
    standardize,
    training_dataloader,
)


def dataset(tile=48, augment=True, seed=0, n=6):
    rng = np.random.default_rng(1)
    images = [standardize(rng.random((30, 40))) for _ in range(2)]
    classes = [(rng.random((30, 40)) > 0.5).astype(np.uint8) for _ in range(2)]
    weights = [rng.random((30, 40)).astype(np.float32) for _ in range(2)]
    augmentation = Augmentation(brightness=0.1, contrast=0.1, gamma=0.1) if augment else None
    return RandomTileDataset(
        images, classes, weights, tile, samples_per_epoch=n, augmentation=augmentation, seed=seed
    )


def test_tiles_are_mirrored_windows_of_the_image():
    ds = dataset(augment=False)
    for i in range(6):
        s = ds[i]
        assert (
            s["image"].shape == (1, 48, 48)
            and s["target"].shape == (48, 48)
            and s["weight"].shape == (48, 48)
        )
        # find the source image and offset by matching against all windows of the reflected image
        found = False
        for k, img in enumerate(ds.images):
            padded = np.pad(img, 60, mode="reflect")
            for top in range(-24, 30 - 24 + 1):
                for left in range(-24, 40 - 24 + 1):
                    window = padded[60 + top : 60 + top + 48, 60 + left : 60 + left + 48]
                    if np.array_equal(window, s["image"][0].numpy()):
                        found = True
                        assert np.array_equal(
                            crop_with_mirror(ds.classes[k], top, left, 48, 48), s["target"].numpy()
                        )
                        assert np.array_equal(
                            crop_with_mirror(ds.weights[k], top, left, 48, 48), s["weight"].numpy()
                        )
        assert found


def test_augmentation_moves_image_label_and_weight_together():
    # one blocky binary map as image, classes and weights: where the linearly interpolated
    # weight is exactly 0 or 1 (inside a block), the label and the image must agree with it
    blocks = np.kron(np.random.default_rng(0).integers(0, 2, (8, 10)), np.ones((8, 8)))
    ds = RandomTileDataset(
        [blocks.astype(np.float32)],
        [blocks.astype(np.uint8)],
        [blocks.astype(np.float32)],
        tile_size=72,
        samples_per_epoch=8,
        augmentation=Augmentation(),
    )
    tiles = set()
    for i in range(8):
        s = ds[i]
        image, target, weight = s["image"][0].numpy(), s["target"].numpy(), s["weight"].numpy()
        for value in (0, 1):
            region = np.abs(weight - value) < 1e-6
            assert region.sum() > 500
            assert (target[region] == value).all()
            # the cubic's 4x4 support, rotated and deformed, lies within 3 px
            inner = ndimage.binary_erosion(region, np.ones((3, 3)), iterations=3)
            np.testing.assert_allclose(image[inner], value, atol=0.01)
        tiles.add(target.tobytes())
    assert len(tiles) == 8


def test_randomness_keyed_by_seed_epoch_and_index_not_by_workers():
    ds = dataset(n=4)

    def epoch_batches(workers, epoch, key="image"):
        loader = training_dataloader(ds, batch_size=2, num_workers=workers)
        loader.sampler.set_epoch(epoch)
        return torch.cat([b[key] for b in loader])

    zero = epoch_batches(0, 0)
    torch.testing.assert_close(epoch_batches(2, 0), zero)  # augmented tiles included
    for key in ("target", "weight"):
        torch.testing.assert_close(epoch_batches(2, 1, key), epoch_batches(0, 1, key))
    assert not torch.equal(epoch_batches(0, 1), zero)  # a new epoch draws new tiles
    assert not torch.equal(torch.cat([dataset(n=4, seed=1)[i]["image"] for i in range(4)]), zero)


def test_standardize():
    x = standardize(np.array([[0, 255], [255, 0]], np.uint8))
    assert x.dtype == np.float32 and x.mean() == pytest.approx(0) and x.std() == pytest.approx(1)
    assert (standardize(np.full((3, 3), 7)) == 0).all()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_workers_keep_freed_memory_on_glibc():
    assert keep_freed_memory()
    ds = RandomTileDataset(
        [np.zeros((8, 8), np.float32)],
        [np.zeros((8, 8), np.uint8)],
        [np.ones((8, 8), np.float32)],
        4,
        2,
    )
    loader = training_dataloader(ds, batch_size=1, num_workers=1)
    assert loader.worker_init_fn is not None


# ---------------------------------------------------------------- rank-aware sampler


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (12, 3), (5, 4)])
def test_epoch_sampler_shards_without_overlap_and_keeps_step_order(n, world):
    for epoch in (0, 3):
        shards = []
        for rank in range(world):
            sampler = EpochIndexSampler(n, rank, world)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(shards[-1]) == len(sampler) == n // world
        flat = [i for shard in shards for i in shard]
        assert len(set(flat)) == len(flat)  # no tile twice
        assert all(epoch * n <= i < (epoch + 1) * n for i in flat)
        # step k of W ranks with batch B covers what one process's step k covers with W * B
        for step in range(n // world):
            assert sorted(shard[step] for shard in shards) == list(
                range(epoch * n + world * step, epoch * n + world * (step + 1))
            )


def test_epoch_sampler_rejects_bad_shares():
    with pytest.raises(ValueError, match="rank"):
        EpochIndexSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        EpochIndexSampler(1, rank=0, world_size=2)
