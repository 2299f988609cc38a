"""The training task: LightningModule, callbacks, checkpoints, precision."""
