"""Export a checkpoint: python src/export.py ckpt_path=... [format=onnx|torchscript] output=..."""

import hydra
from omegaconf import DictConfig

from unet.cli import run_or_exit
from unet.export.run import export

KEPT = "an existing output file is kept as it was and no partial file is left"


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    run_or_exit(export, cfg, kept=KEPT)


if __name__ == "__main__":
    main()
