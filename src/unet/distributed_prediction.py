"""Prediction on the ranks of a Lightning Trainer: ``src/predict.py trainer=ddp``.

Lightning provides the processes, their devices and the process group (``trainer=ddp``
with ``trainer.devices`` and ``trainer.num_nodes``, or the SLURM tasks of
``cluster=slurm``); the work is that of :mod:`unet.prediction` and
:mod:`unet.stream_prediction`, which import no Lightning. Each rank's predict dataloader
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
  (:func:`unet.stream_prediction.predict_to_zarr`; no two ranks write one chunk); each
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

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from unet.atomic import partial_path
from unet.data.frames import FrameSource
from unet.distributed import is_rank_zero, relaunch_as_this_job
from unet.errors import UserError
from unet.export.runner import load_for_prediction
from unet.inference import autocast_dtype, predict_image, require_finite_output
from unet.output_safety import output_lock, write_faults
from unet.pixel_size import input_pixel_size, warn_mismatch
from unet.postprocess import postprocessing_for
from unet.prediction import (
    check_frame,
    check_network,
    frames_summary,
    is_store,
    probability_stack,
    report_frames,
    report_store,
    stage_output,
    store_options,
    with_model_record,
    write_contact_sheet,
    write_frame,
)
from unet.tta import count_tiles
from unet.validation import build

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
    """Each rank predicts and writes its share of the frames of ``source`` (module doc)."""

    def __init__(self, net, source: FrameSource, cfg: DictConfig, postprocess, pixel_size=None):
        super().__init__(net, cfg.output)
        self.source, self.cfg, self.postprocess = source, cfg, postprocess
        self.pixel_size = pixel_size  # of the input (unet.pixel_size), None: unknown
        self.tiler = build(cfg, "tiler")
        self.folder = partial_path(cfg.output)  # the staged folder (unet.atomic.StagedFolder)
        self.staged = None

    def prepare(self) -> None:
        cfg = self.cfg
        classes = self.net.config.num_classes > 2
        self.staged = stage_output(cfg.output, cfg.overwrite, cfg.labels, cfg.overlays, classes)
        (self.folder / SCRATCH).mkdir()

    def predict_dataloader(self) -> DataLoader:
        share = frame_share(len(self.source), self.global_rank, self.trainer.world_size)
        return DataLoader(RankFrames(self.source, share), batch_size=None, collate_fn=as_is)

    def predict_step(self, unit) -> None:
        index, name, frame = unit
        cfg = self.cfg
        check_frame(name, frame, self.net.config.in_channels)
        prob = predict_image(self.net, frame, self.tiler, cfg.tta, cfg.precision)
        require_finite_output(prob, f"frame {name}", str(cfg.ckpt_path))
        page, small = write_frame(
            self.folder,
            index,
            name,
            frame,
            prob,
            self.postprocess,
            labels=cfg.labels,
            overlays=cfg.overlays,
            instance_class=cfg.get("instance_class"),
            challenge_naming=cfg.challenge_naming,
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
    (module doc)."""

    def __init__(self, net, options: dict, cfg: DictConfig):
        super().__init__(net, cfg.output)
        self.options, self.cfg = options, cfg
        self.summary: dict = {}

    def prepare(self) -> None:
        from unet.stream_prediction import create_store

        create_store(
            self.net, **self.options, device=str(self.device), overwrite=self.cfg.overwrite
        )

    def predict_dataloader(self) -> DataLoader:
        return DataLoader([self.global_rank], batch_size=None, collate_fn=as_is)

    def predict_step(self, unit) -> None:
        from unet.stream_prediction import predict_to_zarr

        summary = predict_to_zarr(
            self.net,
            **self.options,
            device=str(self.device),
            overwrite=False,  # rank 0 has created the store in prepare()
            progress=self.cfg.progress and self.trainer.is_global_zero,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
            barrier=self.trainer.strategy.barrier,
        )
        rows = torch.tensor(summary["rows_predicted"], device=self.device)
        summary["rows_predicted"] = int(self.trainer.strategy.reduce(rows, reduce_op="sum"))
        self.summary = summary


def predict_on_ranks(cfg: DictConfig) -> dict:
    """``src/predict.py`` with a ``trainer``: the frames or chunk rows of ``cfg.input`` shared
    over the Trainer's ranks; rank 0 prints the summary."""
    trained = load_for_prediction(cfg.ckpt_path, cfg.get("trust_checkpoint", False))
    cfg = with_model_record(cfg, trained, streamed=is_store(cfg.output))
    if is_store(cfg.output):
        module = StorePrediction(trained.net, store_options(cfg, trained), cfg)
    else:
        net = check_network(trained.net, cfg.get("instance_class"))
        source = FrameSource(
            cfg.input,
            net.config.in_channels,
            cfg.get("nonfinite", "refuse"),
            cfg.get("input_axes", "auto"),
        )
        autocast_dtype(cfg.precision)  # the settings every rank checks before any writing
        count_tiles(net, source.shapes[0], build(cfg, "tiler"), cfg.tta)
        postprocess = postprocessing_for(trained.postprocess, cfg.get("postprocess"))
        pixel_size = input_pixel_size(cfg.input, cfg.get("pixel_size"))
        if is_rank_zero():
            warn_mismatch(str(cfg.input), pixel_size, trained.pixel_size)
        module = FramePrediction(net, source, cfg, postprocess, pixel_size)
    trainer = build(
        cfg,
        "trainer",
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.progress and not is_store(cfg.output),
        sync_batchnorm=False,  # no batch statistics are computed in prediction
    )
    start = time.perf_counter()
    with module.locks, write_faults(cfg.output), relaunch_as_this_job(), warnings.catch_warnings():
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
            summary = module.summary
            report_store(summary, cfg.output)
        else:
            summary = module.finish(start)
            report_frames(summary, cfg.output)
    return summary
