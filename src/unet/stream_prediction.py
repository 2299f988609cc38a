"""Predict a large image, or a stack of sections, into an OME-Zarr store: streamed,
resumable and shared by ranks.

    input sections (OME-Zarr, TIFF, folder; read lazily, ``unet.zarr_io``) -> each section's
    image statistics (noted in the store) -> ``unet.streaming.predict_streaming`` over the
    chunk rows not yet written -> ``unet.prediction_store.PredictionStore`` -> chunk-wise
    labels per section (``unet.chunked_labels``, ``unet.chunked_holes``)

A rerun with the same output continues with the chunk rows that are not marked done (and
labels only the sections not yet labelled with the same post-processing); a store written
by another network, other tiling settings or other sections is refused. With ``world_size``
ranks, rank r predicts a contiguous run of the stack's whole chunk rows
(:func:`unet.streaming.rank_share`): no two ranks write one chunk. Labels are computed per
section over the whole section, once every rank has written its rows (section s by rank
s mod world size), so instances are consistent across tile, chunk and rank borders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unet.chunked_holes import fill_holes_chunks
from unet.chunked_labels import label_chunks
from unet.chunked_measurements import write_store_measurements
from unet.data.readers import DataError
from unet.engines import engine_network
from unet.inference import require_finite_output
from unet.output_safety import check_apart, output_lock, write_faults
from unet.pixel_size import PixelSize, warn_mismatch
from unet.postprocess import PostProcessing
from unet.prediction import check_network, resolve_device
from unet.prediction_store import LABELS_DONE, Plane, PredictionStore, StoreError, open_store
from unet.progress import progress_bar
from unet.stream_plan import StreamMemoryError, StreamPlan, plan_stream
from unet.streaming import image_statistics, network_hash, predict_windows, rank_share
from unet.tiler import Tiler, available_memory_bytes
from unet.zarr_io import ImageSource, open_sections, with_pixel_size

STATISTICS = "statistics.json"  # a section's note: per-channel mean and standard deviation
# peak memory of PostProcessing with regrow on a whole section, beyond its probability map:
# 33 (distance) and 38 (probability) bytes per pixel measured on 4,096 x 4,096; with margin
LABEL_BYTES_PER_PIXEL = 64
CPU = torch.device("cpu")


def chunk_local(postprocess: PostProcessing) -> bool:
    """Whether chunk-wise labels can do ``postprocess``: threshold, min_area and fill_holes
    are; ``regrow`` and ``border_min_area`` need a whole section."""
    return postprocess.regrow == "none" and postprocess.border_min_area == 0


def check_labels_settings(postprocess: PostProcessing, shape: tuple[int, int]) -> None:
    """Refuse settings that need a whole section in memory when a section does not fit
    (half the available RAM, at ``LABEL_BYTES_PER_PIXEL``)."""
    if chunk_local(postprocess):
        return
    need, free = LABEL_BYTES_PER_PIXEL * shape[0] * shape[1], available_memory_bytes(CPU)
    if need > free // 2:
        key = "regrow" if postprocess.regrow != "none" else "border_min_area"
        raise StoreError(
            f"postprocess.{key}={getattr(postprocess, key)!r} labels a whole section in memory: "
            f"a {shape[0]}x{shape[1]} section needs about {need / 2**30:.1f} GB, more than half "
            f"the {free / 2**30:.1f} GB available; set postprocess.regrow=none and "
            "postprocess.border_min_area=0 (chunk-wise labels) or labels=false"
        )


def stream_plan(net: nn.Module, tiler: Tiler, shape, chunk: int) -> StreamPlan:
    """Tiles, column windows and row groups within ``tiler``'s memory budget
    (:func:`unet.stream_plan.plan_stream`); a budget too small for them is a StoreError."""
    try:
        return plan_stream(net, tiler, tuple(shape), chunk, net.config.in_channels)
    except StreamMemoryError as err:
        raise StoreError(f"chunk={chunk}: {err}") from None


def distributed_share() -> tuple[int, int, object]:
    """(rank, world size, barrier) of an initialised torch.distributed group, else one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, None


