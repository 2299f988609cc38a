"""Build everything a training run needs from a composed config, and run it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from unet.errors import OutputExistsError
from unet.shapes import InvalidInputSizeError


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group that is a dict of objects (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry
    ]


def scalars(metrics: dict) -> dict[str, float]:
    """Plain floats from Lightning's metric dict (tensors), for JSON."""
    return {k: float(v) for k, v in sorted(metrics.items())}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to a new file; an existing file is never overwritten."""
    if path.exists():
        raise OutputExistsError(f"{path} already exists; not overwriting it")
    with open(path, "x") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def check_tile_size(module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Fail before training starts if the data's tile size does not fit the network."""
    tile = getattr(datamodule.hparams, "tile_size", None)
    net = getattr(module, "net", None)
    if tile is not None and hasattr(net, "output_shape"):
        try:
            net.output_shape((tile, tile))
        except InvalidInputSizeError as err:
            raise InvalidInputSizeError(
                f"data.tile_size={tile} does not fit model.net: {err}"
            ) from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model of ``cfg``, then score its best checkpoint on the validation split.

    Returns the final validation metrics, also written to ``<output_dir>/metrics.json``.
    """
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path") is None and (output_dir / "checkpoints").exists():
        raise OutputExistsError(
            f"{output_dir / 'checkpoints'} already exists; "
            "to continue that run pass ckpt_path=..., "
            "otherwise choose a new hydra.run.dir"
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    check_tile_size(module, datamodule)
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # a learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = scalars(trainer.callback_metrics)
    if cfg.get("validate", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        module.challenge_metrics = True  # the slow ISBI challenge metrics, once at the end
        results = trainer.validate(
            module, datamodule=datamodule, ckpt_path=best or None, verbose=False
        )
        metrics = scalars(results[0]) | {"checkpoint": best}
        write_json(output_dir / "metrics.json", metrics)
    return metrics
