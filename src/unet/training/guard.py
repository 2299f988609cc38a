"""Stop training at the first non-finite loss or gradient, before it reaches the weights.

One NaN in a loss spreads to every weight at the next optimizer step, after which the run
goes on producing NaN checkpoints and a validation pixel error of 1.0 without a word. The
guard checks the loss before the backward pass and the gradients before the optimizer
step; the step is never taken, so every checkpoint on disk holds the weights of the last
good step, and ``ckpt_path=last`` resumes from there once the cause is fixed.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from unet.data.samples import RandomTileDataset
from unet.errors import UserError

LIKELY_CAUSES = (
    "likely causes: a learning rate too high for this network (model.optimizer.lr), "
    "non-finite or extreme input values, or a damaged weight-map cache (delete "
    "paths.cache_dir to recompute it)"
)


class NonFiniteError(UserError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient."""


def describe_batch(batch: dict, names: list[str] | None) -> str:
    """The batch's source images and tile centres, and any non-finite values it holds.

    Args:
        batch: a training batch; ``source`` (B, 3) holds (image index, centre row, centre
            column) per tile (:class:`unet.data.samples.RandomTileDataset`).
        names: the training images' names, indexed like ``source[:, 0]``.
    """
    parts = []
    source = batch.get("source")
    if isinstance(source, torch.Tensor):
        for k, y, x in source.tolist():
            name = names[k] if names and 0 <= k < len(names) else f"training image {k}"
            parts.append(f"{name} (tile centred at row {y}, column {x})")
    found = ", ".join(parts) or "an unnamed batch"
    for key in ("image", "weight"):
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                found += f"; its {key} tensor holds {bad} non-finite values"
    return found


class NumericGuard(Callback):
    """Raise :class:`NonFiniteError` at a non-finite loss or gradient, before the step.

    The message names the step, the batch's source images and the likely causes. Under
    16-bit precision with gradient scaling, infinite gradients are the scaler's business
    (it skips those steps), so only the loss is checked there. Under DDP the ranks agree on
    the loss check (one small all-reduce per step) and all stop together; gradients are the
    same on every rank after DDP's all-reduce, so their check needs no agreement.
    """

    def __init__(self):
        self._batch: dict = {}
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch if isinstance(batch, dict) else {}, batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            # Every rank must stop at the same step: a rank that went on to the backward
            # pass would wait forever in DDP's gradient all-reduce for the rank that stopped.
            flag = torch.tensor(0.0 if finite else 1.0, device=loss.device)
            bad_ranks = int(trainer.strategy.reduce(flag, reduce_op="sum").item())
            if finite and bad_ranks:
                self._stop(trainer, f"loss on {bad_ranks} other of {trainer.world_size} ranks")
        if not finite:
            self._stop(trainer, f"loss ({float(loss.detach().float().mean())})")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer):
        if str(trainer.precision).startswith("16"):
            return
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        # one number per tensor and one device sync: NaN and inf survive amax
        peaks = torch.stack([g.detach().abs().amax().float() for _, g in named])
        if bool(torch.isfinite(peaks).all()):
            return
        bad = [
            n for (n, _), ok in zip(named, torch.isfinite(peaks).tolist(), strict=True) if not ok
        ]
        self._stop(trainer, f"gradient in {len(bad)} parameter tensors (first: {bad[0]})")

    def _stop(self, trainer: Trainer, what: str) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        names = dataset.names if isinstance(dataset, RandomTileDataset) else None
        raise NonFiniteError(
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {self._batch_idx}) on {describe_batch(self._batch, names)}; training "
            f"stopped before the optimizer step, checkpoints on disk are from earlier steps; "
            f"{LIKELY_CAUSES}"
        )
