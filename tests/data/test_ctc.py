"""Cell Tracking Challenge DataModules: layout, partial annotation, split, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet.data.augment.paper import Augmentation
from unet.data.ctc import (
    CellTrackingDataModule,
    read_annotated_frames,
    split_frames,
    unannotated_markers,
    unannotated_regions,
)
from unet.data.readers import DataError, DataNotFoundError

SHAPE = (48, 70)  # not square, not a multiple of 16


def synthetic_frame(unannotated: bool):
    """Two annotated cells (touching) and, optionally, a third cell that only has a marker."""
    image = np.full(SHAPE, 40, np.uint8)
    seg = np.zeros(SHAPE, np.uint16)
    tra = np.zeros(SHAPE, np.uint16)
    seg[10:30, 5:20], seg[10:30, 20:35] = 1, 2
    tra[18:22, 10:14], tra[18:22, 26:30] = 5, 6  # markers: their own ids, as in the challenge
    image[10:30, 5:35] = 200
    image[15:35, 50:65] = 200  # a cell at columns 50..64 ...
    if unannotated:
        tra[23:27, 55:59] = 7  # ... that only the tracking marker knows
    else:
        seg[15:35, 50:65] = 3
        tra[23:27, 55:59] = 7
    return image, seg, tra


def write_ctc(root: Path, frames: dict[str, dict[str, tuple]], name: str = "FAKE") -> Path:
    """{sequence: {number: (image, seg, tra)}} in the challenge's layout; returns data_dir."""
    for seq, numbered in frames.items():
        for sub in (seq, f"{seq}_GT/SEG", f"{seq}_GT/TRA"):
            (root / name / sub).mkdir(parents=True, exist_ok=True)
        for number, (image, seg, tra) in numbered.items():
            if image is not None:
                tifffile.imwrite(root / name / seq / f"t{number}.tif", image, compression="lzw")
            if seg is not None:
                tifffile.imwrite(root / name / f"{seq}_GT/SEG/man_seg{number}.tif", seg)
            if tra is not None:
                tifffile.imwrite(root / name / f"{seq}_GT/TRA/man_track{number}.tif", tra)
    return root


def test_unannotated_cell_gets_zero_weight_around_its_marker():
    _, seg, tra = synthetic_frame(unannotated=True)
    assert list(np.unique(tra[unannotated_markers(seg, tra)])) == [7]
    region = unannotated_regions(seg, tra, margin=5)
    ys, xs = np.nonzero(region)
    # the marker (rows 23..26, columns 55..58) grown by 5 px, annotated cells left out
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (18, 31, 50, 63)
    assert region[tra == 7].all() and not region[seg > 0].any()
    assert not unannotated_regions(*synthetic_frame(unannotated=False)[1:], margin=5).any()


def test_marker_counts_as_annotated_when_half_of_it_lies_in_a_cell():
    seg = np.zeros((10, 10), np.uint8)
    seg[:, :5] = 1
    tra = np.zeros((10, 10), np.uint8)
    tra[0, 2:7] = 1  # 3 of 5 pixels in the cell: annotated
    tra[5, 3:8] = 2  # 2 of 5: not annotated
    assert np.array_equal(np.unique(tra[unannotated_markers(seg, tra)]), [2])


def test_datamodule_on_synthetic_partial_annotation(tmp_path):
    complete, partial = synthetic_frame(False), synthetic_frame(True)
    data = write_ctc(
        tmp_path,
        {"01": {"002": complete, "005": partial, "009": complete}, "02": {"0004": complete}},
    )
    dm = CellTrackingDataModule(
        str(data),
        "FAKE",
        tile_size=60,
        samples_per_epoch=4,
        unannotated_margin=5,
        augmentation=Augmentation(),
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    # the last completely annotated frame of each sequence validates
    assert dm.frame_ids == {"train": ["01/002", "01/005"], "val": ["01/009", "02/0004"]}
    train = dm.whole_sets["train"]
    weights, classes = train.weights[1].copy(), train.classes[1]
    region = unannotated_regions(partial[1], partial[2], 5)
    assert (weights[region] == 0).all() and (weights[~region] > 0).all()
    assert (classes[region] == 0).all()  # not a cell in the target, but no weight either
    # the touching cells are separated by background in the class map
    assert (classes[10:30, 19:21] == 0).all() and classes[10:30, 5:19].all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 60, 60) and batch["weight"].shape == (1, 60, 60)
    assert set(batch["target"].unique().tolist()) <= {0, 1}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, *SHAPE) and val["target"].shape == (1, *SHAPE)
    # a list of ids picks exactly those
    listed = CellTrackingDataModule(str(data), "FAKE", val_frames=["01/005"])
    listed.setup()
    assert listed.frame_ids["val"] == ["01/005"]


def test_split_frames_rules():
    class F:
        def __init__(self, id):
            self.id = id

    frames = [F(i) for i in ("01/001", "01/002", "01/003", "02/001", "02/002")]
    complete = [True, True, False, True, True]
    assert split_frames(frames, 1, complete) == ([0, 2, 3], [1, 4])
    assert split_frames(frames, 2, complete) == ([2], [0, 1, 3, 4])
    with pytest.raises(DataError, match=r"val_frames=0: expected at least 1 validation frame"):
        split_frames(frames, 0, complete)  # the best checkpoint is chosen on validation frames
    assert split_frames(frames, ["02/001"], complete) == ([0, 1, 2, 4], [3])
    with pytest.raises(DataError, match=r"\['01/099'\] are not annotated frames"):
        split_frames(frames, ["01/099"], complete)
    with pytest.raises(DataError, match="leaves no training frames"):
        split_frames(frames, [f.id for f in frames], complete)
    with pytest.raises(DataError, match="no completely annotated frame"):
        split_frames(frames, 1, [False] * 5)


