"""The LightningModule: U-Net + weighted cross-entropy, optimiser and metrics from config."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecisionRecallCurve,
    MulticlassF1Score,
)

from unet.errors import UserError
from unet.fingerprint import probe_mismatch, record_probe
from unet.loss import WeightedCrossEntropy
from unet.metrics import score_isbi_stack
from unet.network import UNet, center_crop
from unet.tiler import Tiler, predict_whole_image

IGNORE = -1  # target value of pixels the metrics skip


class SegmentationModule(L.LightningModule):
    """Trains a segmentation network with the paper's weighted loss.

    Batches are dicts with ``image`` (B, C, H, W), ``target`` (B, H, W) class indices and
    ``weight`` (B, H, W). Training tiles are fed as they are and the targets cropped to the
    network's output window; validation images of any size go through the tiler.

    Validation metrics (class 1 = cell interior, p = its softmax probability):
        ``pixel_error``: the ISBI 2012 challenge's pixel error, 1 - the maximal F1 of the
        cell class over the thresholds 0, 0.01, ..., 1 (pooled over all validation pixels);
        ``pixel_error_t05``: 1 - F1 at the fixed threshold 0.5; ``dice``: F1 averaged over
        both classes and ``iou``: IoU of the cell class, both at 0.5.
    With ``challenge_metrics`` set (training sets it for its final validation, eval always),
    validation also logs the ISBI 2012 challenge's Rand error, V_rand, V_info and warping
    error (:func:`unet.metrics.score_isbi_stack`): too slow to compute every epoch.

    Args:
        net: the network (e.g. :class:`unet.network.UNet`).
        optimizer: a partial that takes the parameters (``_partial_: true`` in config).
        scheduler: optional partial that takes the optimizer.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        loss: the loss module (default: the paper's weighted cross-entropy).
        tiler: predicts validation images tile by tile (:class:`unet.tiler.Tiler`); None:
            one whole-image pass.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        loss: nn.Module | None = None,
        tiler: Tiler | None = None,
    ):
        super().__init__()
        # Only plain values go into the checkpoint (it must load with weights_only=True); the
        # whole resolved config is stored by the loggers and in the run's .hydra folder.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss if loss is not None else WeightedCrossEntropy()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tiler = tiler
        self.val_metrics = MetricCollection(
            {
                # pixels of weight 0 (unannotated cells) are left out of every metric
                "f1_cell": BinaryF1Score(ignore_index=IGNORE),
                "pr_curve": BinaryPrecisionRecallCurve(thresholds=101, ignore_index=IGNORE),
                "iou": BinaryJaccardIndex(ignore_index=IGNORE),
                "dice": MulticlassF1Score(num_classes=2, average="macro", ignore_index=IGNORE),
            },
            prefix="val/",
        )
        self.challenge_metrics = False
        self._challenge_inputs: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for images of any size: tile by tile with ``tiler`` (same
        result within a memory budget), else in one whole-image pass."""
        if self.tiler is None:
            return predict_whole_image(self.net, image)
        return self.tiler(self.net, image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])  # (B, K, h, w), smaller than the tile when valid
        size = tuple(logits.shape[-2:])
        loss = self.loss(
            logits, center_crop(batch["target"], size), center_crop(batch["weight"], size)
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def on_fit_start(self) -> None:
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
        target = batch["target"].masked_fill(batch["weight"] == 0, IGNORE)
        self.val_metrics["f1_cell"].update(prob[:, 1], target)
        self.val_metrics["pr_curve"].update(prob[:, 1], target)
        self.val_metrics["iou"].update(prob[:, 1], target)
        self.val_metrics["dice"].update(prob.argmax(dim=1), target)
        if self.challenge_metrics:
            for p, t in zip(prob[:, 1].cpu().numpy(), target.cpu().numpy(), strict=True):
                if not (t == IGNORE).any():  # the ISBI definitions know no unlabelled pixels
                    self._challenge_inputs.append((p, t))
        self.log("val/loss", loss, batch_size=len(logits), sync_dist=True)
        return {"prob": prob[:, 1]}  # for callbacks (unet.callbacks.ValidationImages)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        precision, recall, _ = values.pop("val/pr_curve")
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        best_f1 = torch.nan_to_num(f1, nan=0.0).max()  # thresholds with no positive: F1 = 0
        self.log_dict(values, sync_dist=True)
        self.log("val/pixel_error_t05", 1.0 - values["val/f1_cell"], sync_dist=True)
        self.log("val/pixel_error", 1.0 - best_f1, prog_bar=True, sync_dist=True)
        if self.challenge_metrics and self._challenge_inputs:
            self.log_dict(self._score_challenge(), sync_dist=True)

    def _score_challenge(self) -> dict[str, float]:
        """The expensive ISBI metrics over the collected validation images (then cleared)."""
        inputs, self._challenge_inputs = self._challenge_inputs, []
        if len({p.shape for p, _ in inputs}) == 1:
            groups = [inputs]
        else:  # images of several sizes: score each size as its own stack, weigh by count
            groups = [[x for x in inputs if x[0].shape == s] for s in {p.shape for p, _ in inputs}]
        totals: dict[str, float] = {}
        for group in groups:
            scores = score_isbi_stack(
                np.stack([p for p, _ in group]), np.stack([t for _, t in group])
            )
            for name in ("rand_error", "v_rand", "v_info", "warping_error"):
                totals[f"val/{name}"] = totals.get(f"val/{name}", 0.0) + scores[name] * len(group)
        return {name: value / len(inputs) for name, value in totals.items()}

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Probability of the cell class (B, H, W): 1 = cell interior, 0 = membrane/background."""
        return self(batch["image"]).float().softmax(dim=1)[:, 1]

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
        checkpoint["net_config"] = getattr(self.net, "config", None)
        checkpoint["net_probe"] = record_probe(self.net)  # ties net_config to the weights
        # Each logger's run (W&B run id, ...), so that a resumed run continues it.
        checkpoint["logger_versions"] = {
            type(logger).__name__: logger.version
            for logger in self.loggers
            if isinstance(logger.version, str | int)
        }


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the expected network."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def read_checkpoint(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's contents (tensors and plain values only: ``weights_only=True``)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path} is not a file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a checkpoint dict, found {type(checkpoint).__name__}"
        )
    return checkpoint


def load_network(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> UNet:
    """Rebuild the trained U-Net from a checkpoint written by :class:`SegmentationModule`."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path, map_location)
    config = checkpoint.get("net_config")
    if not config or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path}: expected a checkpoint written by unet's training "
            "(with 'net_config'), found none"
        )
    net = UNet(**config)
    state = {
        k.removeprefix("net."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("net.")
    }
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network {config}: {err}") from None
    if mismatch := probe_mismatch(net, checkpoint.get("net_probe")):
        raise CheckpointError(
            f"{path}: its stored architecture {config} does not fit its weights ({mismatch}); "
            "the checkpoint was edited or damaged: use the one training wrote"
        )
    return net
