"""Callbacks of our own (the rest come from Lightning through ``configs/callbacks``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from unet.io.panels import tile_panel


def log_panels(loggers: list, panels: list[tuple[str, np.ndarray]], key: str, step: int) -> None:
    """Send (name, RGB picture) panels to each logger that takes images: W&B (one image panel
    under ``key``, captioned with the names) and TensorBoard (``key/name``); others skip."""
    if not panels:
        return
    names, pictures = [name for name, _ in panels], [picture for _, picture in panels]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=pictures, caption=names, step=step)
        elif isinstance(logger, TensorBoardLogger):
            for name, picture in panels:
                logger.experiment.add_image(
                    f"{key}/{name}", picture, global_step=step, dataformats="HWC"
                )


class ValidationImages(Callback):
    """Log input | ground truth | prediction | errors of the first validation tiles.

    The panels of :func:`unet.io.panels.tile_panel` (pixel errors coloured by kind), every
    ``every_n_epochs`` validation epochs during training (and at every separate
    ``trainer.validate``), to each logger that takes images: W&B (an image panel, key
    ``val/images``) and TensorBoard (:func:`log_panels`). Other loggers are skipped. Needs
    the LightningModule's ``validation_step`` to return ``{"prob": (B, H, W) cell probabilities}``.

    Args:
        every_n_epochs: log at validation epochs n, 2n, ... (counted from 1).
        max_images: how many validation images to show.
    """

    def __init__(self, every_n_epochs: int = 5, max_images: int = 2):
        if every_n_epochs < 1 or max_images < 1:
            raise ValueError(
                f"need every_n_epochs >= 1 and max_images >= 1, got {every_n_epochs}, {max_images}"
            )
        self.every_n_epochs, self.max_images = every_n_epochs, max_images
        self._panels: list[tuple[str, np.ndarray]] = []

    def _due(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if len(self._panels) >= self.max_images or not self._due(trainer):
            return
        if not isinstance(outputs, dict) or "prob" not in outputs:
            return
        arrays = [batch["image"][:, 0], batch["target"], outputs["prob"], batch["weight"]]
        image, target, prob, weight = (a.detach().float().cpu().numpy() for a in arrays)
        # ISBI (no instance masks) has membranes as its background class
        membranes = not (trainer.datamodule and trainer.datamodule.instances.get("val"))
        for k in range(min(len(prob), self.max_images - len(self._panels))):
            panel = tile_panel(image[k], target[k], prob[k], weight[k], membranes)
            self._panels.append((str(len(self._panels)), panel))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        panels, self._panels = self._panels, []
        if not panels:
            return
        log_panels(trainer.loggers, panels, "val/images", trainer.global_step)


class EpochLog(Callback):
    """One plain line per training epoch: epoch, step, losses, validation metrics, time.

    Appended to ``path`` (the run folder's ``train.log``), and printed to standard output
    when that is not a terminal (a cluster job's log file), where a progress bar shows
    nothing readable. Only rank 0 writes.

    Args:
        path: the log file (appended to, so a resumed run keeps the earlier lines).
        console: ``auto`` (print when stdout is not a terminal), ``always`` or ``never``.
    """

    def __init__(self, path: str | None = None, console: str = "auto"):
        if console not in ("auto", "always", "never"):
            raise ValueError(f"console={console!r}: expected auto, always or never")
        self.path, self.console = path, console
        self._start = 0.0
        self._losses: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._losses = time.perf_counter(), []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a run resumed mid-epoch starts there, without on_train_epoch_start
        self._start, self._losses = time.perf_counter(), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach()))

    def line(self, trainer: Trainer) -> str:
        """The epoch's line, e.g. ``epoch 3/100 step 300 train/loss 0.4120 ... time 41.2 s``."""
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts.append(f"step {trainer.global_step}")
        if self._losses:
            parts.append(f"train/loss {np.mean(self._losses):.4f}")
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith("val/") and isinstance(value, torch.Tensor) and value.numel() == 1:
                parts.append(f"{name} {float(value):.4f}")
        parts.append(f"time {time.perf_counter() - self._start:.1f} s")
        return " ".join(parts)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        text = self.line(trainer)
        if self.path and not trainer.fast_dev_run:  # (a check that leaves no logs behind)
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(text + "\n")
        if self.console == "always" or (self.console == "auto" and not sys.stdout.isatty()):
            print(text, flush=True)


def millions(count: int) -> str:
    """``31.0M`` or ``0.03M``: a parameter count in millions, with two significant digits."""
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e6:.2g}M"


HEAVY_ON_CPU = 5_000_000  # parameters; the paper net (31M) takes about a day of CPU training


class TrainingPlan(Callback):
    """Say what training is about to do, and after ``timed_steps`` steps how long it takes.

    At the start, one line: the network (parameters, depth, channels), the device, the
    precision, the epochs and steps; on a CPU with a network of more than
    :data:`HEAVY_ON_CPU` parameters, a second line naming the CPU recipes. After
    ``timed_steps`` training batches (timed from one batch's end to the next within an
    epoch: without the first batch's one-off costs and without validation), the time per
    batch and the estimates per epoch and for the epochs left. Only rank 0 prints.
    """

    def __init__(self, timed_steps: int = 5):
        self.timed_steps = timed_steps
        self._last_end: tuple[int, float] | None = None  # (epoch, time) of the last batch end
        self._timed: list[float] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end, self._timed = None, []
        if trainer.is_global_zero:
            for line in plan_lines(trainer, pl_module.net):
                print(line, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or len(self._timed) >= self.timed_steps:
            return
        now, epoch = time.perf_counter(), trainer.current_epoch
        if self._last_end is not None and self._last_end[0] == epoch:
            self._timed.append(now - self._last_end[1])
        self._last_end = (epoch, now)
        if len(self._timed) == self.timed_steps:
            print(timing_line(trainer, float(np.mean(self._timed))), flush=True)


def plan_lines(trainer: Trainer, net) -> list[str]:
    """What training is about to do (:class:`TrainingPlan`)."""
    count = sum(p.numel() for p in net.parameters())
    device = trainer.strategy.root_device.type
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "unlimited"
    lines = [
        f"training: U-Net of {millions(count)} parameters (depth {net.config.depth}, "
        f"{net.config.base_channels} base channels) on {device} x {trainer.world_size}, "
        f"precision {trainer.precision}, {optimizers(trainer)}, {epochs} epochs of "
        f"{trainer.num_training_batches} steps, from epoch {trainer.current_epoch + 1}"
    ]
    if device == "cpu" and count > HEAVY_ON_CPU:
        lines.append(
            f"note: a {millions(count)}-parameter network trains slowly on a CPU (the paper's "
            "takes about a day); experiment=isbi_cpu (or hela_cpu, u373_cpu, folder_cpu) "
            "trains a narrower one in under 30 minutes"
        )
    return lines


def optimizers(trainer: Trainer) -> str:
    """``SGD lr 0.01``: the optimizer(s) and starting learning rate."""
    names = [f"{type(o).__name__} lr {o.param_groups[0]['lr']:g}" for o in trainer.optimizers]
    return ", ".join(names) or "no optimizer"


def timing_line(trainer: Trainer, per_batch: float) -> str:
    """The measured time per batch and what it makes of an epoch and of the run."""
    epoch = per_batch * trainer.num_training_batches
    line = f"timing: {per_batch:.2f} s per batch, about {duration(epoch)} per epoch"
    if trainer.max_epochs not in (None, -1):
        left = trainer.max_epochs - trainer.current_epoch
        line += f", {duration(left * epoch)} for the {left} epochs left (without validation)"
    return line


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``26.1 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
