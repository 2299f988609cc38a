"""Prediction on the ranks of a Lightning Trainer: ``src/predict.py trainer=ddp``.

Lightning provides the processes, their devices and the process group (``trainer=ddp``
with ``trainer.devices`` and ``trainer.num_nodes``, or the SLURM tasks of
``cluster=slurm``); the work is that of :mod:`unet.predict.files` and
:mod:`unet.predict.zarr.route`, which import no Lightning. Each rank's predict dataloader
yields its own work units:

- a stack or folder of frames: the frames ``rank, rank + world_size, ...`` (no frame goes
  to two ranks and none is repeated to even out the shares). Each rank writes its frames'
  files (``labels/``, ``overlays/``, ``classes/``) into the staged output folder, and its
  pages of ``probabilities.tif`` and overlay thumbnails as scratch files; rank 0 then
  writes ``probabilities.tif`` and ``contact_sheet.png`` in frame order and gives the
  folder its name. Labels are computed per frame, so instances never cross ranks. The
  folder equals that of one process.
- a ``.zarr`` output (one image or a stack of sections): one unit per rank, its
  contiguous run of the stack's whole chunk rows
  (:func:`unet.predict.zarr.route.write_store`; no two ranks write one chunk); each
  section is labelled over the whole section by one rank once every rank is done, so
  instances are consistent across tile, chunk and rank borders.

What must happen once happens on rank 0 in ``setup``, before any rank writes: the checks of
the output (an existing one is never replaced without ``overwrite=true``), creating the
staged folder or the store. A refusal there stops every rank; rank 0 reports it in one line.
"""

from __future__ import annotations

import shutil
import time
import warnings
from contextlib import ExitStack
from dataclasses import replace

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from unet.config.checks import build_node
from unet.data.frames import FrameSource
from unet.distributed import is_rank_zero, relaunch_as_this_job
from unet.errors import UserError
from unet.inference.image import autocast_dtype, predict_image, require_finite_output
from unet.inference.tta import count_tiles
from unet.io.atomic import partial_path
from unet.io.output_safety import output_lock, write_faults
from unet.io.pixel_size import warn_mismatch
from unet.predict.output_folder import (
    check_frame,
    frames_summary,
    probability_stack,
    report_frames,
    stage_output,
    write_contact_sheet,
    write_frame,
)
from unet.predict.request import PredictRequest
from unet.predict.setup import FramesSetUp, load_model, set_up_frames

SCRATCH = ".pages"  # inside the staged folder: each frame's pages and thumbnail, by index


