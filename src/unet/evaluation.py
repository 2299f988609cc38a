"""Score a trained checkpoint on whole images of a dataset split."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from unet.module import SegmentationModule, load_network
from unet.training import scalars, write_json


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg.ckpt_path`` on ``cfg.split``; writes ``<output_dir>/metrics.json``."""
    L.seed_everything(cfg.seed, workers=True)
    net = load_network(cfg.ckpt_path)
    module = SegmentationModule(net=net, optimizer=None)
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    results = trainer.validate(
        module, dataloaders=datamodule.whole_image_dataloader(cfg.split), verbose=False
    )
    metrics = scalars(results[0]) | {"checkpoint": str(cfg.ckpt_path), "split": cfg.split}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)

    table = Table(title=f"{cfg.split} split, {Path(cfg.ckpt_path).name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return metrics
