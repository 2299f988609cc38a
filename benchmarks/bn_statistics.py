"""Foreground IoU of cell-data validation frames with a checkpoint's batch-norm statistics
(population statistics, as every route predicts) and with each tile's own statistics.

    python benchmarks/bn_statistics.py CKPT [CKPT ...] [--dataset PhC-C2DH-U373]
        [--frames 01/112 02/077] [--data-dir ../shared/data]

A large gap between the two columns on one frame means the stored statistics do not fit
that frame's images: the network was trained on single tiles (batch 1) normalised by their
own statistics, and the averaged statistics of the training tiles misplace its features.
No test-time augmentation, plain threshold 0.5, tiles of 508 px.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tifffile
import torch

from unet.inference.checkpoint import load_network
from unet.inference.image import predict_image
from unet.inference.machine import cpu_model
from unet.inference.tiler import Tiler

ROOT = Path(__file__).resolve().parents[1]


def foreground_iou(probability: np.ndarray, truth: np.ndarray) -> float:
    predicted, cells = probability > 0.5, truth > 0
    return float((predicted & cells).sum() / max((predicted | cells).sum(), 1))


def own_statistics(net: torch.nn.Module) -> None:
    """Every batch norm normalises each forward pass by that pass's own statistics."""
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False
            module.running_mean = module.running_var = None


def scores(net, frames, data: Path, tile_size: int) -> list[float]:
    found = []
    for frame in frames:
        sequence, number = frame.split("/")
        image = tifffile.imread(data / sequence / f"t{number}.tif")
        truth = tifffile.imread(data / f"{sequence}_GT" / "SEG" / f"man_seg{number}.tif")
        # one tile per forward pass: per-tile statistics, as in training (batch 1)
        tiler = Tiler(tile_size=tile_size, batch_size=1)
        with torch.no_grad():
            found.append(foreground_iou(predict_image(net, image, tiler)[-1], truth))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--dataset", default="PhC-C2DH-U373")
    parser.add_argument("--frames", nargs="+", default=["01/112", "02/077"])
    parser.add_argument("--data-dir", default=os.environ.get("UNET_DATA_DIR", "../shared/data"))
    parser.add_argument("--tile-size", type=int, default=508)
    args = parser.parse_args()
    data = Path(args.data_dir) / args.dataset
    print(f"{cpu_model()}, torch {torch.__version__}; {args.dataset}, frames {args.frames}")
    print("checkpoint | population statistics | own statistics per tile")
    for path in args.checkpoints:
        net = load_network(path, trust=True)
        stored = scores(net, args.frames, data, args.tile_size)
        own_statistics(net)
        own = scores(net, args.frames, data, args.tile_size)
        show = lambda values: " ".join(f"{v:.3f}" for v in values)  # noqa: E731
        print(f"{path} | {show(stored)} | {show(own)}")


if __name__ == "__main__":
    main()