def frame_share(count: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s frames of ``count``: every ``world_size``-th from ``rank``."""
    return list(range(rank, count, world_size))


def as_is(unit):
    """Leave a work unit as it is (the default collate would make tensors of frames)."""
    return unit


class RankFrames(IterableDataset):
    """(index, name, frame) of one rank's frames, read as they are predicted."""

    def __init__(self, source: FrameSource, indices: list[int]):
        self.source, self.indices = source, indices

    def __iter__(self):
        for index, (name, frame) in zip(
            self.indices, self.source.frames(self.indices), strict=True
        ):
            yield index, name, frame


class RankedPrediction(L.LightningModule):
    """Rank 0 prepares the output in ``setup`` (:meth:`prepare`); every rank learns whether
    it could, and all stop if not."""

    def __init__(self, net: torch.nn.Module, output: str):
        super().__init__()
        self.net, self.output = net, output
        self.locks = ExitStack()  # rank 0: the output's lock, held until the output is named

    def prepare(self) -> None:
        """What rank 0 does once before any rank writes (raises a UserError to refuse)."""

    def lock_and_prepare(self) -> None:
        """Rank 0: lock the output (one writer at a time), then :meth:`prepare`."""
        self.locks.enter_context(output_lock(self.output))
        with write_faults(self.output):
            self.prepare()

    def setup(self, stage: str) -> None:
        refusal = None
        if self.trainer.is_global_zero:
            try:
                self.lock_and_prepare()
            except UserError as err:
                refusal = err
        refusal = self.trainer.strategy.broadcast(refusal, src=0)
        if refusal is not None:
            if self.trainer.is_global_zero:
                raise refusal
            raise SystemExit(2)  # rank 0 reports it


class FramePrediction(RankedPrediction):
    """Each rank predicts and writes its share of the frames of ``setup.source`` (module
    doc), with the settings of ``setup.request``."""

    def __init__(self, setup: FramesSetUp):
        super().__init__(setup.net, setup.request.output)
        self.request, self.source = setup.request, setup.source
        self.postprocess = setup.postprocess
        self.pixel_size = setup.pixel_size  # of the input (unet.io.pixel_size), None: unknown
        self.tiler = setup.request.tiler.tiler()
        self.folder = partial_path(self.output)  # the staged folder (unet.io.atomic.StagedFolder)
        self.staged = None

    def prepare(self) -> None:
        request, write = self.request, self.request.write
        classes = self.net.config.num_classes > 2
        self.staged = stage_output(
            request.output, request.overwrite, write.labels, write.overlays, classes
        )
        (self.folder / SCRATCH).mkdir()

    def predict_dataloader(self) -> DataLoader:
        share = frame_share(len(self.source), self.global_rank, self.trainer.world_size)
        return DataLoader(RankFrames(self.source, share), batch_size=None, collate_fn=as_is)

    def predict_step(self, unit) -> None:
        index, name, frame = unit
        request, write = self.request, self.request.write
        check_frame(name, frame, self.net.config.in_channels)
        prob = predict_image(self.net, frame, self.tiler, request.tta, request.precision)
        require_finite_output(prob, f"frame {name}", request.checkpoint)
        page, small = write_frame(
            self.folder,
            index,
            name,
            frame,
            prob,
            self.postprocess,
            labels=write.labels,
            overlays=write.overlays,
            instance_class=write.instance_class,
            challenge_naming=write.challenge_naming,
            pixel_size=self.pixel_size,
        )
        np.save(self.folder / SCRATCH / f"{index}.npy", page)
        if small is not None:
            np.save(self.folder / SCRATCH / f"{index}.thumbnail.npy", small)

    def finish(self, seconds_since: float) -> dict:
        """Rank 0, once every rank is done: ``probabilities.tif`` and the contact sheet in
        frame order, then the folder under its name; returns the summary."""
        scratch = self.folder / SCRATCH
        num_classes = self.net.config.num_classes
        stack = probability_stack(self.folder, self.source, num_classes, self.pixel_size)
        thumbnails = []
        with self.staged, stack:
            for index, name in enumerate(self.source.names):
                stack.write(np.load(scratch / f"{index}.npy"))
                small = scratch / f"{index}.thumbnail.npy"
                if small.exists():
                    thumbnails.append((name, np.load(small)))
            write_contact_sheet(self.folder, thumbnails)
            shutil.rmtree(scratch)
        seconds = time.perf_counter() - seconds_since
        return frames_summary(self.source, self.staged.final, stack, num_classes, seconds)


class StorePrediction(RankedPrediction):
    """Each rank predicts its chunk rows of one image or stack into one OME-Zarr store
    (module doc); ``settings``: :class:`unet.predict.zarr.route.StoreSettings`."""

    def __init__(self, net, input: str, output: str, settings, progress: bool):
        super().__init__(net, output)
        self.input, self.settings, self.progress = input, settings, progress
        self.summary: dict = {}

    def prepare(self) -> None:
        from unet.predict.zarr.route import create_store

        settings = replace(self.settings, device=str(self.device))
        create_store(self.net, self.input, self.output, settings)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader([self.global_rank], batch_size=None, collate_fn=as_is)

    def predict_step(self, unit) -> None:
        from unet.predict.zarr.route import write_store

        # rank 0 has created the store in prepare(): nothing is overwritten here
        settings = replace(self.settings, device=str(self.device), overwrite=False)
        strategy = self.trainer.strategy
        summary = write_store(
            self.net,
            self.input,
            self.output,
            settings,
            progress=self.progress and self.trainer.is_global_zero,
            ranks=(self.global_rank, self.trainer.world_size, strategy.barrier),
        )
        rows = torch.tensor(summary["rows_predicted"], device=self.device)
        summary["rows_predicted"] = int(strategy.reduce(rows, reduce_op="sum"))
        self.summary = summary


def frames_module(request: PredictRequest) -> FramePrediction:
    """The module that shares the frames of ``request`` over the ranks, after the settings
    every rank checks before any writing."""
    setup = set_up_frames(request)
    request = setup.request
    autocast_dtype(request.precision)
    count_tiles(setup.net, setup.source.shapes[0], request.tiler.tiler(), request.tta)
    if is_rank_zero():
        warn_mismatch(request.input, setup.pixel_size, setup.training_pixel_size)
    return FramePrediction(setup)


def store_module(request: PredictRequest) -> StorePrediction:
    """The module that shares the chunk rows of ``request``'s store over the ranks."""
    # imported here: zarr and ome-zarr are an optional extra (pip install .[zarr])
    from unet.predict.zarr.route import store_settings

    trained, request = load_model(request, streamed=True)
    settings = store_settings(request, trained)
    return StorePrediction(trained.net, request.input, request.output, settings, request.progress)


def prediction_trainer(request: PredictRequest) -> L.Trainer:
    """The Trainer of ``request.trainer``, set up for prediction."""
    return build_node(
        request.trainer,
        "trainer",
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=request.progress and not request.store,
        sync_batchnorm=False,  # no batch statistics are computed in prediction
        # the prediction's own setting (request.precision) autocasts the tiles; the
        # Trainer's (trainer=cpu/gpu say auto: bf16-mixed for training where native) stays
        # out of it
        precision="32-true",
    )


def ranks_route(request: PredictRequest) -> dict:
    """``src/predict.py`` with a ``trainer``: the frames or chunk rows of ``request.input``
    shared over the Trainer's ranks; rank 0 prints the summary (the other ranks return
    an empty one)."""
    module = store_module(request) if request.store else frames_module(request)
    trainer = prediction_trainer(request)
    start = time.perf_counter()
    output = request.output
    with module.locks, write_faults(output), relaunch_as_this_job(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*predict returned None.*")  # each rank writes
        try:
            trainer.predict(module, return_predictions=False)
            trainer.strategy.barrier()  # every rank has written its share
        except BaseException:
            if isinstance(module, FramePrediction) and module.staged is not None:
                module.staged.abort()
            raise
        if not trainer.is_global_zero:
            return {}
        if isinstance(module, StorePrediction):
            from unet.predict.zarr.route import report_store

            report_store(module.summary, output)
            return module.summary
        summary = module.finish(start)
        report_frames(summary, output)
        return summary
