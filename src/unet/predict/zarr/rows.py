"""Predicting a store's chunk rows: each rank's share (:func:`unet.predict.zarr.bands.rank_share`)
less the rows the store marks as written, band by band through
:func:`unet.predict.zarr.bands.predict_windows`, with a progress display; a section's image
statistics noted in the store by the first rank that needs them; no band written whose
probabilities are not all finite."""

from __future__ import annotations

import numpy as np
from torch import nn

from unet.data.readers import DataError
from unet.inference.image import require_finite_output
from unet.inference.tiler import Tiler
from unet.io.progress import progress_bar
from unet.predict.zarr.bands import image_statistics, predict_windows
from unet.predict.zarr.plan import StreamMemoryError, StreamPlan, plan_stream
from unet.predict.zarr.source import ImageSource
from unet.predict.zarr.store import Plane, PredictionStore, StoreError

STATISTICS = "statistics.json"  # a section's note: per-channel mean and standard deviation


def stream_plan(net: nn.Module, tiler: Tiler, shape, chunk: int) -> StreamPlan:
    """Tiles, column windows and row groups within ``tiler``'s memory budget
    (:func:`unet.predict.zarr.plan.plan_stream`); a budget too small for them is a StoreError."""
    try:
        return plan_stream(net, tiler, tuple(shape), chunk, net.config.in_channels)
    except StreamMemoryError as err:
        raise StoreError(f"chunk={chunk}: {err}") from None


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


def write_rows(net, input, sections, store, share, settings, progress, on_batch, checkpoint):
    """:func:`write_missing_rows` with a progress display over chunk rows and tiles."""
    with progress_bar(progress, "predict") as bar:
        rows_task = bar.add_task("chunk rows", total=chunk_rows_to_do(store, share))
        tiles_task = bar.add_task("tiles", total=None)

        def advance(n: int) -> None:
            bar.advance(tiles_task, n)
            if on_batch is not None:
                on_batch(n)

        return write_missing_rows(
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


def chunk_rows_to_do(store: PredictionStore, share) -> int:
    """How many chunk rows of ``share`` the store does not mark as written."""
    runs = (missing_runs(store.plane(s).done_rows(), a, b) for s, a, b in share)
    return sum(b - a for section in runs for a, b in section)


def write_missing_rows(
    net, input: str, sections, store, share, settings, on_batch, on_rows=None, checkpoint=None
) -> int:
    """Predict the chunk rows of ``share`` (:func:`unet.predict.zarr.bands.rank_share`) that the
    store
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
    :func:`unet.inference.image.require_finite_output`."""
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
