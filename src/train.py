"""Train a U-Net: python src/train.py [experiment=isbi_cpu] [key=value ...]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from unet.config.cli import check_command_line, run_or_exit
from unet.config.models import with_shipped_models
from unet.training.task import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    cfg = run_or_exit(with_shipped_models, cfg, ("model.init_from",))
    metrics = run_or_exit(train, cfg)
    # A number for Hydra sweepers that optimise the validation metric.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    check_command_line(CONFIGS, "train")
    main()
