"""Predict a large image, or a stack of sections, into an OME-Zarr store: streamed,
resumable and shared by ranks.

    input sections (OME-Zarr, TIFF, folder; read lazily, ``unet.predict.zarr.source``) -> each
    section's
    image statistics (noted in the store) -> ``unet.predict.zarr.bands.predict_streaming`` over the
    chunk rows not yet written (``unet.predict.zarr.rows``) ->
    ``unet.predict.zarr.store.PredictionStore`` -> chunk-wise labels per section
    (``unet.predict.zarr.section_labels``)

A rerun with the same output continues with the chunk rows that are not marked done (and
labels only the sections not yet labelled with the same post-processing); a store written
by another network, other tiling settings or other sections is refused. With ``world_size``
ranks, rank r predicts a contiguous run of the stack's whole chunk rows
(:func:`unet.predict.zarr.bands.rank_share`): no two ranks write one chunk. Labels are computed per
section over the whole section, once every rank has written its rows (section s by rank
s mod world size), so instances are consistent across tile, chunk and rank borders.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from unet.inference.checkpoint import TrainedModel
from unet.inference.engines import engine_network
from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import Tiler
from unet.io.output_safety import check_apart, output_lock, write_faults
from unet.io.pixel_size import PixelSize, warn_mismatch
from unet.model.fingerprint import network_hash
from unet.predict.request import PredictRequest
from unet.predict.setup import check_network, load_model, post_processing, resolve_device
from unet.predict.zarr.bands import rank_share
from unet.predict.zarr.measurements import write_store_measurements
from unet.predict.zarr.rows import stream_plan, write_rows
from unet.predict.zarr.section_labels import check_labels_settings, label_store
from unet.predict.zarr.source import open_sections, with_pixel_size
from unet.predict.zarr.store import PredictionStore, open_store


@dataclass(frozen=True)
class StoreSettings:
    """How an image or stack is predicted into an OME-Zarr store.

    Attributes:
        level: the input's resolution level (OME-Zarr, pyramidal TIFF).
        input_axes: ``zyx``: a TIFF's 3 or 4 colour samples are sections
            (``unet.data.readers.INPUT_AXES``).
        chunk: the store's chunk side (px); predicted bands are whole chunk rows.
        probability_dtype: ``float16``, ``float32`` or ``uint8`` (``round(255 p)``).
        tiler, precision: as in :func:`unet.inference.image.predict_image`.
        device: ``auto``, ``cpu`` or ``cuda``.
        engine: what runs the network on the tiles (:mod:`unet.inference.engines`); the store's
            record names the weights, not the engine (fp32 engines agree within 1e-4).
        postprocess: cell probability -> instance labels.
        instance_class: for a K-class network, the class whose probability is stored and
            labelled (None: 1 - p(background)); as in ``unet.labels.foreground_probability``.
        labels: also write instance labels (``labels/cells``): chunk-wise, or per whole
            section for settings that are not chunk-local
            (:func:`unet.predict.zarr.section_labels.chunk_local`).
        overwrite: start over; otherwise an existing store of this network continues.
        measurements: rank 0 writes ``measurements.csv`` into the store from its labels
            (``unet.predict.zarr.measurements``).
        checkpoint: the file the network came from, named when a band's probabilities are
            not finite: nothing of that band is written, earlier chunk rows stay done
            (:class:`unet.inference.image.NonFiniteOutputError`).
        pixel_size: the input's pixel size, replacing what the input says (None: its own).
        training_pixel_size: the training data's; rank 0 warns when the input's differs
            (``unet.io.pixel_size.mismatch_warning``).
    """

    level: int = 0
    input_axes: str = "auto"
    chunk: int = 1024
    probability_dtype: str = "float16"
    tiler: Tiler = field(default_factory=Tiler)
    device: str = "cpu"
    precision: str | int = 32
    engine: str = "torch"
    postprocess: PostProcessing = field(default_factory=PostProcessing)
    instance_class: int | None = None
    labels: bool = True
    overwrite: bool = False
    measurements: bool = False
    checkpoint: str | None = None
    pixel_size: PixelSize | None = None
    training_pixel_size: PixelSize | None = None


def distributed_share() -> tuple[int, int, object]:
    """(rank, world size, barrier) of an initialised torch.distributed group, else one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, None


