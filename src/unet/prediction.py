"""Predict files: a 2D image, a multi-page TIFF stack or a folder of frames.

Data flow: files -> gray frames -> ``unet.inference.predict_image`` (standardisation as in
training, tiler, test-time augmentation) -> cell probabilities -> ``unet.postprocess``
(the settings validated at training, unless overridden) -> writers.
The output folder holds

- ``probabilities.tif``: for a two-class network, float32 probability of the cell class
  (class 1), one page per frame in input order; 1 = cell interior, 0 =
  membrane/background (the ISBI 2012 submission polarity). For K > 2 classes, all K class
  probabilities, K pages per frame (one (N, K, H, W) series; they sum to 1 per pixel);
- ``classes/`` (K > 2 only): uint8 argmax class image per frame;
- ``labels/``: uint16 instance-label images from the post-processing of the cell class
  (K > 2: of ``instance_class``, or of the foreground, any class but 0)
  (``maskNNN.tif`` with ``challenge_naming``, as the Cell Tracking Challenge expects);
- ``overlays/``: PNGs of each frame with its labels tinted, for a quick look;
- ``contact_sheet.png`` (a stack or folder of several frames, with overlays): every
  frame's overlay as a titled thumbnail in one picture;
- ``measurements.csv`` and ``rois/`` (with ``measurements``/``rois``): ``unet.objects``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from torch import nn

from unet.atomic import StagedFolder, partial_path
from unet.data.frames import IMAGE_SUFFIXES, FrameSource
from unet.data.readers import DataError
from unet.engines import engine_network
from unet.errors import OutputExistsError
from unet.inference import autocast_dtype, predict_image, require_finite_output
from unet.labels import foreground_probability
from unet.objects import ObjectOutputs
from unet.output_safety import (
    check_apart,
    check_free_space,
    check_replaceable,
    output_lock,
    write_faults,
    write_marker,
)
from unet.panels import contact_sheet, thumbnail
from unet.pixel_size import PIXELS, PixelSize, input_pixel_size, warn_mismatch
from unet.postprocess import PostProcessing
from unet.predict.model import check_network, resolve_device, set_up_frames
from unet.predict.request import PredictionSettingError, PredictRequest
from unet.progress import progress_bar
from unet.tiler import Tiler
from unet.tta import count_tiles
from unet.writers import (
    ProbabilityStackWriter,
    write_class_image,
    write_label_image,
    write_overlay,
    write_png,
)


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


def predict_files(
    net: nn.Module,
    source: FrameSource | str | Path,
    output: str | Path,
    *,
    tiler: Tiler | None = None,
    tta: str = "none",
    device: str = "auto",
    precision: str | int = 32,
    engine: str = "torch",
    postprocess: PostProcessing | None = None,
    labels: bool = True,
    instance_class: int | None = None,
    challenge_naming: bool = False,
    overlays: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    measurements: bool = False,
    rois: bool = False,
    checkpoint: str | Path | None = None,
    pixel_size: PixelSize | None = None,
) -> dict:
    """Predict every frame of ``source`` and write the results to the folder ``output``;
    returns a summary (frame count, sizes, TIFF series, seconds, megapixels/s).

    Args:
        net: the trained network (e.g. from :func:`unet.checkpoint.load_network`).
        source: a 2D image, a multi-page TIFF stack or a folder of frames.
        output: the output folder (see the module docstring for its contents).
        tiler, tta, precision: as in :func:`unet.inference.predict_image`.
        device: ``auto``, ``cpu`` or ``cuda``.
        engine: what runs the network on the tiles: ``torch``, ``onnxruntime``,
            ``openvino`` or ``auto`` (:mod:`unet.engines`).
        postprocess: cell probability -> instance labels (default: plain components).
        labels, challenge_naming, overlays: what to write besides the probabilities.
        instance_class: the class whose objects ``labels/`` holds (None: the cell class of
            a two-class network, the foreground of a K-class one).
        overwrite: replace an existing output folder (all of it, once complete).
        progress: show a progress bar over frames and tiles.
        measurements, rois: write ``measurements.csv`` and ``rois/`` (``unet.objects``).
        checkpoint: the file ``net`` came from, named when a frame's probabilities are not
            finite (:class:`unet.inference.NonFiniteOutputError`; nothing is kept then).
        pixel_size: of the input, written into the TIFFs and the table (None: the one the
            input says, ``unet.pixel_size.read_pixel_size``).
    """
    net = check_network(net, instance_class).to(resolve_device(device)).eval()
    num_classes = net.config.num_classes
    source = (
        source if isinstance(source, FrameSource) else FrameSource(source, net.config.in_channels)
    )
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    net = checked_engine(net, source, tiler, tta, precision, engine)
    pixel_size = pixel_size or input_pixel_size(source.path)
    check_apart(output, input=source.path)
    check_free_space(output, 4 * frame_pixels(source, num_classes), "probabilities.tif")
    what = {"labels": labels, "overlays": overlays}
    with output_lock(output), write_faults(output):
        staged, stack = open_outputs(output, overwrite, what, source, num_classes, pixel_size)
        per_object = ObjectOutputs(staged.path, measurements, rois, pixel_size or PIXELS)
        return write_frames(
            net,
            source,
            (staged, stack, per_object),
            (tiler, tta, precision, checkpoint),
            postprocess,
            progress,
            **what,
            instance_class=instance_class,
            challenge_naming=challenge_naming,
            on_objects=per_object if per_object.wanted else None,
            pixel_size=pixel_size,
        )


def checked_engine(net, source: FrameSource, tiler: Tiler, tta: str, precision, engine: str):
    """``net`` run by ``engine``, after checking the precision, tile size and tta on the
    first frame, before anything is written."""
    autocast_dtype(precision)
    net = engine_network(net, engine, precision)
    count_tiles(net, source.shapes[0], tiler, tta)
    return net


def open_outputs(output, overwrite: bool, what: dict, source, num_classes: int, pixel_size):
    """(the staged output folder, the writer of its ``probabilities.tif``); ``what`` says
    whether ``labels`` and ``overlays`` are written."""
    staged = stage_output(output, overwrite, what["labels"], what["overlays"], num_classes > 2)
    try:
        return staged, probability_stack(staged.path, source, num_classes, pixel_size)
    except BaseException:
        staged.abort()
        raise


def folder_route(request: PredictRequest) -> dict:
    """``src/predict.py`` with a folder output, in one process: the model and frames of
    ``request`` (:func:`unet.predict.model.set_up_frames`) through :func:`predict_files`."""
    prepare_output(request.output, request.overwrite, create=False)  # before the slow part
    setup = set_up_frames(request)
    request, write = setup.request, setup.request.write
    warn_mismatch(request.input, setup.pixel_size, setup.training_pixel_size)
    summary = predict_files(
        setup.net,
        setup.source,
        request.output,
        tiler=request.tiler.tiler(),
        tta=request.tta,
        device=request.device,
        precision=request.precision,
        engine=request.engine,
        postprocess=setup.postprocess,
        labels=write.labels,
        instance_class=write.instance_class,
        challenge_naming=write.challenge_naming,
        overlays=write.overlays,
        overwrite=request.overwrite,
        progress=request.progress,
        measurements=write.measurements,
        rois=write.rois,
        checkpoint=request.checkpoint,
        pixel_size=setup.pixel_size,
    )
    report_frames(summary, request.output)
    return summary


def write_frames(net, source, outputs, settings, postprocess, progress, **what) -> dict:
    """Predict every frame of ``source`` into the staged folder, ``probabilities.tif`` and
    the per-object outputs (``outputs`` = (staged, stack, per_object); ``settings`` = (tiler,
    tta, precision, checkpoint); ``what``: as :func:`write_frame` takes), then name the
    folder; returns the summary."""
    staged, stack, per_object = outputs
    tiler, tta, precision, checkpoint = settings
    start = time.perf_counter()
    thumbnails: list[tuple[str, np.ndarray]] = []
    with progress_bar(progress, "predict") as bar, staged, stack, per_object:
        for index, (name, frame, prob) in enumerate(
            predict_frames(net, source, tiler, tta, precision, bar, checkpoint)
        ):
            page, small = write_frame(staged.path, index, name, frame, prob, postprocess, **what)
            stack.write(page)
            if small is not None:
                thumbnails.append((name, small))
        write_contact_sheet(staged.path, thumbnails)
    seconds = time.perf_counter() - start
    return frames_summary(source, staged.final, stack, net.config.num_classes, seconds)


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


def predict_frames(
    net: nn.Module,
    source: FrameSource,
    tiler: Tiler,
    tta: str,
    precision,
    bar,
    checkpoint: str | Path | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frame, class probabilities (K, H, W)) for each frame, advancing ``bar``
    (:func:`unet.progress.progress_bar`); a NonFiniteOutputError naming ``checkpoint`` for
    probabilities that are not finite."""
    frames_task = bar.add_task("frames", total=len(source))
    tiles_task = bar.add_task("tiles", total=None)
    channels = net.config.in_channels
    for name, frame in source:
        check_frame(name, frame, channels)
        bar.reset(tiles_task, total=count_tiles(net, frame.shape, tiler, tta))
        prob = predict_image(
            net, frame, tiler, tta, precision, on_batch=lambda n: bar.advance(tiles_task, n)
        )
        require_finite_output(prob, f"frame {name}", str(checkpoint) if checkpoint else None)
        yield name, frame, prob
        bar.advance(frames_task)


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
    no half-written folder looks done (:class:`unet.atomic.StagedFolder`)."""
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
