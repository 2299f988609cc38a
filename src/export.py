"""Export a checkpoint: python src/export.py ckpt_path=... [format=onnx|torchscript] output=..."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from unet.config.cli import check_command_line, run_or_exit
from unet.config.models import with_shipped_models
from unet.export.task import export

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

KEPT = "an existing output file is kept as it was and no partial file is left"


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    cfg = run_or_exit(with_shipped_models, cfg)
    run_or_exit(export, cfg, kept=KEPT)


if __name__ == "__main__":
    check_command_line(CONFIGS, "export")
    main()
