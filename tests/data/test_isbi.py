import numpy as np
import pytest

from unet.data.isbi import IsbiDataModule, read_isbi_training, split_slices
from unet.data.readers import DataError, DataNotFoundError


def test_reads_real_volume_any_slice_count(data_dir):
    volume, classes = read_isbi_training(data_dir)
    assert volume.shape == classes.shape and volume.shape[1:] == (512, 512)
    assert set(np.unique(classes)) == {0, 1}
    assert 0.7 < classes.mean() < 0.85  # about 78% cell interior


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_reads_compressed_and_uncompressed_stacks(fake_isbi, compression):
    volume = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    labels = np.where(volume > 100, 255, 0).astype(np.uint8)
    v, c = read_isbi_training(fake_isbi(volume, labels, compression))
    np.testing.assert_array_equal(v, volume)
    np.testing.assert_array_equal(c, labels // 255)


def test_missing_folder_says_where_data_goes(tmp_path):
    with pytest.raises(
        DataError, match=r"isbi2012 does not exist\. Put the ISBI 2012 files .* \$UNET_DATA_DIR"
    ):
        read_isbi_training(tmp_path)


def test_missing_file(fake_isbi):
    data = fake_isbi(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
    (data / "isbi2012" / "train-labels.tif").unlink()
    with pytest.raises(DataNotFoundError, match="train-labels.tif is missing"):
        read_isbi_training(data)


def test_shape_mismatch(fake_isbi):
    data = fake_isbi(np.zeros((3, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(
        DataError, match=r"train-labels.tif: label stack shape \(2, 8, 8\) does not match"
    ):
        read_isbi_training(data)


def test_unexpected_label_values(fake_isbi):
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 0, :3] = [128, 255, 7]
    data = fake_isbi(np.zeros((2, 8, 8), np.uint8), labels)
    with pytest.raises(
        DataError,
        match=r"train-labels.tif: found 4 distinct values \(0, 7, 128, 255\); expected a binary",
    ):
        read_isbi_training(data)


def test_unreadable_tiff(fake_isbi):
    data = fake_isbi(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
    (data / "isbi2012" / "train-volume.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(DataError, match="train-volume.tif: cannot be read as a TIFF image"):
        read_isbi_training(data)


def test_split_slices():
    assert split_slices(25, 5) == (list(range(20)), list(range(20, 25)))
    assert split_slices(30, [0, 1]) == (list(range(2, 30)), [0, 1])
    with pytest.raises(ValueError, match="leave training slices"):
        split_slices(3, [0, 1, 2])
    with pytest.raises(ValueError):
        split_slices(3, 3)


def test_datamodule_on_real_crops(data_dir, tmp_path):
    dm = IsbiDataModule(
        str(data_dir),
        val_slices=2,
        tile_size=188,
        samples_per_epoch=4,
        crop=128,
        cache_dir=str(tmp_path),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 188, 188) and batch["target"].shape == (1, 188, 188)
    assert set(batch["target"].unique().tolist()) <= {0, 1}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, 128, 128)
    assert len(dm.val_set) == 2 and len(dm.whole_sets["train"]) == 23
    assert len(list(tmp_path.iterdir())) == 25  # one cached weight map per slice


def test_datamodule_declares_what_evaluation_reads(data_dir):
    dm = IsbiDataModule(str(data_dir), crop=64, val_slices=[3, 20])
    assert dm.whole_sets == {} and dm.frame_ids == {} and dm.instances == {}  # until setup
    dm.setup("validate")
    assert dm.frame_ids["val"] == ["3", "20"] and len(dm.frame_ids["train"]) == 25 - 2
    for split in ("train", "val"):
        assert len(dm.whole_sets[split]) == len(dm.frame_ids[split])
        batch = next(iter(dm.whole_image_dataloader(split)))
        assert batch["image"].shape == (1, 1, 64, 64)
    assert dm.instances == {}  # binary labels only: no instance masks
    with pytest.raises(ValueError, match="split must be one of train, val"):
        dm.whole_image_dataloader("test")
