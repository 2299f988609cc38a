"""Predict one large image into an OME-Zarr store, streamed, resumable and shareable by ranks.

    input (OME-Zarr level / TIFF, read lazily) -> image statistics (stored) ->
    ``unet.streaming.predict_streaming`` over the chunk rows not yet written ->
    ``unet.zarr_io.PredictionStore`` -> chunk-wise labels (``unet.chunked_labels``,
    ``unet.chunked_holes``)

A rerun with the same output continues with the chunk rows that are not marked done; a
store written by another network (or with other tiling settings) is refused. With
``world_size`` ranks, rank r predicts a contiguous run of whole chunk rows
(:func:`unet.streaming.rank_rows`): no two ranks write one chunk. Labels are computed over
the whole store once all its chunk rows are written (by rank 0 after the others finished),
so instances are consistent across tile, chunk and rank borders.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from unet.chunked_holes import fill_holes_chunks
from unet.chunked_labels import label_chunks
from unet.postprocess import PostProcessing
from unet.prediction import check_network, progress_bar, resolve_device
from unet.streaming import image_statistics, network_hash, predict_streaming, rank_rows
from unet.tiler import Tiler
from unet.zarr_io import PredictionStore, StoreError, open_image, open_store


def check_labels_settings(postprocess: PostProcessing) -> None:
    """Chunk-wise labels do threshold, min_area and fill_holes; refuse what they cannot do."""
    local = {"regrow": "none", "border_min_area": 0}
    for key, off in local.items():
        if getattr(postprocess, key) != off:
            raise StoreError(
                f"postprocess.{key}={getattr(postprocess, key)!r}: chunk-wise labels of a zarr "
                "output support threshold, min_area and fill_holes only; set "
                f"postprocess.{key}={off} or labels=false"
            )


def check_band_memory(net: nn.Module, tiler: Tiler, shape, chunk: int) -> None:
    """Refuse a chunk height whose band of stitched logits leaves no memory for tiles."""
    plan = tiler.plan(net, shape)
    out_h = max(len(w) for w in plan.rows.weights)
    band = 4 * net.config.num_classes * (chunk + 2 * out_h) * shape[1]  # float32 logits
    budget = tiler.memory_budget(net)
    if band >= budget:
        raise StoreError(
            f"chunk={chunk}: a band of {chunk} + {2 * out_h} rows x {shape[1]} px of logits needs "
            f"{band / 2**30:.2f} GB, more than the memory budget of {budget / 2**30:.2f} GB, "
            "leaving no room for tiles; use a smaller chunk or a larger tiler.memory_gb"
        )


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
    chunk: int = 1024,
    probability_dtype: str = "float16",
    tiler: Tiler | None = None,
    device: str = "cpu",
    precision: str | int = 32,
    postprocess: PostProcessing | None = None,
    labels: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    barrier=None,
    on_batch=None,
) -> dict:
    """Predict the image ``input`` into the OME-Zarr store ``output``; returns a summary.

    Args:
        level: the input's resolution level (OME-Zarr, pyramidal TIFF).
        chunk: the store's chunk side (px); predicted bands are whole chunk rows.
        probability_dtype: ``float16`` or ``uint8`` (``round(255 p)``).
        labels: also write chunk-wise instance labels (``labels/cells``).
        overwrite: start over; otherwise an existing store of this network continues.
        rank, world_size, barrier: this process's share of the chunk rows; ``barrier()``
            waits for all ranks before rank 0 computes the labels. None: those of an
            initialised torch.distributed group (gloo or NCCL), else one process.
        on_batch: called with the number of tiles after each forward pass (tests).
        Others: as in :func:`unet.prediction.predict_path`.
    """
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    if rank is None or world_size is None:
        rank, world_size, barrier = distributed_share()
    net, source, record = checked_inputs(
        net, input, level, chunk, tiler, device, precision, postprocess, labels
    )
    start = time.perf_counter()
    # rank 0 creates the store and its statistics first; the others then open it
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            store, statistics = open_with_statistics(
                output, source, record, chunk, probability_dtype, overwrite and rank == 0, rank
            )
        if turn == 0 and barrier is not None:
            barrier()
    lo, hi = rank_rows(source.shape[0], chunk, rank, world_size)
    first, last = lo // chunk, -(-hi // chunk)  # this rank's chunk rows
    runs = missing_runs(store.done_rows(), first, last)
    with progress_bar(progress) as bar:
        task = bar.add_task("tiles", total=None)

        def advance(n: int) -> None:
            bar.advance(task, n)
            if on_batch is not None:
                on_batch(n)

        for a, b in runs:
            rows = (a * chunk, min(b * chunk, source.shape[0]))
            predict_streaming(
                net,
                source,
                store.write_rows,
                chunk_rows=chunk,
                tiler=tiler,
                precision=precision,
                rows=rows,
                statistics=tuple(statistics),
                on_batch=advance,
            )
    if barrier is not None:
        barrier()
    count = None
    if labels and rank == 0:
        count = write_labels(store, postprocess)
    return {
        "shape": source.shape,
        "rows_predicted": sum(min(b * chunk, source.shape[0]) - a * chunk for a, b in runs),
        "objects": count,
        "seconds": time.perf_counter() - start,
    }


def create_store(
    net: nn.Module,
    input: str | Path,
    output: str | Path,
    *,
    level: int = 0,
    chunk: int = 1024,
    probability_dtype: str = "float16",
    tiler: Tiler | None = None,
    device: str = "cpu",
    precision: str | int = 32,
    postprocess: PostProcessing | None = None,
    labels: bool = True,
    overwrite: bool = False,
) -> PredictionStore:
    """What rank 0 of :func:`predict_to_zarr` does first, alone: check the settings, then
    create the store with the image statistics (or open the store of this prediction to
    continue). Arguments as in :func:`predict_to_zarr`; a refusal is a UserError."""
    tiler, postprocess = tiler or Tiler(), postprocess or PostProcessing()
    _, source, record = checked_inputs(
        net, input, level, chunk, tiler, device, precision, postprocess, labels
    )
    return open_with_statistics(output, source, record, chunk, probability_dtype, overwrite, 0)[0]


def checked_inputs(net, input, level, chunk, tiler, device, precision, postprocess, labels):
    """(network on its device, image source, the store's record of this prediction), after
    checking the label settings, the image and the memory for a band of rows."""
    if labels:
        check_labels_settings(postprocess)
    source = open_image(input, level)
    net = check_network(net).to(resolve_device(device)).eval()
    check_band_memory(net, tiler, source.shape, chunk)
    plan = tiler.plan(net, source.shape)
    record = {
        "network_sha256": network_hash(net),
        "level": level,
        "tile": [plan.rows.in_sizes[0], plan.cols.in_sizes[0]],
        "precision": str(precision),
    }
    return net, source, record


def open_with_statistics(output, source, record, chunk, dtype, overwrite, rank):
    """(store, image statistics): rank 0 computes and stores the statistics of a new store,
    the others read them."""
    store = open_store(output, source, record, chunk, dtype, overwrite)
    statistics = store.record.get("statistics") or list(image_statistics(source))
    if rank == 0 and "statistics" not in store.record:
        store.group.attrs["unet"] = {**store.record, "statistics": statistics}
    return store, statistics


def write_labels(store: PredictionStore, postprocess: PostProcessing) -> int:
    """Chunk-wise instance labels of the store's cell probability (``labels/cells``), with
    their holes filled if ``postprocess.fill_holes``; returns the object count."""
    if len(store.done_rows()) < -(-store.probability.shape[0] // store.chunk):
        raise StoreError(f"{store.path}: chunk rows are missing; labels need the whole map")
    labels = store.labels(create=True)
    count = label_chunks(
        lambda ys, xs: store.read_probability((ys, xs)),
        labels,
        store.probability.chunks,
        postprocess.threshold,
        postprocess.min_area,
    )
    if postprocess.fill_holes:
        fill_holes_chunks(labels, store.probability.chunks, count)
    return count