def bad(tmp_path, **changes) -> Path:
    image, seg, tra = synthetic_frame(False)
    frame = [image, seg, tra]
    for k, v in changes.items():
        frame[["image", "seg", "tra"].index(k)] = v
    return write_ctc(tmp_path, {"01": {"003": tuple(frame)}})


def test_seg_shape_differs_from_frame(tmp_path):
    data = bad(tmp_path, seg=np.zeros((48, 69), np.uint16))
    with pytest.raises(
        DataError, match=r"man_seg003.tif: label image shape \(48, 69\) does not match .*\(48, 70\)"
    ):
        read_annotated_frames(data, "FAKE", ["01"])


def test_seg_without_its_frame(tmp_path):
    data = bad(tmp_path, image=None)
    with pytest.raises(
        DataNotFoundError, match=r"man_seg003.tif: its frame .*01/t003.tif does not"
    ):
        read_annotated_frames(data, "FAKE", ["01"])


def test_label_image_that_is_not_integer(tmp_path):
    data = bad(tmp_path, seg=np.zeros(SHAPE, np.float32))
    with pytest.raises(
        DataError, match=r"man_seg003.tif: expected an integer label image.*float32"
    ):
        read_annotated_frames(data, "FAKE", ["01"])


def test_folder_not_in_the_challenge_layout(tmp_path):
    folder = tmp_path / "FAKE"
    (folder / "01").mkdir(parents=True)
    (folder / "images").mkdir()
    with pytest.raises(
        DataError, match=r"FAKE: not in the Cell Tracking Challenge layout: .*01_GT/SEG does not"
    ):
        read_annotated_frames(tmp_path, "FAKE", ["01"])
    with pytest.raises(DataNotFoundError, match="NOPE does not exist. Put the Cell Tracking"):
        read_annotated_frames(tmp_path, "NOPE", ["01"])


def test_missing_tracking_markers(tmp_path):
    data = bad(tmp_path, tra=None)
    with pytest.raises(DataNotFoundError, match=r"man_track003.tif: .*unannotated_margin=null"):
        read_annotated_frames(data, "FAKE", ["01"])
    (frame,) = read_annotated_frames(data, "FAKE", ["01"], markers=False)
    assert frame.id == "01/003" and frame.markers is None


@pytest.mark.parametrize(
    ("dataset", "val", "shape"),
    [("DIC-C2DH-HeLa", "01/054", (512, 512)), ("PhC-C2DH-U373", "01/112", (520, 696))],
)
def test_real_datamodules(data_dir, tmp_path, dataset, val, shape):
    dm = CellTrackingDataModule(
        str(data_dir),
        dataset,
        sequences=["01"],
        tile_size=188,
        samples_per_epoch=2,
        unannotated_margin=100,
        augmentation=Augmentation(),
        cache_dir=str(tmp_path),
    )
    dm.setup("fit")
    assert dm.frame_ids["val"] == [val]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 188, 188)
    frame = next(iter(dm.val_dataloader()))
    assert frame["image"].shape == (1, 1, *shape) and frame["weight"].min() > 0
    if dataset == "DIC-C2DH-HeLa":
        train = dm.whole_sets["train"]
        # touching cells: separation borders with high weight in the class maps
        gaps = [(c == 0) & (w > 5) for c, w in zip(train.classes, train.weights, strict=True)]
        assert sum(int(g.sum()) for g in gaps) > 100
        # 01/067 outlines 3 of its 18 cells: most of it is left out of the loss
        partial = train.weights[dm.frame_ids["train"].index("01/067")]
        assert 0.3 < (partial == 0).mean() < 0.95


def test_hela_cpu_trains_and_validates_its_best_checkpoint(data_dir, tmp_path, compose_train):
    from unet.training.task import train

    overrides = [
        "experiment=hela_cpu",
        "debug=limit",  # 3 steps, a checkpoint, then validation of the best one
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "model.net.base_channels=4",
        "model.net.depth=3",
        "data.tile_size=124",
        "data.crop=160",  # the validation crop must hold a cell, else its scores are NaN
        "data.sequences=[01]",
        "data.num_workers=0",
    ]
    metrics = train(compose_train(overrides, tmp_path, data_dir))
    assert Path(metrics["checkpoint"]).name.startswith("best-epoch")
    assert 0.0 <= metrics["val/iou"] <= 1.0 and np.isfinite(metrics["val/loss"])


def test_hyperparameters_load_from_a_checkpoint_with_weights_only(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"sequences": ["01", "02"], "val_frames": ["01/054"]})
    dm = CellTrackingDataModule("data", "FAKE", cfg.sequences, cfg.val_frames)
    torch.save(dict(dm.hparams), tmp_path / "hparams.pt")
    loaded = torch.load(tmp_path / "hparams.pt", weights_only=True)
    assert loaded["sequences"] == ["01", "02"] and loaded["val_frames"] == ["01/054"]
