"""Score a checkpoint: python src/eval.py ckpt_path=... [split=val|train] [data=isbi]

Without data=..., the data the checkpoint was trained on (unet.recorded_data)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unet.cli import check_command_line, run_or_exit
from unet.evaluation import evaluate
from unet.recorded_data import with_recorded_data

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

KEPT = "nothing was written (metrics.json and report.md are written at the end)"


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    cfg = with_recorded_data(cfg, HydraConfig.get().overrides.task)
    run_or_exit(evaluate, cfg, kept=KEPT)


if __name__ == "__main__":
    check_command_line(CONFIGS, "eval")
    main()
