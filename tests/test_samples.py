import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unet.data.samples import EpochIndexSampler, RandomTileDataset, flip_rotate, standardize
from unet.mirror import crop_with_mirror


def dataset(tile=48, augment=True, seed=0, n=6):
    rng = np.random.default_rng(1)
    images = [standardize(rng.random((30, 40))) for _ in range(2)]
    classes = [(rng.random((30, 40)) > 0.5).astype(np.uint8) for _ in range(2)]
    weights = [rng.random((30, 40)).astype(np.float32) for _ in range(2)]
    return RandomTileDataset(
        images, classes, weights, tile_size=tile, samples_per_epoch=n, augment=augment, seed=seed
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
    rng = np.random.default_rng(0)
    a = rng.random((8, 8))
    outs = [flip_rotate([a, a * 2, a * 3], np.random.default_rng(seed)) for seed in range(20)]
    variants = {o[0].tobytes() for o in outs}
    assert len(variants) > 4  # several of the 8 flips/rotations occur
    for o in outs:
        np.testing.assert_array_equal(o[1], o[0] * 2)
        np.testing.assert_array_equal(o[2], o[0] * 3)


def test_randomness_keyed_by_seed_epoch_and_index_not_by_workers():
    ds = dataset(n=4)

    def epoch_batches(workers, epoch):
        sampler = EpochIndexSampler(len(ds))
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)
        return torch.cat([b["image"] for b in loader])

    zero = epoch_batches(0, 0)
    torch.testing.assert_close(epoch_batches(2, 0), zero)
    assert not torch.equal(epoch_batches(0, 1), zero)  # a new epoch draws new tiles
    assert not torch.equal(torch.cat([dataset(n=4, seed=1)[i]["image"] for i in range(4)]), zero)


def test_standardize():
    x = standardize(np.array([[0, 255], [255, 0]], np.uint8))
    assert x.dtype == np.float32 and x.mean() == pytest.approx(0) and x.std() == pytest.approx(1)
    assert (standardize(np.full((3, 3), 7)) == 0).all()