def predict_to_zarr(
    net: nn.Module,
    input: str | Path,
    output: str | Path,
    *,
    level: int = 0,
    input_axes: str = "auto",
    chunk: int = 1024,
    probability_dtype: str = "float16",
    tiler: Tiler | None = None,
    device: str = "cpu",
    precision: str | int = 32,
    engine: str = "torch",
    postprocess: PostProcessing | None = None,
    instance_class: int | None = None,
    labels: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    measurements: bool = False,
    checkpoint: str | None = None,
    pixel_size: PixelSize | None = None,
    training_pixel_size: PixelSize | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    barrier=None,
    on_batch=None,
) -> dict:
    """Predict the image or stack ``input`` (one 2D image, a TIFF stack, a folder of frames
    or an OME-Zarr image with a z or t axis, ``unet.predict.zarr.source``) into the OME-Zarr store
    ``output``: :func:`write_store` with the :class:`StoreSettings` given as keywords."""
    settings = StoreSettings(
        level=level,
        input_axes=input_axes,
        chunk=chunk,
        probability_dtype=probability_dtype,
        tiler=tiler or Tiler(),
        device=device,
        precision=precision,
        engine=engine,
        postprocess=postprocess or PostProcessing(),
        instance_class=instance_class,
        labels=labels,
        overwrite=overwrite,
        measurements=measurements,
        checkpoint=checkpoint,
        pixel_size=pixel_size,
        training_pixel_size=training_pixel_size,
    )
    ranks = (rank, world_size, barrier)
    return write_store(net, input, output, settings, progress, ranks, on_batch)


def write_store(
    net: nn.Module,
    input: str | Path,
    output: str | Path,
    settings: StoreSettings,
    progress: bool = True,
    ranks: tuple = (None, None, None),
    on_batch=None,
) -> dict:
    """Predict ``input`` into the store ``output``; returns a summary (shape, sections,
    rows predicted by this rank, object count on rank 0, seconds).

    ``ranks`` = (rank, world_size, barrier): this process's share of the chunk rows;
    ``barrier()`` waits for all ranks (before labels, and before rank 0 counts the
    objects). None: those of an initialised torch.distributed group (gloo or NCCL), else
    one process. ``on_batch`` is called with the number of tiles after each forward pass
    (tests); ``progress`` shows a progress display over chunk rows and tiles.
    """
    rank, world_size, barrier = ranks
    if rank is None or world_size is None:
        rank, world_size, barrier = distributed_share()
    net, sections, record = checked_inputs(net, input, output, settings)
    net = engine_network(net, settings.engine, settings.precision)  # after the record's hash
    if rank == 0:
        found = PixelSize.of(sections.scale, sections.units)
        warn_mismatch(str(input), found, settings.training_pixel_size)
    with store_guard(output, rank):
        start = time.perf_counter()
        store = shared_store((output, sections, record, settings), rank, barrier)
        share = rank_share(len(sections), sections.shape[0], settings.chunk, rank, world_size)
        predicted = write_rows(
            net,
            str(input),
            sections,
            store,
            share,
            (settings.tiler, settings.precision, settings.instance_class),
            progress,
            on_batch,
            settings.checkpoint,
        )
        if barrier is not None:
            barrier()
        objects = label_and_measure(store, sections, settings, (rank, world_size, barrier))
        return {
            "shape": tuple(store.probability.shape),
            "sections": len(sections),
            "rows_predicted": predicted,
            "objects": objects,
            "seconds": time.perf_counter() - start,
        }


def label_and_measure(store, sections, settings: StoreSettings, ranks) -> int | None:
    """With ``settings.labels``, label this rank's sections (:func:`label_store`; the
    object count on rank 0) and, with ``settings.measurements``, rank 0 writes the table."""
    if not settings.labels:
        return None
    objects = label_store(store, sections, settings.postprocess, ranks)
    if ranks[0] == 0 and settings.measurements:
        pixel_size = PixelSize.of(sections.scale, sections.units)
        write_store_measurements(store, sections.names, pixel_size)
    return objects


@contextmanager
def store_guard(output, rank: int) -> Iterator[None]:
    """One writer per store (rank 0 holds the lock for all ranks); write faults of the
    environment as one line (:mod:`unet.io.output_safety`)."""
    with ExitStack() as stack:
        if rank == 0:
            stack.enter_context(output_lock(output))
        stack.enter_context(write_faults(output))
        yield


