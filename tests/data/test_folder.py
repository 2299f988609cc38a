"""data=folder: pairs by name, semantic / instance / sparse masks, K classes and RGB, checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet.data.ctc import CellTrackingDataModule
from unet.data.folder import FolderDataModule, evenly_spaced
from unet.data.readers import DataError
from unet.data.weight_maps import cached_binary_weight_map, cached_class_weight_map
from unet.training.task import train

HELA_FRAMES = ("01/002", "01/021", "01/054", "02/006", "02/038")


def hela_folder(data_dir: Path, root: Path, frames=HELA_FRAMES) -> Path:
    """HeLa frames and their SEG instance masks laid out as images/ and masks/."""
    src = data_dir / "DIC-C2DH-HeLa"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for frame in frames:
        seq, number = frame.split("/")
        shutil.copy(src / seq / f"t{number}.tif", root / "images" / f"{seq}_{number}.tif")
        seg = src / f"{seq}_GT" / "SEG" / f"man_seg{number}.tif"
        shutil.copy(seg, root / "masks" / f"{seq}_{number}.tif")
    return root


def module(root: Path, **kwargs) -> FolderDataModule:
    settings = {"tile_size": 124, "num_workers": 0, "summary": False} | kwargs
    return FolderDataModule(str(root), **settings)


def test_instance_masks_give_the_cell_data_sets_borders_and_weights(data_dir, tmp_path):
    """The same HeLa frames through data=folder and data=hela: equal targets and weights."""
    root = hela_folder(data_dir, tmp_path / "hela")
    folder = module(root, mask_type="instance", val=["01_054", "02_038"], crop=160)
    folder.setup()
    ctc = CellTrackingDataModule(
        str(data_dir), "DIC-C2DH-HeLa", val_frames=["01/054", "02/038"], crop=160,
        unannotated_margin=None, tile_size=124,
    )  # fmt: skip
    ctc.setup()
    for split in ("train", "val"):
        ctc_ids = [i.replace("/", "_") for i in ctc.frame_ids[split]]
        for k, frame in enumerate(folder.frame_ids[split]):
            j = ctc_ids.index(frame)
            mine, theirs = folder.whole_sets[split], ctc.whole_sets[split]
            np.testing.assert_array_equal(mine.classes[k], theirs.classes[j])
            # equal to float32 rounding (a few pixels differ in the last bit between runs)
            np.testing.assert_allclose(mine.weights[k], theirs.weights[j], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(mine.images[k], theirs.images[j])
            np.testing.assert_array_equal(folder.instances[split][k], ctc.instances[split][j])


def test_semantic_two_class_weights_are_the_binary_maps():
    classes = np.zeros((60, 70), np.uint8)
    classes[5:20, 5:30] = classes[22:50, 10:25] = classes[30:55, 27:60] = 1  # touching cells
    np.testing.assert_allclose(
        cached_class_weight_map(classes, 2), cached_binary_weight_map(classes), rtol=0, atol=0
    )


def test_value_map_and_unlabelled_pixels(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for k in range(3):
        image = rng.integers(0, 65535, (64, 64), dtype=np.uint16)  # 16-bit
        mask = np.where(rng.random((64, 64)) > 0.5, 255, 0).astype(np.uint8)
        mask[:8] = 7  # not annotated
        tifffile.imwrite(tmp_path / "images" / f"a{k}.tif", image)
        Image.fromarray(mask).save(tmp_path / "masks" / f"a{k}_mask.png")
    dm = module(
        tmp_path, value_map={0: 0, 255: 1}, unlabelled=7, mask_suffix="_mask", val=["a1"],
        summary=True,
    )  # fmt: skip
    dm.setup()
    weights, classes = dm.whole_sets["train"].weights[0], dm.whole_sets["train"].classes[0]
    assert (weights[:8] == 0).all() and (weights[8:] > 0).all()
    assert set(np.unique(classes[8:])) == {0, 1}
    out = capsys.readouterr().out
    assert "train: 2 pairs" in out and "uint16" in out and "unlabelled 12.5%" in out


def test_validation_fraction_spreads_over_the_names():
    assert evenly_spaced(10, 0.2) == [2, 7]
    assert evenly_spaced(3, 0.1) == [1]


def test_rgb_three_classes_train_and_validate_per_class(compose_train, synthetic_rgb, tmp_path):
    root = synthetic_rgb(tmp_path / "rgb")
    overrides = [
        "data=folder",
        f"data.data_dir={root}",
        "data.num_classes=3",
        "data.in_channels=3",
        "data.val=[im2]",
        "data.tile_size=124",
        "data.num_workers=0",
        "data.summary=false",
        "model.net.base_channels=4",
        "model.net.depth=3",
        "debug=fast_dev_run",
        "validate=true",
        "choose_postprocess=false",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_train(overrides, tmp_path / "run")
    assert cfg.model.net.in_channels == 3 and cfg.model.net.num_classes == 3
    metrics = train(cfg)
    for k in range(3):
        assert 0.0 <= metrics[f"val/iou_class{k}"] <= 1.0
        assert 0.0 <= metrics[f"val/dice_class{k}"] <= 1.0
    assert metrics["val/mean_iou"] == pytest.approx(
        np.mean([metrics[f"val/iou_class{k}"] for k in range(3)])
    )
    assert np.isfinite(metrics["val/loss"])


def test_hela_instance_folder_trains_and_scores_seg(data_dir, compose_train, tmp_path):
    root = hela_folder(data_dir, tmp_path / "hela", frames=("02/006", "02/038"))  # cells top left
    overrides = [
        "data=folder",
        f"data.data_dir={root}",
        "data.mask_type=instance",
        "data.val=[02_038]",
        "data.crop=128",
        "data.tile_size=124",
        "data.num_workers=0",
        "model.net.base_channels=4",
        "model.net.depth=3",
        "debug=fast_dev_run",
        "validate=true",
        "choose_postprocess=false",
        "trainer.enable_progress_bar=false",
    ]
    metrics = train(compose_train(overrides, tmp_path / "run"))
    assert 0.0 <= metrics["val/seg"] <= 1.0 and 0.0 <= metrics["val/iou"] <= 1.0
    assert "val/iou_class0" not in metrics  # two classes: the paper data sets' metrics


def _write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if image is not None:
        tifffile.imwrite(root / "images" / f"{stem}.tif", image)
    if mask is not None:
        tifffile.imwrite(root / "masks" / f"{stem}.tif", mask)


def _gray(shape=(32, 32), seed=0):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _mask(shape=(32, 32)):
    mask = np.zeros(shape, np.uint8)
    mask[4:12, 4:12] = 1
    return mask


BAD_INPUTS = {
    "image without mask": (lambda r: _write_pair(r, "b", _gray(), None), r"b\.tif: no mask"),
    "mask without image": (lambda r: _write_pair(r, "b", None, _mask()), r"b\.tif: no image"),
    "size mismatch": (
        lambda r: _write_pair(r, "b", _gray((32, 40)), _mask()),
        r"b\.tif: mask size 32x32 differs from its image b\.tif \(32x40\)",
    ),
    "values outside the classes": (
        lambda r: _write_pair(r, "b", _gray(), _mask() * 255),
        r"b\.tif: mask values 255 are outside the declared classes.*value_map",
    ),
    "a class never in training": (
        lambda r: [_write_pair(r, s, _gray(), np.zeros((32, 32), np.uint8)) for s in "ab"],
        r"class 1 never appears in the 2 training masks",
    ),
    "channels disagree": (
        lambda r: _write_pair(r, "b", np.stack([_gray(seed=s) for s in range(3)]), _mask()),
        r"b\.tif: 3 channel\(s\), but a\.tif has 1",
    ),
    "empty folder": (
        lambda r: [p.unlink() for p in (r / "images").iterdir()],
        r"images: empty images folder",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line(case, tmp_path):
    _write_pair(tmp_path, "a", _gray(), _mask())
    _write_pair(tmp_path, "c", _gray(seed=3), _mask())
    spoil, message = BAD_INPUTS[case]
    spoil(tmp_path)
    with pytest.raises(DataError, match=message) as caught:
        module(tmp_path, val=["c"]).setup()
    assert "\n" not in str(caught.value)
