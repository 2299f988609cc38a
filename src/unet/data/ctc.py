"""Cell Tracking Challenge 2D datasets (DIC-C2DH-HeLa, PhC-C2DH-U373, ...), as downloaded.

Layout of one dataset folder (``<data_dir>/DIC-C2DH-HeLa/``), per sequence ``01``, ``02``:

    01/t000.tif ...                frames (any size; U373 is 520x696)
    01_GT/SEG/man_seg002.tif ...   instance masks (0 = background) of some frames
    01_GT/TRA/man_track002.tif ... tracking markers (one blob per cell) of every frame

Training frames are the frames with a SEG mask. The SEG masks are partial in places (HeLa
01/067 outlines 3 of its 18 cells): an unannotated cell is 0 in the mask, which is not the
same as background. Such cells are found from the tracking markers: a marker with less
than half of its pixels inside SEG instances belongs to an unannotated cell. The marker
grown by ``unannotated_margin`` pixels, less the annotated cells, gets weight 0, so the
network is taught neither that this cell is background nor anything else about it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet.data.augment.paper import Augmentation
from unet.data.base import SegmentationDataModule, Split
from unet.data.readers import (
    DataError,
    DataNotFoundError,
    instance_labels,
    read_tiff,
    require_contrast,
)
from unet.data.samples import standardize
from unet.data.settings import TileSettings
from unet.data.weight_maps import cached_instance_weight_map
from unet.io.pixel_size import read_pixel_size

DOWNLOAD_HINT = (
    "Put the Cell Tracking Challenge training set (e.g. DIC-C2DH-HeLa.zip or "
    "PhC-C2DH-U373.zip from the challenge's training-datasets page, unpacked) in "
    "<data_dir>/<dataset>/, where <data_dir> is $UNET_DATA_DIR or the data.data_dir setting."
)
_SEG_NAME = re.compile(r"man_seg(\d+)\.tif$")


@dataclass
class Frame:
    """One annotated frame: ``id`` is "<sequence>/<number>", e.g. "01/067"."""

    id: str
    image: np.ndarray  # (H, W) raw gray values
    instances: np.ndarray  # (H, W) SEG instance ids, 0 = background or not annotated
    markers: np.ndarray | None  # (H, W) TRA marker ids, or None when not read


def _layout_error(folder: Path, sequence: str, missing: Path) -> DataError:
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return DataError(
        f"{folder}: not in the Cell Tracking Challenge layout: {missing} does not exist. "
        f"Expected {sequence}/tNNN.tif frames and {sequence}_GT/SEG/man_segNNN.tif masks "
        f"(and {sequence}_GT/TRA/man_trackNNN.tif markers); found {found[:12]}. {DOWNLOAD_HINT}"
    )


def annotated_frame_numbers(folder: Path, sequence: str) -> list[str]:
    """Frame numbers (as written in the file names, e.g. "067") that have a SEG mask."""
    seg = folder / f"{sequence}_GT" / "SEG"
    for needed in (folder / sequence, seg):
        if not needed.is_dir():
            raise _layout_error(folder, sequence, needed)
    numbers = sorted(m.group(1) for p in seg.iterdir() if (m := _SEG_NAME.match(p.name)))
    if not numbers:
        raise DataError(f"{seg}: no man_segNNN.tif masks found; expected at least one")
    return numbers


def read_frame(
    folder: Path, sequence: str, number: str, markers: bool = True, nonfinite: str = "refuse"
) -> Frame:
    """The frame, SEG mask and (optionally) TRA markers of one annotated frame."""
    seg_path = folder / f"{sequence}_GT" / "SEG" / f"man_seg{number}.tif"
    frame_path = folder / sequence / f"t{number}.tif"
    if not frame_path.is_file():
        raise DataNotFoundError(
            f"{seg_path}: its frame {frame_path} does not exist; every SEG mask needs the "
            "frame it outlines"
        )
    image = read_tiff(frame_path, nonfinite, "data.nonfinite")
    if image.ndim != 2:
        raise DataError(f"{frame_path}: expected a 2D gray-value frame, found shape {image.shape}")
    require_contrast(image, str(frame_path))
    instances = instance_labels(read_tiff(seg_path), seg_path, image.shape)
    tra = None
    if markers:
        tra_path = folder / f"{sequence}_GT" / "TRA" / f"man_track{number}.tif"
        if not tra_path.is_file():
            raise DataNotFoundError(
                f"{tra_path}: tracking markers not found; they tell unannotated cells from "
                "background. Add the TRA folder of the download, or set "
                "data.unannotated_margin=null to treat every unlabelled pixel as background"
            )
        tra = instance_labels(read_tiff(tra_path), tra_path, image.shape)
    return Frame(f"{sequence}/{number}", image, instances, tra)


def read_annotated_frames(
    data_dir: str | Path,
    dataset: str,
    sequences: Sequence[str],
    markers: bool = True,
    nonfinite: str = "refuse",
) -> list[Frame]:
    """Every frame with a SEG mask in the given sequences of ``<data_dir>/<dataset>``."""
    folder = Path(data_dir) / dataset
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Cell Tracking Challenge data folder not found: {folder.resolve()} does not "
            f"exist. {DOWNLOAD_HINT}"
        )
    frames = [
        read_frame(folder, seq, number, markers, nonfinite)
        for seq in sequences
        for number in annotated_frame_numbers(folder, seq)
    ]
    if not any(f.instances.any() for f in frames):
        raise DataError(
            f"{folder}: no SEG mask of sequences {list(sequences)} outlines a single cell (all "
            "are 0); expected instance masks with cell ids > 0"
        )
    return frames


def unannotated_markers(instances: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """(H, W) bool: the TRA markers with less than half of their pixels in SEG instances."""
    ids = markers.ravel()
    inside = np.bincount(ids, weights=(instances.ravel() > 0), minlength=ids.max() + 1)
    size = np.bincount(ids, minlength=ids.max() + 1)
    unmatched = (size > 0) & (inside < 0.5 * size)
    unmatched[0] = False
    return unmatched[markers]


def unannotated_regions(instances: np.ndarray, markers: np.ndarray, margin: float) -> np.ndarray:
    """(H, W) bool: pixels within ``margin`` px of an unannotated cell's marker, not in a cell.

    These pixels may belong to a cell that the SEG mask leaves out; annotated cells stay in.
    """
    seeds = unannotated_markers(instances, markers)
    if not seeds.any():
        return np.zeros(instances.shape, bool)
    near = ndimage.distance_transform_edt(~seeds) <= margin
    return near & (instances == 0)


def split_frames(
    frames: list[Frame], val_frames: int | list[str], complete: list[bool]
) -> tuple[list[int], list[int]]:
    """Training and validation frame indices.

    ``val_frames`` is a list of ids ("01/054") or a count n: the last n completely annotated
    frames (every marker matched) of each sequence, a block at the end of the sequence like
    the ISBI split, and without unannotated cells that the metrics would count.
    """
    ids = [f.id for f in frames]
    if isinstance(val_frames, int):
        if val_frames < 1:
            raise DataError(
                f"data.val_frames={val_frames}: expected at least 1 validation frame per "
                "sequence (the best checkpoint is chosen on them), or a list of ids like "
                "['01/054']"
            )
        val = []
        for seq in dict.fromkeys(i.split("/")[0] for i in ids):
            candidates = [k for k, i in enumerate(ids) if i.startswith(seq + "/") and complete[k]]
            val += candidates[max(len(candidates) - val_frames, 0) :] if val_frames > 0 else []
        if val_frames > 0 and not val:
            raise DataError(
                f"val_frames={val_frames}: no completely annotated frame among {ids}; "
                "name the validation frames instead, e.g. val_frames=['01/054']"
            )
    else:
        if not val_frames:
            raise DataError(
                f"data.val_frames=[]: expected at least one validation frame id among {ids}"
            )
        unknown = [v for v in val_frames if v not in ids]
        if unknown:
            raise DataError(
                f"val_frames: {unknown} are not annotated frames; expected ids like "
                f"'01/054' among {ids}"
            )
        val = [ids.index(v) for v in val_frames]
    train = [k for k in range(len(frames)) if k not in val]
    if not train:
        raise DataError(f"val_frames={val_frames} leaves no training frames among {ids}")
    return train, sorted(val)


class CellTrackingDataModule(SegmentationDataModule):
    """A Cell Tracking Challenge 2D dataset: random training tiles, whole validation frames.

    Frame ids are "<sequence>/<number>" ("01/054"); ``instances`` holds the SEG masks.

    Args:
        data_dir: folder that holds the dataset folder.
        dataset: dataset folder name, e.g. ``"DIC-C2DH-HeLa"`` or ``"PhC-C2DH-U373"``.
        sequences: the sequences to use (``"01"``, ``"02"``).
        val_frames: validation frames: ids like ``"01/054"``, or a count per sequence (the
            last completely annotated frames, see :func:`split_frames`).
        unannotated_margin: growth (px) of an unannotated cell's tracking marker that gets
            weight 0; None: no tracking markers are read and unlabelled pixels are
            background.
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
        dataset: str,
        sequences: Sequence[str] = ("01", "02"),
        val_frames: int | list[str] = 1,
        unannotated_margin: float | None = 100.0,
        augmentation: Augmentation | None = None,
        **tiles: Any,
    ):
        super().__init__(TileSettings(**tiles), augmentation)
        # plain lists, not Hydra's ListConfig: checkpoints must load with weights_only=True
        sequences = [str(s) for s in sequences]
        val_frames = val_frames if isinstance(val_frames, int) else [str(v) for v in val_frames]
        self.save_hyperparameters(ignore=["augmentation"])  # an object, not a setting to log
        self.record_tiles()

    def read_splits(self) -> dict[str, Split]:
        hp = self.hparams
        margin = hp.unannotated_margin
        frames = read_annotated_frames(
            hp.data_dir,
            hp.dataset,
            hp.sequences,
            markers=margin is not None,
            nonfinite=hp.nonfinite,
        )
        # the first sequence's first frame's (a data set's frames share one microscope)
        self.pixel_size = read_pixel_size(Path(hp.data_dir) / hp.dataset / hp.sequences[0])
        images, classes, weights, complete, all_instances = [], [], [], [], []
        for f in frames:
            image, instances, markers = f.image, f.instances, f.markers
            if hp.crop:
                image, instances = image[: hp.crop, : hp.crop], instances[: hp.crop, : hp.crop]
                markers = None if markers is None else markers[: hp.crop, : hp.crop]
            ignore = None if markers is None else unannotated_regions(instances, markers, margin)
            c, w = cached_instance_weight_map(
                instances, ignore, hp.w0, hp.sigma, hp.border_size, hp.cache_dir
            )
            images.append(standardize(image))
            all_instances.append(instances)
            classes.append(c)
            weights.append(w)
            complete.append(ignore is None or not ignore.any())
        train, val = split_frames(frames, hp.val_frames, complete)
        return {
            name: Split(
                ids=[frames[k].id for k in indices],
                images=[images[k] for k in indices],
                classes=[classes[k] for k in indices],
                weights=[weights[k] for k in indices],
                instances=[all_instances[k] for k in indices],  # for the challenge's SEG
                names=[f"{hp.dataset} frame {frames[k].id}" for k in indices],
            )
            for name, indices in (("train", train), ("val", val))
        }
