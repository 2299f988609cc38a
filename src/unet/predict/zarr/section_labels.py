"""Instance labels of a stack's sections in an OME-Zarr prediction store: chunk-wise
(``unet.predict.zarr.labels``, ``unet.predict.zarr.holes``) where the post-processing is local, else
per whole section in memory, checked to fit; each section once per post-processing setting
(noted in the store), section s by rank s mod world size."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch

from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import available_memory_bytes
from unet.predict.zarr.holes import fill_holes_chunks
from unet.predict.zarr.labels import label_chunks
from unet.predict.zarr.store import LABELS_DONE, Plane, StoreError

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