def missing_runs(done: set[int], first: int, last: int) -> list[tuple[int, int]]:
    """Runs [a, b) of chunk-row indices in [first, last) that are not in ``done``."""
    runs: list[tuple[int, int]] = []
    for k in range(first, last):
        if k in done:
            continue
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


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
    """Predict the image or stack ``input`` into the OME-Zarr store ``output``; returns a
    summary (shape, sections, rows predicted by this rank, object count on rank 0, seconds).

    Args:
        input: one 2D image, a TIFF stack, a folder of frames or an OME-Zarr image with a z
            or t axis (``unet.zarr_io``).
        level: the input's resolution level (OME-Zarr, pyramidal TIFF).
        input_axes: ``zyx``: a TIFF's 3 or 4 colour samples are sections
            (``unet.data.readers.INPUT_AXES``).
        chunk: the store's chunk side (px); predicted bands are whole chunk rows.
        probability_dtype: ``float16``, ``float32`` or ``uint8`` (``round(255 p)``).
        engine: what runs the network on the tiles (:mod:`unet.engines`); the store's
            record names the weights, not the engine (fp32 engines agree within 1e-4).
        instance_class: for a K-class network, the class whose probability is stored and
            labelled (None: 1 - p(background)); as in ``unet.labels.foreground_probability``.
        labels: also write instance labels (``labels/cells``): chunk-wise, or per whole
            section for settings that are not chunk-local (:func:`chunk_local`).
        overwrite: start over; otherwise an existing store of this network continues.
        measurements: rank 0 writes ``measurements.csv`` into the store from its labels
            (``unet.chunked_measurements``).
        pixel_size: the input's pixel size, replacing what the input says (None: its own).
        training_pixel_size: the training data's; rank 0 warns when the input's differs
            (``unet.pixel_size.mismatch_warning``).
        rank, world_size, barrier: this process's share of the chunk rows; ``barrier()``
            waits for all ranks (before labels, and before rank 0 counts the objects).
            None: those of an initialised torch.distributed group (gloo or NCCL), else one
            process.
        on_batch: called with the number of tiles after each forward pass (tests).
        checkpoint: the file ``net`` came from, named when a band's probabilities are not
            finite: nothing of that band is written, earlier chunk rows stay done
            (:class:`unet.inference.NonFiniteOutputError`).
        Others: as in :func:`unet.prediction.predict_path`.
    """
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    if rank is None or world_size is None:
        rank, world_size, barrier = distributed_share()
    net, sections, record = checked_inputs(
        net,
        (input, output),
        (level, input_axes, pixel_size),
        chunk,
        tiler,
        device,
        precision,
        postprocess,
        labels,
        instance_class,
    )
    net = engine_network(net, engine, precision)  # after the record hashed its weights
    if rank == 0:
        warn_mismatch(str(input), PixelSize.of(sections.scale, sections.units), training_pixel_size)
    with store_guard(output, rank):
        start = time.perf_counter()
        store = shared_store(
            (output, sections, record, chunk, probability_dtype, overwrite, labels), rank, barrier
        )
        share = rank_share(len(sections), sections.shape[0], chunk, rank, world_size)
        settings = (tiler, precision, instance_class)
        predicted = predict_rows(
            net, str(input), sections, store, share, settings, progress, on_batch, checkpoint
        )
        if barrier is not None:
            barrier()
        objects = None
        if labels:
            objects = label_store(store, sections, postprocess, (rank, world_size, barrier))
            if rank == 0 and measurements:
                pixel_size = PixelSize.of(sections.scale, sections.units)
                write_store_measurements(store, sections.names, pixel_size)
        return {
            "shape": tuple(store.probability.shape),
            "sections": len(sections),
            "rows_predicted": predicted,
            "objects": objects,
            "seconds": time.perf_counter() - start,
        }


@contextmanager
def store_guard(output, rank: int) -> Iterator[None]:
    """One writer per store (rank 0 holds the lock for all ranks); write faults of the
    environment as one line (:mod:`unet.output_safety`)."""
    with ExitStack() as stack:
        if rank == 0:
            stack.enter_context(output_lock(output))
        stack.enter_context(write_faults(output))
        yield


def shared_store(arguments, rank: int, barrier) -> PredictionStore:
    """The store, created (or continued) by rank 0 first and then opened by the others;
    ``arguments`` as :func:`store_with_labels` takes them."""
    output, sections, record, chunk, dtype, overwrite, labels = arguments
    store = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            store = store_with_labels(  # rank 0 creates the labels; the others find them
                output, sections, record, chunk, dtype, overwrite and rank == 0, labels
            )
        if turn == 0 and barrier is not None:
            barrier()
    return store


