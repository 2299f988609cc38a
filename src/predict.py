"""Predict images: python src/predict.py ckpt_path=... input=<image|stack|folder> output=<folder>"""

import hydra
from omegaconf import DictConfig

from unet.cli import run_or_exit
from unet.prediction import predict


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_or_exit(predict, cfg)


if __name__ == "__main__":
    main()
