"""Training throughput of the U-Net: tiles/s and achieved GFLOP/s.

    python benchmarks/train_throughput.py [--nets paper isbi_cpu] [--steps 5] [--device cpu]

Two measurements per network:
- model step: forward, weighted loss, backward and SGD step on random tiles already in
  memory (the ceiling the data pipeline can at best reach);
- full loop: Lightning's training loop with the real ISBI DataModule (tile sampling,
  mirroring, augmentation, data-loader workers), timed per step after a warm-up.
GFLOP/s is the network's own count of one training step (forward + backward, counted by
torch's FlopCounterMode on the meta device) divided by the measured time.
The networks and tile sizes come from the experiment configs, so the figures follow them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

from unet.model.loss import weighted_cross_entropy
from unet.model.network import UNet, center_crop

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = {"paper": "isbi_paper", "isbi_cpu": "isbi_cpu"}


def experiment_config(name: str, data_dir: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={EXPERIMENTS[name]}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.paths.data_dir = data_dir
        cfg.paths.output_dir = "/tmp/unet-benchmark"
    return cfg


def train_step_flops(net_config: dict, tile: int, batch: int) -> int:
    with torch.device("meta"):
        net = UNet(**net_config)
        x = torch.empty(batch, net_config["in_channels"], tile, tile)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops()


def model_step_time(net_config: dict, tile: int, batch: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    net = UNet(**net_config).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    x = torch.randn(batch, net_config["in_channels"], tile, tile, device=device)
    target = torch.randint(0, net_config["num_classes"], (batch, tile, tile), device=device)
    weight = torch.rand(batch, tile, tile, device=device)

    def step():
        logits = net(x)
        size = tuple(logits.shape[-2:])
        loss = weighted_cross_entropy(logits, center_crop(target, size), center_crop(weight, size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


class StepTimer(L.Callback):
    """Wall time per training step, skipping the first ``warmup`` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.steps += 1
        self.end = time.perf_counter()

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / self.steps


def full_loop_time(cfg, steps: int, device: str) -> float:
    L.seed_everything(0, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    timer = StepTimer(warmup=1)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=os.environ.get("UNET_DATA_DIR", "data"))
    args = parser.parse_args()

    hardware = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"device: {args.device} ({hardware}); torch {torch.__version__}")
    print(
        f"{'net':<10} {'tile':>5} {'batch':>5} {'GFLOP/step':>10} {'measurement':<11} "
        f"{'s/step':>8} {'tiles/s':>8} {'GFLOP/s':>8}"
    )
    for name in args.nets:
        cfg = experiment_config(name, args.data_dir)
        net_config = UNet(**{k: v for k, v in cfg.model.net.items() if k != "_target_"})
        net_config = net_config.config.to_dict()
        tile, batch = cfg.data.tile_size, cfg.data.batch_size
        flops = train_step_flops(net_config, tile, batch)
        for label, seconds in (
            ("model step", model_step_time(net_config, tile, batch, args.steps, args.device)),
            ("full loop", full_loop_time(cfg, args.steps, args.device)),
        ):
            print(
                f"{name:<10} {tile:>5} {batch:>5} {flops / 1e9:>10.1f} {label:<11} {seconds:>8.3f} "
                f"{batch / seconds:>8.2f} {flops / seconds / 1e9:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