def predict_rows(net, input, sections, store, share, settings, progress, on_batch, checkpoint):
    """:func:`predict_share` with a progress display over chunk rows and tiles."""
    with progress_bar(progress, "predict") as bar:
        rows_task = bar.add_task("chunk rows", total=chunk_rows_to_do(store, share))
        tiles_task = bar.add_task("tiles", total=None)

        def advance(n: int) -> None:
            bar.advance(tiles_task, n)
            if on_batch is not None:
                on_batch(n)

        return predict_share(
            net,
            input,
            sections,
            store,
            share,
            settings,
            advance,
            lambda n: bar.advance(rows_task, n),
            checkpoint,
        )


def label_store(store, sections, postprocess, ranks) -> int | None:
    """Label this rank's sections (``ranks`` = (rank, world_size, barrier)); rank 0 returns
    the object count of the whole store once every rank is done, the others None."""
    rank, world_size, barrier = ranks
    for index in range(rank, len(store), world_size):
        label_section(store.plane(index), postprocess)
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    return sum(store.plane(i).note(LABELS_DONE)["objects"] for i in range(len(store)))


def chunk_rows_to_do(store: PredictionStore, share) -> int:
    """How many chunk rows of ``share`` the store does not mark as written."""
    runs = (missing_runs(store.plane(s).done_rows(), a, b) for s, a, b in share)
    return sum(b - a for section in runs for a, b in section)


