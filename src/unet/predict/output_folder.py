"""The output folder of a prediction of frames (one process or ranks; the module
docstring of :mod:`unet.predict.files` lists its files): checked before anything slow runs,
filled as ``<output>.partial`` and named when complete, one frame's files at a time."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from rich.console import Console

from unet.data.frames import IMAGE_SUFFIXES, FrameSource
from unet.data.readers import DataError
from unet.errors import OutputExistsError
from unet.inference.postprocess import PostProcessing
from unet.io.atomic import StagedFolder, partial_path
from unet.io.output_safety import check_replaceable, write_marker
from unet.io.panels import contact_sheet, thumbnail
from unet.io.pixel_size import PixelSize
from unet.io.writers import (
    ProbabilityStackWriter,
    write_class_image,
    write_label_image,
    write_overlay,
    write_png,
)
from unet.labels import foreground_probability
from unet.predict.request import PredictionSettingError


def mask_name(frame_name: str, index: int) -> str:
    """Cell Tracking Challenge name of a frame's mask: ``t013`` -> ``mask013.tif``."""
    digits = re.search(r"(\d+)$", frame_name)
    return f"mask{digits.group(1) if digits else f'{index:03d}'}.tif"


def prepare_output(output: str | Path, overwrite: bool, create: bool = True) -> Path:
    """Check the output folder: new, or existing and ``overwrite``; writable; no partial
    folder of an interrupted run beside it unless ``overwrite``. ``create`` makes it."""
    output = Path(output)
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise PredictionSettingError(
            f"output={output}: expected a folder (it will hold probabilities.tif, labels/ and "
            "overlays/), not a file name"
        )
    if output.exists():
        if not output.is_dir():
            raise OutputExistsError(f"output={output} exists and is a file; expected a folder")
        if not overwrite:
            raise OutputExistsError(
                f"output folder {output} already exists; pass overwrite=true to replace it "
                "(the whole folder), or choose a new output folder"
            )
        check_replaceable(output)  # overwrite replaces only what unet wrote
    partial = partial_path(output)
    if partial.exists() and not overwrite:
        raise OutputExistsError(
            f"{partial} holds the incomplete output of an interrupted prediction (or of one "
            "still running); pass overwrite=true to start over and replace it, or delete it"
        )
    check_replaceable(partial)
    parent = next(p for p in (output.absolute(), *output.absolute().parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PredictionSettingError(
            f"output={output}: cannot write there ({parent} is "
            f"{'not a folder' if not parent.is_dir() else 'not writable'}); choose a "
            "writable folder"
        )
    if create:
        output.mkdir(parents=True, exist_ok=True)
    return output


def probability_stack(
    folder: Path, source: FrameSource, num_classes: int, pixel_size: PixelSize | None = None
):
    """The writer of ``probabilities.tif`` (BigTIFF where the stack may pass 4 GB)."""
    pixels = frame_pixels(source, num_classes)
    big = 4 * pixels > 2**32 - 2**25
    return ProbabilityStackWriter(folder / "probabilities.tif", big, pixel_size)


def frame_pixels(source: FrameSource, num_classes: int) -> int:
    """Probability values written for ``source``: one map per frame, K for K > 2 classes."""
    return sum(h * w for h, w in source.shapes) * (1 if num_classes == 2 else num_classes)


def frames_summary(source: FrameSource, final: Path, stack, num_classes: int, seconds) -> dict:
    """Frame count, sizes, the TIFF's series, seconds and megapixels/s of a prediction."""
    return {
        "frames": len(source),
        "sizes": sorted(set(source.shapes)),
        "probabilities": str(final / "probabilities.tif"),
        "series": stack.num_series,
        "seconds": seconds,
        "megapixels_per_second": frame_pixels(source, num_classes) / 1e6 / seconds,
    }


def write_frame(
    folder: Path,
    index: int,
    name: str,
    frame: np.ndarray,
    prob: np.ndarray,
    postprocess: PostProcessing,
    *,
    labels: bool,
    overlays: bool,
    instance_class: int | None,
    challenge_naming: bool,
    on_objects=None,
    pixel_size: PixelSize | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the files of frame number ``index`` (``classes/``, ``labels/``, ``overlays/``);
    returns its page(s) of ``probabilities.tif`` (the (H, W) cell probability, or all K
    classes) and the thumbnail of its overlay (None without overlays). ``on_objects``, if
    given, is called with (name, labels, cell probability); ``pixel_size`` goes into the
    label and class images."""
    cells = foreground_probability(prob, instance_class)  # (H, W), float32
    page = cells
    if len(prob) > 2:  # all K classes, and the argmax
        page = prob
        write_class_image(folder / "classes" / f"{name}.tif", prob.argmax(axis=0), pixel_size)
    picture = None
    if labels or overlays or on_objects is not None:
        objects = postprocess(cells)
        if on_objects is not None:
            on_objects(name, objects, cells)
        label_file = mask_name(name, index) if challenge_naming else f"{name}.tif"
        picture = write_objects(
            folder, name, label_file, frame, objects, labels, overlays, pixel_size
        )
    return page, None if picture is None else thumbnail(picture)


def write_contact_sheet(folder: Path, thumbnails: list[tuple[str, np.ndarray]]) -> None:
    """``contact_sheet.png``: every frame's overlay thumbnail, titled (two frames or more)."""
    if len(thumbnails) > 1:
        names, pictures = [n for n, _ in thumbnails], [p for _, p in thumbnails]
        write_png(folder / "contact_sheet.png", contact_sheet(pictures, names))


def check_frame(name: str, frame: np.ndarray, channels: int) -> None:
    """A DataError unless ``frame`` is (H, W) for one channel or (C, H, W) for several."""
    if frame.ndim != (2 if channels == 1 else 3):
        raise DataError(
            f"{name}: expected a frame of {channels} channel(s), found shape {frame.shape}"
        )


def write_objects(
    folder: Path,
    name: str,
    label_file: str,
    frame,
    objects,
    labels: bool,
    overlays: bool,
    pixel_size: PixelSize | None = None,
) -> np.ndarray | None:
    """A frame's instance labels (``labels/<label_file>``) and overlay PNG, as asked;
    returns the overlay (None without)."""
    if labels:
        write_label_image(folder / "labels" / label_file, objects, pixel_size)
    if overlays:
        gray = frame if frame.ndim == 2 else frame.mean(axis=0)  # (C, H, W): channel mean
        return write_overlay(folder / "overlays" / f"{name}.png", gray, objects)
    return None


def stage_output(
    output: str | Path, overwrite: bool, labels: bool, overlays: bool, classes: bool = False
):
    """The output folder, filled as ``<output>.partial`` and renamed when complete, so that
    no half-written folder looks done (:class:`unet.io.atomic.StagedFolder`)."""
    try:
        staged = StagedFolder(prepare_output(output, overwrite, create=False), overwrite)
        write_marker(staged.path, "predict")  # so that overwrite=true may replace it later
    except OSError as err:
        raise PredictionSettingError(f"output={output}: cannot be written ({err})") from None
    for sub, wanted in (("labels", labels), ("overlays", overlays), ("classes", classes)):
        if wanted:
            (staged.path / sub).mkdir(exist_ok=True)
    return staged


def report_frames(summary: dict, output) -> None:
    """One line on what a folder prediction wrote (and a note on mixed frame sizes)."""
    sizes = ", ".join(f"{h}x{w}" for h, w in summary["sizes"])
    Console().print(
        f"{summary['frames']} frame(s) ({sizes}) -> {output} in {summary['seconds']:.1f} s "
        f"({summary['megapixels_per_second']:.2f} megapixels/s)"
    )
    if summary["series"] > 1:
        Console().print(
            f"note: frames of different sizes; {summary['probabilities']} holds "
            f"{summary['series']} series (read them with tifffile.TiffFile(path).series)"
        )
