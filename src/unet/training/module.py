"""The LightningModule: U-Net + weighted cross-entropy, optimiser and metrics from config."""

from __future__ import annotations

import os
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from unet.data.base import SegmentationDataModule
from unet.inference.checkpoint import init_from_checkpoint
from unet.inference.tiler import Tiler, predict_whole_image
from unet.io.pixel_size import record_pixel_size
from unet.labels import foreground, foreground_probability
from unet.metrics import ClassCounts, PixelCounts
from unet.model.fingerprint import record_probe
from unet.model.loss import WeightedCrossEntropy
from unet.model.network import center_crop


class SegmentationModule(L.LightningModule):
    """Trains a segmentation network with the paper's weighted loss.

    Batches are dicts with ``image`` (B, C, H, W), ``target`` (B, H, W) class indices and
    ``weight`` (B, H, W). Training tiles are fed as they are and the targets cropped to the
    network's output window; validation images of any size go through the tiler.

    Validation metrics (class 1 = cell interior, p = its softmax probability), by the rule
    of :mod:`unet.metrics.pixels` (the one ``eval.py`` uses), pooled over all validation
    pixels of weight > 0: ``pixel_error``, the ISBI 2012 challenge's pixel error, 1 - the
    maximal F1 of the cell class over the thresholds 0.00, 0.01, ..., 0.99 (cells are
    ``p > t``); ``pixel_error_t05``: 1 - F1 at p > 0.5; ``dice``: F1 averaged over both
    classes and ``iou``: IoU of the cell class, both at p > 0.5.
    With K > 2 classes the cell class is the foreground (any class but 0, p = 1 - p_0),
    and per-class ``iou_class<k>``, ``dice_class<k>``, ``mean_iou`` and ``mean_dice`` of
    the argmax are logged too (:class:`unet.metrics.ClassCounts`).
    The slower challenge metrics (Rand error, warping error, SEG of the post-processed
    labels) are computed once, at the end of training and by ``src/eval.py``
    (:mod:`unet.evaluation.task`).

    Args:
        net: the network (e.g. :class:`unet.model.network.UNet`).
        optimizer: a partial that takes the parameters (``_partial_: true`` in config).
        scheduler: optional partial that takes the optimizer.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        loss: the loss module (default: the paper's weighted cross-entropy).
        tiler: predicts validation images tile by tile (:class:`unet.inference.tiler.Tiler`); None:
            one whole-image pass.
        init_from: fine-tuning: a trained model's checkpoint whose weights the network
            starts from (all, or all but the head when the class count differs:
            :func:`unet.inference.checkpoint.init_from_checkpoint`). A resumed run (``ckpt_path``)
            then loads its own weights over them.
        freeze_encoder_epochs: the contracting path and bottleneck get no updates in the
            first this many epochs (their batch-norm statistics still follow the data).
        channels_last: train with the network's weights and the training tiles in the
            ``channels_last`` memory layout (faster convolutions on many CPUs and GPUs);
            ``auto``: whichever a timed train step prefers, chosen by ``src/train.py``
            (:func:`unet.inference.precision.choose_training`), contiguous until then.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        loss: nn.Module | None = None,
        tiler: Tiler | None = None,
        init_from: str | None = None,
        freeze_encoder_epochs: int = 0,
        channels_last: bool | str = False,
    ):
        super().__init__()
        # Only plain values go into the checkpoint (it must load with weights_only=True); the
        # whole resolved config is stored by the loggers and in the run's .hydra folder.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss if loss is not None else WeightedCrossEntropy()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tiler = tiler
        self.channels_last = channels_last is True
        # how this machine trains (unet.inference.precision.TrainingChoice), stored in checkpoints
        self.training_choice: dict | None = None
        if init_from is not None:
            fresh = init_from_checkpoint(net, init_from)
            rank_zero_info(
                f"model.init_from={init_from}: weights loaded"
                + (f", except the head ({', '.join(fresh)}): another class count" if fresh else "")
            )
        # Validation runs whole on every rank (no distributed sampler), so each rank counts
        # every pixel and no counts need to be gathered across ranks.
        self.pixel_counts = PixelCounts()
        classes = net.config.num_classes if hasattr(net, "config") else 2
        self.class_counts = ClassCounts(classes) if classes > 2 else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for images of any size: tile by tile with ``tiler`` (same
        result within a memory budget), else in one whole-image pass."""
        if self.tiler is None:
            return predict_whole_image(self.net, image)
        return self.tiler(self.net, image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image = batch["image"]  # (B, C, H, W)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        logits = self.net(image)  # (B, K, h, w), smaller than the tile when valid
        size = tuple(logits.shape[-2:])
        loss = self.loss(
            logits, center_crop(batch["target"], size), center_crop(batch["weight"], size)
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The contracting path's and the bottleneck's parameters (frozen at the start of
        fine-tuning)."""
        return [*self.net.down.parameters(), *self.net.bottleneck.parameters()]

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_encoder_epochs
        for parameter in self.encoder_parameters():
            parameter.requires_grad_(not frozen)

    def on_train_start(self) -> None:
        # a run resumed mid-epoch starts there, without on_train_epoch_start
        self.on_train_epoch_start()

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._base_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout's randomness keyed by (seed, step, rank), like the data's by (seed, epoch,
        # sample): a run resumed from a checkpoint draws what the uninterrupted run drew.
        key = [getattr(self, "_base_seed", 0), self.global_step, self.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["target"], batch["weight"])
        prob = logits.float().softmax(dim=1)  # (B, K, H, W)
        cell_prob = foreground_probability(prob)  # (B, H, W)
        target = batch["target"].cpu().numpy()  # (B, H, W) class indices
        valid = (batch["weight"] > 0).cpu().numpy()  # weight 0: unannotated cells, not scored
        self.pixel_counts.add(cell_prob.cpu().numpy(), foreground(target), valid)
        if self.class_counts is not None:
            for p, t, v in zip(prob.cpu().numpy(), target, valid, strict=True):
                self.class_counts.add(p, t, v)
        self.log("val/loss", loss, batch_size=len(logits), sync_dist=True)
        return {"prob": cell_prob}  # for callbacks (unet.training.callbacks.ValidationImages)

    def on_validation_epoch_start(self) -> None:
        self.pixel_counts.reset()  # also after a validation that ended in an error
        if self.class_counts is not None:
            self.class_counts.reset()

    def on_validation_epoch_end(self) -> None:
        scores = self.pixel_counts.scores()
        if not self.pixel_counts.has_cells and not self.trainer.sanity_checking:
            rank_zero_warn(
                "the validation labels hold no cell pixel: val/pixel_error, val/iou and "
                "val/dice are missing (NaN), and no checkpoint is chosen on them"
            )
        self.pixel_counts.reset()
        for name in ("pixel_error_t05", "iou", "dice"):
            self.log(f"val/{name}", scores[name], sync_dist=True)
        self.log("val/pixel_error", scores["pixel_error"], prog_bar=True, sync_dist=True)
        if self.class_counts is not None:
            for name, value in self.class_counts.scores().items():
                self.log(f"val/{name}", value, sync_dist=True)
            self.class_counts.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Probability of the cell class (B, H, W): 1 = cell interior, 0 = membrane/background
        (for K > 2 classes: of the foreground, any class but 0)."""
        return foreground_probability(self(batch["image"]).float().softmax(dim=1))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/pixel_error"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The architecture travels with the weights, so eval/predict can rebuild the network.
        checkpoint["net_config"] = self.net.config.to_dict()
        checkpoint["net_probe"] = record_probe(self.net)  # ties net_config to the weights
        # The training data's pixel size (None: unknown): predict warns on other sizes.
        data = self.trainer.datamodule if self._trainer is not None else None
        found = data.pixel_size if isinstance(data, SegmentationDataModule) else None
        record_pixel_size(checkpoint, found)
        if self.training_choice is not None:  # precision, layout, measured step time
            checkpoint["training_choice"] = dict(self.training_choice)
        # Each logger's run (W&B run id, ...), so that a resumed run continues it.
        checkpoint["logger_versions"] = {
            type(logger).__name__: logger.version
            for logger in self.loggers
            if isinstance(logger.version, str | int)
        }