def shared_store(arguments, rank: int, barrier) -> PredictionStore:
    """The store, created (or continued) by rank 0 first and then opened by the others;
    ``arguments`` = (output, sections, record, settings)."""
    output, sections, record, settings = arguments
    store = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            # rank 0 creates the labels (and starts over if asked); the others find them
            overwrite = settings.overwrite and rank == 0
            store = store_with_labels(output, sections, record, settings, overwrite)
        if turn == 0 and barrier is not None:
            barrier()
    return store


def create_store(
    net: nn.Module, input: str | Path, output: str | Path, settings: StoreSettings
) -> PredictionStore:
    """What rank 0 of :func:`write_store` does first, alone: check the settings, then
    create the store (or open the store of this prediction to continue); a refusal is a
    UserError. (``settings.training_pixel_size`` and ``settings.engine`` are not used here:
    the store's record names the weights, not what runs them.)"""
    _, sections, record = checked_inputs(net, input, output, settings)
    with write_faults(output):
        return store_with_labels(output, sections, record, settings, settings.overwrite)


def store_with_labels(output, sections, record, settings: StoreSettings, overwrite: bool):
    """The output store (:func:`unet.predict.zarr.store.open_store`), with its label image
    when ``settings.labels``."""
    store = open_store(
        output, sections, record, settings.chunk, settings.probability_dtype, overwrite
    )
    if settings.labels:
        store.create_labels()
    return store


def checked_inputs(net, input, output, settings: StoreSettings):
    """(network on its device, input sections, the store's record of this prediction), after
    checking that the output lies apart from the input, the network, the input (read at
    ``settings.level`` and ``input_axes``: the sections carry ``settings.pixel_size`` where
    it is given, else their own), the label settings and the memory for a band of rows."""
    check_apart(output, input=input)
    net = check_network(net, settings.instance_class)
    net = net.to(resolve_device(settings.device)).eval()
    channels = net.config.in_channels
    sections = open_sections(input, settings.level, channels, settings.input_axes)
    if settings.labels:
        check_labels_settings(settings.postprocess, sections.shape)
    plan = stream_plan(net, settings.tiler, sections.shape, settings.chunk).tiles
    record = {
        "network_sha256": network_hash(net),
        "level": settings.level,
        "tile": [plan.rows.in_sizes[0], plan.cols.in_sizes[0]],
        "precision": str(settings.precision),
        "probability": stored_probability(net.config.num_classes, settings.instance_class),
    }
    return net, with_pixel_size(sections, settings.pixel_size), record


def stored_probability(num_classes: int, instance_class: int | None) -> str:
    """What the store's probability is (``unet.labels.foreground_probability``)."""
    if instance_class is not None:
        return f"class {instance_class}"
    return "class 1 (cells)" if num_classes == 2 else "1 - class 0 (foreground)"


def store_settings(request: PredictRequest, trained: TrainedModel) -> StoreSettings:
    """The :class:`StoreSettings` of ``request`` for the model ``trained`` (its record's
    settings already in ``request``, :func:`unet.predict.setup.with_model_record`)."""
    return StoreSettings(
        level=request.zarr.level,
        input_axes=request.input_axes,
        chunk=request.zarr.chunk,
        probability_dtype=request.zarr.probability_dtype,
        tiler=request.tiler.tiler(),
        device=request.device,
        precision=request.precision,
        engine=request.engine,
        postprocess=post_processing(request, trained),
        instance_class=request.write.instance_class,
        labels=request.write.labels,
        overwrite=request.overwrite,
        measurements=request.write.measurements,
        checkpoint=request.checkpoint,
        pixel_size=request.pixel_size,
        training_pixel_size=trained.pixel_size,
    )


def zarr_route(request: PredictRequest) -> dict:
    """``src/predict.py`` with a ``<name>.zarr`` output, in one process: stream one image,
    or a stack of sections, into the OME-Zarr store (docs/large-images.md)."""
    trained, request = load_model(request, streamed=True)
    settings = store_settings(request, trained)
    summary = write_store(trained.net, request.input, request.output, settings, request.progress)
    report_store(summary, request.output)
    return summary


def report_store(summary: dict, output) -> None:
    """One line on what a .zarr prediction wrote."""
    shape = "x".join(str(n) for n in summary["shape"])
    sections = f" ({summary['sections']} sections)" if len(summary["shape"]) == 3 else ""
    objects = f", {summary['objects']} objects" if summary.get("objects") is not None else ""
    Console().print(
        f"{shape}{sections} -> {output}: {summary['rows_predicted']} rows predicted in "
        f"{summary['seconds']:.1f} s{objects}"
    )
