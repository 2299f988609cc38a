"""Score a checkpoint: python src/eval.py ckpt_path=... [split=val|train] [data=isbi]

Without data=..., the data the checkpoint was trained on (unet.config.recorded_data)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unet.config.cli import check_command_line, run_or_exit
from unet.config.models import with_shipped_models
from unet.config.recorded_data import with_recorded_data
from unet.evaluation.task import evaluate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

KEPT = "nothing was written (metrics.json and report.md are written at the end)"


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    cfg = run_or_exit(with_shipped_models, cfg)
    cfg = run_or_exit(with_recorded_data, cfg, HydraConfig.get().overrides.task)
    run_or_exit(evaluate, cfg, kept=KEPT)


if __name__ == "__main__":
    check_command_line(CONFIGS, "eval")
    main()
