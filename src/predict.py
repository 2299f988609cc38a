"""Predict images: python src/predict.py ckpt_path=... input=<image|stack|folder> output=<folder>"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from unet.config.cli import check_command_line, run_or_exit
from unet.config.models import with_shipped_models
from unet.predict.task import predict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# what Ctrl-C leaves (unet.io.atomic, unet.predict.zarr.store)
KEPT = (
    "an earlier output is kept as it was and nothing partial is left (a .zarr output keeps "
    "its finished chunk rows: run the same command again to continue)"
)


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    cfg = run_or_exit(with_shipped_models, cfg)
    run_or_exit(predict, cfg, kept=KEPT)


if __name__ == "__main__":
    check_command_line(CONFIGS, "predict")
    main()
