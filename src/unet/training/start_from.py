"""Fine-tuning keeps the architecture of the model it starts from (``model.init_from``).

A start model's weights fit only a network of its own depth, width, padding, up-sampling and
normalisation, so these are taken from its record rather than from ``model.net``: a user
who fine-tunes the shipped ``u373`` model (instance norm) with ``experiment=folder_cpu``
(batch norm) gets the shipped model's network instead of a refusal. The input channels
and the class count stay the user's (the data decides them; a new class count replaces the
head); dropout has no weights and stays too.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from unet.distributed import is_rank_zero
from unet.inference.checkpoint import net_config_of, read_checkpoint

# the architecture settings that decide which weights exist and their shapes
ADOPTED = ("depth", "base_channels", "padding", "up_mode", "batch_norm", "instance_norm")


def adopt_start_architecture(cfg: DictConfig) -> list[str]:
    """Set ``cfg.model.net``'s architecture to the ``model.init_from`` checkpoint's; returns
    the settings changed (``key=value``), also printed. Nothing without ``init_from``.

    Raises:
        unet.inference.checkpoint.CheckpointError: the start checkpoint is not one of ours.
    """
    start = cfg.model.get("init_from")
    if not start:
        return []
    path = Path(str(start))
    stored = net_config_of(read_checkpoint(path), path).to_dict()
    net = cfg.model.net
    changed = [
        f"model.net.{key}={stored[key]}"
        for key in ADOPTED
        if key in stored and key in net and net[key] != stored[key]
    ]
    with open_dict(cfg):
        for key in ADOPTED:
            if key in stored and key in net:
                net[key] = stored[key]
    if changed and is_rank_zero():
        print(f"model.init_from={path}: the start model's network: {', '.join(changed)}")
    return changed
