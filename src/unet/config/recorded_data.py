"""The data settings a checkpoint recorded, as the default data of ``src/eval.py``.

Training stores its DataModule's settings in the checkpoint
(``datamodule_hyper_parameters``: the data set's folders, validation split, crop, tile
settings). ``src/eval.py ckpt_path=...`` scores on that data unless the command line
chooses another data set (``data=hela``, ``data=folder ...``): ``data.<key>=...`` given
alone change the recorded settings key by key. A checkpoint without a record (or
``predictions=``) keeps the composed ``data`` (``data: isbi`` in ``configs/eval.yaml``).
Places are this machine's where a record's would not serve (:func:`machine_paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

# a key only one DataModule records -> that DataModule (the record names no class)
DATAMODULES = {
    "val_slices": "unet.data.isbi.IsbiDataModule",
    "dataset": "unet.data.ctc.CellTrackingDataModule",
    "mask_type": "unet.data.folder.FolderDataModule",
}


def read_recorded_data(ckpt_path: str | Path) -> dict | None:
    """The recorded data settings with their ``_target_``; None when the file holds none
    (or is not a checkpoint: evaluation itself then says what is wrong with it)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception:  # missing, not a checkpoint, unsafe: left to load_trained's message
        return None
    hparams = (
        checkpoint.get("datamodule_hyper_parameters") if isinstance(checkpoint, dict) else None
    )
    if not isinstance(hparams, dict):
        return None
    target = recorded_datamodule(hparams)
    return None if target is None else {"_target_": target, **dict(hparams)}


def recorded_datamodule(hparams: dict) -> str | None:
    """The DataModule (its ``_target_``) whose settings ``hparams`` are; None if unknown."""
    return next((t for key, t in DATAMODULES.items() if key in hparams), None)


def given_data_keys(overrides: Sequence[str]) -> set[str] | None:
    """The ``data.<key>`` keys of the command line; None when it chooses a data set."""
    keys = set()
    for line in overrides:
        key = line.lstrip("+~").split("=", 1)[0]
        if key == "data" or key.startswith("data/"):
            return None
        if key.startswith("data."):
            keys.add(key.split(".")[1])
    return keys


def with_recorded_data(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with ``data`` replaced by the checkpoint's recorded data settings, the
    ``data.<key>`` of ``overrides`` (the command line) on top (module docstring)."""
    given = given_data_keys(overrides)
    if given is None or not cfg.get("ckpt_path") or cfg.get("predictions"):
        return cfg
    recorded = read_recorded_data(cfg.ckpt_path)
    if recorded is None:
        return cfg
    data = recorded | machine_paths(cfg, recorded)
    data |= {key: OmegaConf.select(cfg.data, key) for key in sorted(given)}
    data.pop("augmentation", None)  # scoring reads whole images: no training tiles
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data = OmegaConf.create(data)
    kind = recorded["_target_"].rsplit(".", 1)[1]
    print(f"data: the checkpoint's recorded settings ({kind}, data_dir={data.get('data_dir')})")
    return cfg


def machine_paths(cfg: DictConfig, recorded: dict) -> dict:
    """This machine's places where a record's would not serve: the weight-map cache
    (``paths.cache_dir``) always, and for the benchmark data sets (which live under
    ``paths.data_dir``, $UNET_DATA_DIR) a recorded ``data_dir`` that does not exist here.
    Own data keep their recorded folder: an error then names it."""
    paths = {}
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if cache_dir is not None:
        paths["cache_dir"] = str(cache_dir)
    data_dir = OmegaConf.select(cfg, "paths.data_dir", default=None)
    benchmark = not recorded["_target_"].endswith("FolderDataModule")
    if benchmark and data_dir is not None and not Path(str(recorded.get("data_dir"))).exists():
        paths["data_dir"] = str(data_dir)
    return paths