def predict_share(
    net, input: str, sections, store, share, settings, on_batch, on_rows=None, checkpoint=None
) -> int:
    """Predict the chunk rows of ``share`` (:func:`unet.streaming.rank_share`) that the store
    does not mark as written; returns the number of rows predicted. ``settings``: (tiler,
    precision, instance_class); ``on_rows`` is called with the chunk rows each band wrote. A
    band of probabilities that is not all finite stops it before being written
    (``checkpoint`` names the network)."""
    tiler, precision, instance_class = settings
    height, chunk = sections.shape[0], store.chunk
    plan = stream_plan(net, tiler, sections.shape, chunk)
    predicted = 0
    for index, first, last in share:
        plane = store.plane(index)
        runs = missing_runs(plane.done_rows(), first, last)
        if not runs:
            continue
        image = sections.open(index)
        where = input if len(sections) == 1 else f"{input}, section {sections.names[index]}"
        statistics = section_statistics(plane, image, where)
        write = finite_writer(plane, where, checkpoint)

        def rows_done(y0: int, y1: int, plane=plane) -> None:
            plane.mark_rows(y0, y1)
            if on_rows is not None:
                on_rows(-(-y1 // chunk) - y0 // chunk)

        for a, b in runs:
            rows = (a * chunk, min(b * chunk, height))
            predict_windows(
                net,
                image,
                plan,
                write,
                rows_done,
                chunk_rows=chunk,
                rows=rows,
                precision=precision,
                statistics=statistics,
                instance_class=instance_class,
                on_batch=on_batch,
            )
            predicted += rows[1] - rows[0]
    return predicted


def finite_writer(plane: Plane, where: str, checkpoint: str | None):
    """``plane.write_rows`` (whole rows) or ``plane.write_block`` (a column window) after
    :func:`unet.inference.require_finite_output`."""
    width = plane.probability.shape[1]

    def write(y0: int, y1: int, x0: int, prob: np.ndarray) -> None:
        x1, rows = x0 + prob.shape[1], f"{where}, rows {y0}-{y1 - 1}"
        whole = x0 == 0 and x1 == width
        columns = "" if whole else f", columns {x0}-{x1 - 1}"
        require_finite_output(prob, rows + columns, checkpoint)
        if whole:
            plane.write_rows(y0, y1, prob)
        else:
            plane.write_block(y0, y1, x0, prob)

    return write


def create_store(
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
    postprocess: PostProcessing | None = None,
    instance_class: int | None = None,
    labels: bool = True,
    overwrite: bool = False,
    checkpoint: str | None = None,
    pixel_size: PixelSize | None = None,
    training_pixel_size: PixelSize | None = None,
    engine: str = "torch",
) -> PredictionStore:
    """What rank 0 of :func:`predict_to_zarr` does first, alone: check the settings, then
    create the store (or open the store of this prediction to continue). Arguments as in
    :func:`predict_to_zarr` (``checkpoint`` is only named in messages there;
    ``training_pixel_size`` and ``engine`` are not used: the store's record names the
    weights, not what runs them); a refusal is a UserError."""
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    _, sections, record = checked_inputs(
        net,
        (input, output),
        (level, input_axes, pixel_size),
        chunk,
        tiler,
        device,
        precision,
        postprocess,
        labels,
        instance_class,
    )
    with write_faults(output):
        return store_with_labels(
            output, sections, record, chunk, probability_dtype, overwrite, labels
        )


def store_with_labels(output, sections, record, chunk, dtype, overwrite, labels):
    """The output store (:func:`unet.prediction_store.open_store`), with its label image
    when ``labels``."""
    store = open_store(output, sections, record, chunk, dtype, overwrite)
    if labels:
        store.create_labels()
    return store


def checked_inputs(
    net, paths, reading, chunk, tiler, device, precision, postprocess, labels, instance_class
):
    """(network on its device, input sections, the store's record of this prediction), after
    checking that the output lies apart from the input (``paths`` = (input, output)), the
    network, the input (read at ``reading`` = (level, input_axes, pixel_size): the sections
    carry ``pixel_size`` where it is given, else their own), the label settings and the
    memory for a band of rows."""
    input, output = paths
    check_apart(output, input=input)
    net = check_network(net, instance_class).to(resolve_device(device)).eval()
    level, input_axes, pixel_size = reading
    sections = open_sections(input, level, net.config.in_channels, input_axes)
    if labels:
        check_labels_settings(postprocess, sections.shape)
    plan = stream_plan(net, tiler, sections.shape, chunk).tiles
    record = {
        "network_sha256": network_hash(net),
        "level": level,
        "tile": [plan.rows.in_sizes[0], plan.cols.in_sizes[0]],
        "precision": str(precision),
        "probability": stored_probability(net.config.num_classes, instance_class),
    }
    return net, with_pixel_size(sections, pixel_size), record


def stored_probability(num_classes: int, instance_class: int | None) -> str:
    """What the store's probability is (``unet.labels.foreground_probability``)."""
    if instance_class is not None:
        return f"class {instance_class}"
    return "class 1 (cells)" if num_classes == 2 else "1 - class 0 (foreground)"


def section_statistics(plane: Plane, image: ImageSource, name: str) -> tuple[list, list]:
    """The per-channel (mean, std) a section is standardised with: noted in the store by
    the first rank that needs them (two ranks sharing a section compute the same numbers).
    NaN or infinite pixels are refused (``name`` says where)."""
    noted = plane.note(STATISTICS)
    if noted is None:
        mean, std = image_statistics(image)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise DataError(
                f"{name}: NaN or infinite pixels; a .zarr output refuses them: replace them "
                "first, or use a folder output with nonfinite=median or nonfinite=zero"
            )
        noted = {"mean": mean.tolist(), "std": std.tolist()}
        plane.write_note(STATISTICS, noted)
    return noted["mean"], noted["std"]


def label_section(plane: Plane, postprocess: PostProcessing) -> None:
    """Label one section (unless it is labelled with these settings) and note it."""
    settings = json.loads(json.dumps(asdict(postprocess)))  # as the note reads back
    done = plane.note(LABELS_DONE)
    if done is not None and done["postprocess"] == settings:
        return
    count = write_labels(plane, postprocess)
    plane.write_note(LABELS_DONE, {"postprocess": settings, "objects": count})


def write_labels(plane: Plane, postprocess: PostProcessing) -> int:
    """Instance labels of a section's cell probability (``labels/cells``); returns the
    object count. Chunk-wise (:func:`chunk_local` settings: components, min_area, holes
    filled if ``postprocess.fill_holes``), else ``postprocess`` on the whole section in
    memory (checked to fit by :func:`check_labels_settings`)."""
    if not plane.complete():
        raise StoreError(f"{plane.progress}: chunk rows are missing; labels need the whole map")
    labels = plane.labels()
    if not chunk_local(postprocess):
        objects = postprocess(plane.read_probability((slice(None), slice(None))))
        labels[:, :] = objects.astype(np.uint32)
        return int(objects.max())  # ids 1..n
    count = label_chunks(
        lambda ys, xs: plane.read_probability((ys, xs)),
        labels,
        labels.chunks,
        postprocess.threshold,
        postprocess.min_area,
    )
    if postprocess.fill_holes:
        fill_holes_chunks(labels, labels.chunks, count)
    return count
