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

import copy
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from rich.console import Console
from torch import nn

from unet.atomic import StagedFolder, partial_path
from unet.data.frames import IMAGE_SUFFIXES, FrameSource
from unet.data.readers import DataError
from unet.engines import engine_network
from unet.errors import OutputExistsError, UserError
from unet.export.runner import load_for_prediction
from unet.inference import autocast_dtype, predict_image, require_finite_output
from unet.labels import foreground_probability
from unet.model_record import record_or_default, settings_for
from unet.objects import ObjectOutputs, check_object_outputs
from unet.output_safety import (
    check_apart,
    check_free_space,
    check_replaceable,
    output_lock,
    write_faults,
    write_marker,
)
from unet.panels import contact_sheet, thumbnail
from unet.pixel_size import (
    PIXELS,
    PixelSize,
    input_pixel_size,
    pixel_size_setting,
    warn_mismatch,
)
from unet.postprocess import PostProcessing, postprocessing_for
from unet.progress import progress_bar
from unet.tiler import Tiler
from unet.tta import count_tiles
from unet.validation import build, check_config
from unet.writers import (
    ProbabilityStackWriter,
    write_class_image,
    write_label_image,
    write_overlay,
    write_png,
)


class PredictionSettingError(UserError, ValueError):
    """A prediction setting that cannot work (output path, device, precision, network)."""


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


