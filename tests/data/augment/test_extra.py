"""albumentations after the paper's augmentation, composed from config; the paper's elastic
deformation as an albumentations transform (unet.data.augment.paper_transform)."""

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import open_dict
from scipy import ndimage

from unet.data.augment.paper import Augmentation
from unet.data.augment.paper_transform import ExtraTransforms, PaperElasticTransform


def blocks(shape=(160, 176), side=16, seed=0):
    """An image, class map and weight map that are functions of one random block pattern:
    image 0/1 (then standardised), classes 0/1, weights 0.5/2."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 2, (shape[0] // side, shape[1] // side))
    classes = np.kron(pattern, np.ones((side, side), np.uint8)).astype(np.uint8)
    image = (classes.astype(np.float32) - 0.5) * 2.0  # -1 membrane, +1 cell
    weights = np.where(classes == 1, 2.0, 0.5).astype(np.float32)
    return image, classes, weights


def test_extra_list_from_config_keeps_image_classes_and_weights_aligned(tmp_path, compose_train):
    cfg = compose_train(["data/augmentation=paper_extra"], tmp_path)
    with open_dict(cfg):
        for transform in cfg.data.augmentation.extra:
            transform.p = 1.0  # every transform, every time
    augmentation = instantiate(cfg.data.augmentation)
    assert [type(t).__name__ for t in augmentation.extra.transforms] == [
        "GridDistortion",
        "GaussianBlur",
        "GaussNoise",
    ]
    paper = Augmentation(**{k: cfg.data.augmentation[k] for k in ("elastic_std", "rotation")})
    image, classes, weights = blocks()
    moved = 0
    for seed in range(8):
        # the extra step alone, on aligned maps: the weights move exactly as the classes do
        # (both nearest-neighbour), and the image with them
        crop = (slice(0, 96), slice(0, 96))
        extra = augmentation.extra(
            image[crop], classes[crop], weights[crop], np.random.default_rng(seed)
        )
        check_aligned(*extra)
        np.testing.assert_array_equal(extra[2], np.where(extra[1] == 1, 2.0, 0.5))
        moved += int((extra[1] != classes[crop]).any())
        # the whole augmentation: paper's step, then the list
        args = ((80, 88), 96, np.random.default_rng(seed))
        tile, tile_classes, tile_weights = augmentation(image, classes, weights, *args)
        assert tile.shape == tile_classes.shape == tile_weights.shape == (96, 96)
        assert tile_classes.dtype == np.uint8 and tile_weights.dtype == np.float32
        check_aligned(tile, tile_classes, tile_weights)
        # the list changed the paper's tile (same generator, hence the same paper draw)
        plain = paper(image, classes, weights, (80, 88), 96, np.random.default_rng(seed))[1]
        moved += int((plain != tile_classes).any())
    assert moved == 16


def check_aligned(image, classes, weights) -> None:
    """Away from class edges (the paper resamples weights linearly, so edges blend), the
    weight map and the image show the class map's class."""
    for k, weight, sign in ((0, 0.5, -1), (1, 2.0, 1)):
        inside = ndimage.binary_erosion(classes == k, np.ones((7, 7)))
        assert inside.sum() > 100
        np.testing.assert_array_equal(weights[inside], weight)
        assert (np.sign(image[inside] - image.mean()) == sign).mean() > 0.99


def test_an_empty_list_changes_nothing_and_imports_nothing():
    image, classes, weights = blocks()
    without = Augmentation()(image, classes, weights, (50, 60), 64, np.random.default_rng(3))
    empty = Augmentation(extra=[])
    assert empty.extra is None
    with_empty = empty(image, classes, weights, (50, 60), 64, np.random.default_rng(3))
    for a, b in zip(without, with_empty, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_transform_that_changes_the_size_is_refused():
    extra = ExtraTransforms([A.CenterCrop(32, 32, p=1.0)])
    image, classes, weights = (a[:64, :64] for a in blocks())
    with pytest.raises(ValueError, match="keep the size"):
        extra(image, classes, weights, np.random.default_rng(0))


def test_paper_elastic_transform_is_trainings_elastic_deformation():
    image, classes, weights = blocks((128, 144))
    transform = PaperElasticTransform(std=10.0, grid=3, p=1.0)
    transform.set_random_seed(7)
    params = transform.get_params_dependent_on_data({"shape": image.shape}, {})
    trainings = Augmentation(elastic_std=10.0, rotation=0.0, flip=False)
    ys, xs = trainings.source_positions(np.random.default_rng(7), (64, 72), (128, 144))
    np.testing.assert_array_equal(params["ys"], ys)
    np.testing.assert_array_equal(params["xs"], xs)
    assert np.abs(ys - np.arange(128)[:, None]).max() > 1  # it does deform

    out = A.Compose([transform], seed=11)(image=image, mask=classes, weights=weights)
    assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1}
    inside = ndimage.binary_erosion(out["mask"] == 1, np.ones((5, 5)))
    np.testing.assert_allclose(out["image"][inside], 1.0, atol=0.05)  # aligned with the mask
    assert not np.array_equal(out["mask"], classes)


def test_channels_first_images_move_with_their_maps():
    image, classes, weights = blocks((48, 48))
    rgb = np.stack([image, 2 * image, -image])  # (3, h, w)
    extra = ExtraTransforms([A.HorizontalFlip(p=1.0), A.RandomRotate90(p=1.0)])
    out, out_classes, out_weights = extra(rgb, classes, weights, np.random.default_rng(3))
    gray, gray_classes, _ = extra(image, classes, weights, np.random.default_rng(3))
    assert out.shape == rgb.shape
    np.testing.assert_array_equal(out_classes, gray_classes)  # the same draw, the same moves
    np.testing.assert_allclose(out[0], gray, atol=1e-5)
    np.testing.assert_allclose(out[1], 2 * gray, atol=1e-4)
