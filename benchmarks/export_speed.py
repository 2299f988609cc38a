"""Export cost and ONNX Runtime against PyTorch on the CPU.

    python benchmarks/export_speed.py --ckpt <run>/checkpoints/best-epochNNN.ckpt
        [--data-dir ../shared/data] [--slices 30]

- export time and package size (bioimage.io zip with TorchScript, state-dict and ONNX
  weights) for the checkpoint and for the paper's network (``UNet()`` defaults, untrained:
  size and time do not depend on the weights);
- the checkpoint's cell probabilities for the ISBI test stack (``test-volume.tif``), one
  slice at a time through the same tiler (``unet.inference.image.predict_image``, default tiles),
  with PyTorch and with ONNX Runtime (CPU), taking turns slice by slice in the same run:
  seconds, and the largest difference between the two.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unet.data.readers import read_tiff
from unet.export.bioimageio import write_package
from unet.export.datasets import DATASETS
from unet.inference.checkpoint import TrainedModel, load_trained
from unet.inference.formats.loading import load_onnx
from unet.inference.formats.onnx import write_onnx
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import model_record
from unet.inference.image import predict_image
from unet.model.network import UNet

SETTINGS = {"name": "U-Net benchmark", "authors": ["benchmark"], "license": "MIT"}


def export_cost(label: str, trained: TrainedModel, image: np.ndarray, folder: Path) -> None:
    output = folder / f"{label}.zip"
    start = time.perf_counter()
    write_package(
        trained,
        model_record(trained),
        image,
        "test-volume.tif[0]",
        output,
        {**SETTINGS, "dataset": DATASETS["isbi"], "onnx": True},
    )
    seconds = time.perf_counter() - start
    print(f"{label}: bioimage.io package {output.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s")


def predict_stack(nets: dict, stack: np.ndarray) -> tuple[dict, dict]:
    """Seconds and cell probabilities per backend; the backends take turns slice by slice,
    so that a change in the machine's load falls on both."""
    seconds = dict.fromkeys(nets, 0.0)
    probs: dict = {name: [] for name in nets}
    for frame in stack:
        for name, net in nets.items():
            start = time.perf_counter()
            probs[name].append(predict_image(net, frame)[1])
            seconds[name] += time.perf_counter() - start
    return seconds, {name: np.stack(p) for name, p in probs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--slices", type=int, default=30)
    args = parser.parse_args()
    stack = read_tiff(Path(args.data_dir) / "isbi2012" / "test-volume.tif")[: args.slices]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    trained = load_trained(args.ckpt)
    paper = UNet().eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_cost("checkpoint", trained, stack[0], folder)
        export_cost("paper net", TrainedModel(net=paper, config=paper.config), stack[0], folder)
        onnx_file = folder / "model.onnx"
        write_onnx(ProbabilityUNet.wrap(trained.net), onnx_file, model_record(trained))
        exported = load_onnx(str(onnx_file), onnx_file).net
        nets = {"PyTorch": trained.net, "ONNX Runtime": exported}
        for net in nets.values():
            predict_image(net, stack[0][:200, :200])  # warm-up
        seconds, probs = predict_stack(nets, stack)
        h, w = stack.shape[1:]
        for name, total in seconds.items():
            print(f"{name}: {len(stack)} slices of {h}x{w} in {total:.1f} s "
                  f"({total / len(stack):.2f} s/slice)")  # fmt: skip
        difference = np.abs(probs["ONNX Runtime"] - probs["PyTorch"]).max()
        print(f"largest |ONNX Runtime - PyTorch| cell probability: {difference:.2e}")


if __name__ == "__main__":
    main()
