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

PANELS = ("input", "ground truth", "prediction", "weight map")


def _to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None):
    values = values.astype(np.float32)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def validation_panel(
    image: np.ndarray, target: np.ndarray, prob: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """One (H, 4W + 12) gray image: input | ground truth | P(cell) | weight map, side by side.

    The input is stretched to its own range, the ground truth shows unlabelled pixels
    (target -1) as mid gray, the prediction is the cell probability on [0, 1] and the weight
    map is scaled to its maximum. The network's output may be smaller than the input (valid
    convolutions): every panel is cut to the centre of the output's size.
    """
    h, w = prob.shape
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    image = image[top : top + h, left : left + w]
    target = np.where(target < 0, 0.5, target)[top : top + h, left : left + w]
    weight = weight[top : top + h, left : left + w]
    gap = np.full((h, 4), 255, np.uint8)
    parts = [_to_uint8(image), _to_uint8(target, 0, 1), _to_uint8(prob, 0, 1)]
    parts.append(_to_uint8(weight, 0.0, max(float(weight.max()), 1e-6)))
    return np.hstack([parts[0], gap, parts[1], gap, parts[2], gap, parts[3]])


class ValidationImages(Callback):
    """Log input, ground truth, prediction and weight map of the first validation images.

    Every ``every_n_epochs`` validation epochs during training (and at every separate
    ``trainer.validate``), to each logger that takes images: W&B (an image panel, key
    ``val/images``) and TensorBoard. Other loggers are skipped. Needs the LightningModule's
    ``validation_step`` to return ``{"prob": (B, H, W) cell probabilities}``.

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
        self._panels: list[np.ndarray] = []

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
        for k in range(min(len(prob), self.max_images - len(self._panels))):
            self._panels.append(validation_panel(image[k], target[k], prob[k], weight[k]))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        panels, self._panels = self._panels, []
        if not panels:
            return
        caption = " | ".join(PANELS)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="val/images",
                    images=list(panels),
                    caption=[f"{caption} ({k})" for k in range(len(panels))],
                    step=trainer.global_step,
                )
            elif isinstance(logger, TensorBoardLogger):
                for k, panel in enumerate(panels):
                    logger.experiment.add_image(
                        f"val/images/{k}",
                        torch.from_numpy(panel)[None],
                        global_step=trainer.global_step,
                    )


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
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(text + "\n")
        if self.console == "always" or (self.console == "auto" and not sys.stdout.isatty()):
            print(text, flush=True)
