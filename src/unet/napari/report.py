"""The Lightning callback through which the Fine-tune widget follows a training run: one
report per epoch with the monitored validation value, and a stop between batches when the
widget's cancel flag is set (the best checkpoint so far is kept)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

REPORTS: dict = {}  # key -> unet.napari.training_set.Progress of a running fine-tuning


class WidgetReport(Callback):
    """Report epochs to ``REPORTS[key]`` and stop when its cancel flag is set."""

    def __init__(self, key: str):
        self.key = key

    @property
    def progress(self):
        return REPORTS.get(self.key)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is not None and self.progress.cancel.is_set():
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.progress is None:
            return
        monitor = next((c.monitor for c in trainer.checkpoint_callbacks if c.monitor), None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        self.progress.on_epoch(
            trainer.current_epoch + 1,
            trainer.max_epochs,
            None if value is None else float(value),
        )
