"""Predict images: python src/predict.py ckpt_path=... input=<image|stack|folder> output=<folder>"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from unet.cli import check_command_line, run_or_exit
from unet.predict.task import predict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# what Ctrl-C leaves (unet.atomic, unet.prediction_store)
KEPT = (
    "an earlier output is kept as it was and nothing partial is left (a .zarr output keeps "
    "its finished chunk rows: run the same command again to continue)"
)


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_or_exit(predict, cfg, kept=KEPT)


if __name__ == "__main__":
    check_command_line(CONFIGS, "predict")
    main()