def resolve_device(device: str) -> torch.device:
    """``auto`` (a GPU if one is visible), ``cpu`` or ``cuda[:n]``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PredictionSettingError(f"device={device}, but no GPU is visible; use device=cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PredictionSettingError(f"device={device!r}: expected auto, cpu or cuda") from None


def predict_path(
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
    channels, num_classes = net.config.in_channels, net.config.num_classes
    source = source if isinstance(source, FrameSource) else FrameSource(source, channels)
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    autocast_dtype(precision)  # checks the setting before anything is written
    net = engine_network(net, engine, precision)
    count_tiles(net, source.shapes[0], tiler, tta)  # checks tile size and tta before writing
    pixel_size = pixel_size or input_pixel_size(source.path)
    check_apart(output, input=source.path)
    check_free_space(output, 4 * frame_pixels(source, num_classes), "probabilities.tif")
    with output_lock(output), write_faults(output):
        staged = stage_output(output, overwrite, labels, overlays, classes=num_classes > 2)
        try:
            stack = probability_stack(staged.path, source, num_classes, pixel_size)
        except BaseException:
            staged.abort()
            raise
        per_object = ObjectOutputs(staged.path, measurements, rois, pixel_size or PIXELS)
        return write_frames(
            net,
            source,
            (staged, stack, per_object),
            (tiler, tta, precision, checkpoint),
            postprocess,
            progress,
            labels=labels,
            overlays=overlays,
            instance_class=instance_class,
            challenge_naming=challenge_naming,
            on_objects=per_object if per_object.wanted else None,
            pixel_size=pixel_size,
        )


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


def check_network(net: nn.Module, instance_class: int | None = None) -> nn.Module:
    """``net`` if it has 2 or more classes and ``instance_class`` is one of its foreground
    classes, else a PredictionSettingError."""
    config = net.config
    if config.num_classes < 2:
        raise PredictionSettingError(
            f"the network predicts {config.num_classes} class(es); prediction needs a "
            "background and a foreground class (2 or more classes)"
        )
    if instance_class is not None and not 1 <= instance_class < config.num_classes:
        raise PredictionSettingError(
            f"instance_class={instance_class}: expected a foreground class of the network, "
            f"1..{config.num_classes - 1}"
        )
    return net


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


def predict(cfg: DictConfig) -> dict:
    """Predict ``cfg.input`` with the network of ``cfg.ckpt_path`` (a checkpoint, or a
    bioimage.io package, ONNX or TorchScript file from ``src/export.py``); results go to
    ``cfg.output``. With a ``trainer`` (``trainer=ddp``), on the ranks of a Lightning
    Trainer (:mod:`unet.distributed_prediction`)."""
    check_config(cfg)  # types and ranges of every setting, before anything is read
    measurements, rois = cfg.get("measurements", False), cfg.get("rois", False)
    check_object_outputs(
        measurements,
        rois,
        labels=cfg.labels,
        store=is_store(cfg.output),
        ranks=cfg.get("trainer") is not None,
    )
    check_apart(cfg.output, input=cfg.input, ckpt_path=cfg.ckpt_path)  # on every route
    if cfg.get("trainer") is not None:
        if cfg.get("engine", "torch") != "torch":
            raise PredictionSettingError(
                f"engine={cfg.engine} with trainer={cfg.trainer.get('strategy', 'set')}: "
                "prediction on a Trainer's ranks runs PyTorch; set engine=torch, or leave "
                "the trainer out"
            )
        # imported here: only this route needs Lightning, the inference modules do not
        from unet.distributed_prediction import predict_on_ranks

        return predict_on_ranks(cfg)
    if is_store(cfg.output):
        return predict_large(cfg)
    prepare_output(cfg.output, cfg.overwrite, create=False)  # before the slow part
    # a checkpoint or an exported model, checked (finite weights, probe) as it loads
    trained = load_for_prediction(cfg.ckpt_path, cfg.get("trust_checkpoint", False))
    cfg = with_model_record(cfg, trained)
    # the network's input channels say how to read the frames (gray, RGB, channel stacks)
    source = FrameSource(
        cfg.input,
        trained.config.in_channels,
        cfg.get("nonfinite", "refuse"),
        cfg.get("input_axes", "auto"),
    )
    postprocess = postprocessing_for(trained.postprocess, cfg.get("postprocess"))
    pixel_size = input_pixel_size(cfg.input, cfg.get("pixel_size"))
    warn_mismatch(str(cfg.input), pixel_size, trained.pixel_size)
    summary = predict_path(
        trained.net,
        source,
        cfg.output,
        tiler=build(cfg, "tiler"),
        tta=cfg.tta,
        device=cfg.device,
        precision=cfg.precision,
        engine=cfg.get("engine", "torch"),
        postprocess=postprocess,
        labels=cfg.labels,
        instance_class=cfg.get("instance_class"),
        challenge_naming=cfg.challenge_naming,
        overlays=cfg.overlays,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        measurements=measurements,
        rois=rois,
        checkpoint=cfg.ckpt_path,
        pixel_size=pixel_size,
    )
    report_frames(summary, cfg.output)
    return summary


def with_model_record(cfg: DictConfig, trained, streamed: bool = False) -> DictConfig:
    """A copy of ``cfg`` whose null ``tta``, ``precision``, ``tiler.tile_size`` and
    ``tiler.overlap`` are those the model was validated with (:mod:`unet.model_record`);
    a value given wins, with a line saying so. ``streamed`` (a .zarr output): no
    test-time augmentation, with a note where the model was validated with one."""
    record = record_or_default(trained.record, trained.path)
    tta, precision = settings_for(record, cfg.tta, cfg.precision)
    if streamed and cfg.tta is None and tta != "none":
        print(
            f"note: a .zarr output is predicted without test-time augmentation; the model "
            f"was validated with tta={tta} (its post-processing was chosen on those probabilities)"
        )
        tta = "none"
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.tta, cfg.precision = tta, precision
        if cfg.tiler.tile_size is None:
            cfg.tiler.tile_size = record.tile_size
        if cfg.tiler.overlap is None:
            cfg.tiler.overlap = record.overlap
    return cfg


def is_store(output) -> bool:
    """Whether ``output`` names an OME-Zarr store (``<name>.zarr``), not a folder."""
    return str(output).rstrip("/").endswith(".zarr")


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


def report_store(summary: dict, output) -> None:
    """One line on what a .zarr prediction wrote."""
    shape = "x".join(str(n) for n in summary["shape"])
    sections = f" ({summary['sections']} sections)" if len(summary["shape"]) == 3 else ""
    objects = f", {summary['objects']} objects" if summary.get("objects") is not None else ""
    Console().print(
        f"{shape}{sections} -> {output}: {summary['rows_predicted']} rows predicted in "
        f"{summary['seconds']:.1f} s{objects}"
    )


def store_options(cfg: DictConfig, trained) -> dict:
    """The settings of ``unet.stream_prediction`` for a .zarr output of ``trained``, after
    refusing what a streamed prediction cannot do (test-time augmentation, replacing
    non-finite pixels)."""
    check_store_tta(cfg)
    if cfg.get("nonfinite", "refuse") != "refuse":
        raise PredictionSettingError(
            f"nonfinite={cfg.nonfinite}: a .zarr output refuses NaN or infinite pixels; set "
            "nonfinite=refuse, or use a folder output"
        )
    return {
        "input": cfg.input,
        "output": cfg.output,
        "level": cfg.zarr.level,
        "input_axes": cfg.get("input_axes", "auto"),
        "chunk": cfg.zarr.chunk,
        "probability_dtype": cfg.zarr.probability_dtype,
        "tiler": build(cfg, "tiler"),
        "precision": cfg.precision,
        "engine": cfg.get("engine", "torch"),
        "postprocess": postprocessing_for(trained.postprocess, cfg.get("postprocess")),
        "labels": cfg.labels,
        "instance_class": cfg.get("instance_class"),
        "checkpoint": str(cfg.ckpt_path),
        "pixel_size": pixel_size_setting(cfg.get("pixel_size")),
        "training_pixel_size": trained.pixel_size,
    }


def check_store_tta(cfg: DictConfig) -> None:
    """A .zarr output is predicted without test-time augmentation (null: the model's
    validated one is left out, :func:`with_model_record`)."""
    if cfg.tta not in (None, "none"):
        raise PredictionSettingError(
            f"tta={cfg.tta}: a .zarr output is predicted without test-time augmentation; "
            "set tta=none"
        )


def predict_large(cfg: DictConfig) -> dict:
    """Stream one image, or a stack of sections, into the OME-Zarr store ``cfg.output``
    (README, "Large images")."""
    # imported here: zarr and ome-zarr are an optional extra (pip install .[zarr])
    from unet.stream_prediction import predict_to_zarr

    check_store_tta(cfg)  # before the checkpoint is read
    trained = load_for_prediction(cfg.ckpt_path, cfg.get("trust_checkpoint", False))
    cfg = with_model_record(cfg, trained, streamed=True)
    summary = predict_to_zarr(
        trained.net,
        **store_options(cfg, trained),
        measurements=cfg.get("measurements", False),
        device=cfg.device,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    report_store(summary, cfg.output)
    return summary
