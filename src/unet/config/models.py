"""Shipped models by name in a composed config: ``ckpt_path=u373``, ``model.init_from=hela``.

Each entry point calls :func:`with_shipped_models` once, before its task reads the config,
so that every later step (output safety, the model record, exported-package detection) sees
an ordinary checkpoint path.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from unet.inference.shipped import resolve_model

# the settings that name a checkpoint to read (train's own ckpt_path resumes a run: "last"
# or a path, never a shipped model, which has no optimizer state)
MODEL_KEYS = ("ckpt_path", "model.init_from")


def with_shipped_models(cfg: DictConfig, keys: tuple[str, ...] = MODEL_KEYS) -> DictConfig:
    """``cfg`` with each of ``keys`` that names a shipped model replaced by its checked file.

    Raises:
        unet.inference.shipped.ShippedModelError: the named model's file is missing or damaged.
    """
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or value == "last":
            continue
        path = resolve_model(value)
        if str(path) != value:
            OmegaConf.update(cfg, key, str(path))
            print(f"{key}={value}: the shipped model {path}")
    return cfg
