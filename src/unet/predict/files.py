"""Predict files: a 2D image, a multi-page TIFF stack or a folder of frames.

Data flow: files -> gray frames -> ``unet.inference.image.predict_image`` (standardisation as in
training, tiler, test-time augmentation) -> cell probabilities -> ``unet.inference.postprocess``
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
- ``measurements.csv`` and ``rois/`` (with ``measurements``/``rois``): ``unet.predict.objects``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import nn

from unet.data.frames import FrameSource
from unet.inference.engines import engine_network
from unet.inference.image import autocast_dtype, predict_image, require_finite_output
from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import Tiler
from unet.inference.tta import count_tiles
from unet.io.output_safety import (
    check_apart,
    check_free_space,
    output_lock,
    write_faults,
)
from unet.io.pixel_size import PIXELS, PixelSize, input_pixel_size, warn_mismatch
from unet.io.progress import progress_bar
from unet.predict.objects import ObjectOutputs
from unet.predict.output_folder import (
    check_frame,
    frame_pixels,
    frames_summary,
    prepare_output,
    probability_stack,
    report_frames,
    stage_output,
    write_contact_sheet,
    write_frame,
)
from unet.predict.request import PredictRequest
from unet.predict.setup import check_network, resolve_device, set_up_frames


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
    """Predict every frame of ``source`` (a 2D image, a multi-page TIFF stack or a folder of
    frames) into the folder ``output`` (module doc); returns a summary (frame count, sizes,
    TIFF series, seconds, megapixels/s).

    ``tiler``, ``tta``, ``precision``: as in :func:`unet.inference.image.predict_image`;
    ``device``: ``auto``, ``cpu`` or ``cuda``; ``engine``: what runs the network on the
    tiles (:mod:`unet.inference.engines`); ``postprocess``: cell probability -> instance labels
    (default: plain components) of ``instance_class`` (None: the cell class, or the
    foreground of a K-class network); ``labels``, ``challenge_naming``, ``overlays``,
    ``measurements``, ``rois``: what to write besides the probabilities; ``overwrite``:
    replace an existing output folder (once complete); ``checkpoint``: the file ``net``
    came from, named when probabilities are not finite; ``pixel_size``: of the input
    (None: the one it says, ``unet.io.pixel_size.read_pixel_size``).
    """
    net = check_network(net, instance_class).to(resolve_device(device)).eval()
    num_classes, channels = net.config.num_classes, net.config.in_channels
    source = source if isinstance(source, FrameSource) else FrameSource(source, channels)
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    net = checked_engine(net, source, tiler, tta, precision, engine)
    pixel_size = pixel_size or input_pixel_size(source.path)
    check_apart(output, input=source.path)
    check_free_space(output, 4 * frame_pixels(source, num_classes), "probabilities.tif")
    what = {"labels": labels, "overlays": overlays}
    with output_lock(output), write_faults(output):
        staged, stack = open_outputs(output, overwrite, what, source, num_classes, pixel_size)
        per_object = ObjectOutputs(staged.path, measurements, rois, pixel_size or PIXELS)
        what |= {"instance_class": instance_class, "challenge_naming": challenge_naming}
        what |= {"on_objects": per_object if per_object.wanted else None}
        outputs, settings = (staged, stack, per_object), (tiler, tta, precision, checkpoint)
        return write_frames(
            net, source, outputs, settings, postprocess, progress, **what, pixel_size=pixel_size
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
    ``request`` (:func:`unet.predict.setup.set_up_frames`) through :func:`predict_files`."""
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
            frame_probabilities(net, source, tiler, tta, precision, bar, checkpoint)
        ):
            page, small = write_frame(staged.path, index, name, frame, prob, postprocess, **what)
            stack.write(page)
            if small is not None:
                thumbnails.append((name, small))
        write_contact_sheet(staged.path, thumbnails)
    seconds = time.perf_counter() - start
    return frames_summary(source, staged.final, stack, net.config.num_classes, seconds)


def frame_probabilities(
    net: nn.Module,
    source: FrameSource,
    tiler: Tiler,
    tta: str,
    precision,
    bar,
    checkpoint: str | Path | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frame, class probabilities (K, H, W)) for each frame, advancing ``bar``
    (:func:`unet.io.progress.progress_bar`); a NonFiniteOutputError naming ``checkpoint`` for
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
