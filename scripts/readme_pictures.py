"""The README's pictures, made by the project's own code from the seed-1 runs of the
``*_cpu`` experiments (``scripts/results_table.py`` trains them):

    UNET_DATA_DIR=../shared/data python scripts/readme_pictures.py [--runs outputs/results]

writes to ``docs/``:

- ``panel_<experiment>.png``: input | ground truth | prediction | errors of the first
  validation image (:func:`unet.evaluation.report.image_panel`, as in a run's ``report.md``),
  predicted
  with the run's best checkpoint and its stored post-processing;
- ``curves_isbi_cpu.png``: the learning curves of the README's main command
  (``experiment=isbi_cpu``), as a run's ``report/curves.png``.

The Fig. 2 and Fig. 3 renderings come from ``python notebooks/figures.py`` (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf, open_dict
from PIL import Image

from unet.config.checks import build
from unet.evaluation.report import ReportImage, image_panel, plot_curves, read_curves
from unet.inference.checkpoint import load_trained
from unet.inference.image import predict_image
from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import Tiler
from unet.io.writers import write_png
from unet.labels import CELL_CLASS

ROOT = Path(__file__).resolve().parents[1]


def first_panel(run: Path, data_dir: Path, cache_dir: Path) -> np.ndarray:
    """The panel of the first validation image of a run folder, from its best checkpoint."""
    metrics = json.loads((run / "metrics.json").read_text())
    trained = load_trained(metrics["checkpoint"])
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.cache_dir = str(data_dir), str(cache_dir)
        cfg.paths.output_dir = str(cache_dir)
    datamodule = build(cfg, "data")
    datamodule.setup("validate")
    whole = datamodule.whole_sets["val"]
    # with the test-time augmentation of the final validation, as metrics.json scored it
    tta = metrics.get("tta", "none")
    prob = predict_image(trained.net.eval(), whole.images[0], Tiler(), tta)[CELL_CLASS]
    truth = datamodule.instances["val"][0] if datamodule.instances.get("val") else None
    item = ReportImage(
        datamodule.frame_ids["val"][0],
        whole.images[0],
        whole.classes[0],
        whole.weights[0],
        prob,
        truth,
    )
    return image_panel(item, trained.postprocess or PostProcessing())


def write_small(path: Path, picture: np.ndarray, max_kb: int = 450) -> Path:
    """A PNG of the picture, at half size if the full one is over ``max_kb`` (README
    pictures stay well under 500 KB)."""
    write_png(path, picture)
    if path.stat().st_size > max_kb * 1024:
        pil = Image.fromarray(picture)
        write_png(path, np.asarray(pil.resize((pil.width // 2, pil.height // 2), Image.LANCZOS)))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "results")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=ROOT / "docs")
    parser.add_argument("--experiments", nargs="*", default=["isbi_cpu", "hela_cpu", "u373_cpu"])
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("UNET_DATA_DIR", "data"))
    cache = ROOT / ".cache" / "readme_pictures"
    for experiment in args.experiments:
        run = args.runs / experiment / "seed1"
        print(
            write_small(args.output / f"panel_{experiment}.png", first_panel(run, data_dir, cache))
        )
    logs = sorted((args.runs / "isbi_cpu" / "seed1" / "csv").rglob("metrics.csv"))
    print(plot_curves(read_curves(logs), args.output / "curves_isbi_cpu.png"))


if __name__ == "__main__":
    main()
