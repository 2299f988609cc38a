"""GPU check: the paper's training on a GPU, its speed, and the tiler's memory plan, in one go.

    UNET_DATA_DIR=../shared/data python3 benchmarks/gpu_check.py [--out FOLDER]
        [--train-minutes 4] [--smoke]

On a machine with a CUDA GPU, in under 10 minutes, it measures (in this order, the results
file rewritten after each part, so a run cut short keeps what it measured):

1. **Training speed.** Tiles/s of the paper network (``UNet()`` defaults, 572x572 tiles) at
   batch 1, 4 and 8, fp32 and bf16 autocast: forward, weighted loss, backward and an SGD
   step on random tiles already on the GPU, timed with ``torch.cuda.synchronize`` after
   warm-up steps; GFLOP/s counts a step as 3x the forward pass (the backward pass costs two).
2. **Inference.** The ISBI 2012 ``test-volume.tif`` (all its slices) through
   ``unet.inference.tiler.Tiler`` with the tile plan chosen for the GPU's free memory: the whole
   stack
   in fp32 and bf16, and the predict path (``unet.predict.files.predict_files``: reading the
   TIFF, standardising, writing ``probabilities.tif``). The weights are random: the time
   does not depend on them.
3. **Memory.** The tiler plans tile size and batch from ``unet.inference.tiler.tile_memory_bytes``,
   whose constants were measured on a CPU. Its estimate for one forward pass (per tile x
   tiles per pass) against ``torch.cuda.max_memory_allocated`` (above the weights and the
   input), for tiles of 572 and 1084 px at batch 1, 4 and 8, and for the plan of step 2.
4. **Training run.** ``python src/train.py experiment=isbi_paper trainer.precision=bf16-mixed``
   through the real entry point, stopped by ``trainer.max_time`` after ``--train-minutes``,
   then its final validation (``metrics.json``: the validation slices, not the test set).

Everything goes to ``FOLDER/gpu_check.json`` and ``FOLDER/gpu_check.md`` (a new folder; an
existing one is refused). ``--smoke`` runs the same code on the CPU with a tiny network
(4 base channels, depth 3), 124 px tiles, batch 1 and 2, one test slice and a few training
steps on 96 px crops, in well under a minute; the test suite runs it. Without a GPU and
without ``--smoke`` it stops with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile
import torch
from omegaconf import OmegaConf

from unet.data.readers import read_tiff
from unet.data.samples import standardize
from unet.inference import machine
from unet.inference.checkpoint import read_checkpoint
from unet.inference.tiler import Tiler, tile_memory_bytes
from unet.inference.tta import predict_probabilities
from unet.model.loss import weighted_cross_entropy
from unet.model.network import UNet, forward_flops
from unet.predict.files import predict_files

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Settings:
    """What the check runs: the full GPU check or the CPU smoke test."""

    device: str
    net: dict = field(default_factory=dict)  # UNet arguments; {} = the paper's network
    tile: int = 572  # training tile (paper)
    batches: tuple[int, ...] = (1, 4, 8)
    warmup: int = 3
    steps: int = 10
    memory_tiles: tuple[int, ...] = (572, 1084)
    slices: int | None = None  # test slices to use; None = all
    train_overrides: tuple[str, ...] = ()


FULL = Settings(device="cuda")
SMOKE = Settings(
    device="cpu",
    net={"base_channels": 4, "depth": 3},
    tile=124,
    batches=(1, 2),
    warmup=1,
    steps=2,
    memory_tiles=(124,),
    slices=1,
    train_overrides=(
        "trainer.accelerator=cpu",
        "model.net.base_channels=4",
        "model.net.depth=3",
        "data.tile_size=124",
        "data.crop=96",
        "data.num_workers=0",
        "data.samples_per_epoch=4",
        "trainer.max_epochs=1",
    ),
)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """bf16 autocast, or nothing for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()


class PeakMemory:
    """Peak CUDA memory allocated inside a block, above what was allocated at its start.

    On the CPU there is no allocator peak to read: ``bytes`` stays None.
    """

    def __init__(self, device: str):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base


def free_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def train_speed(settings: Settings, batch: int, precision: str) -> dict:
    """Tiles/s of forward + weighted loss + backward + SGD step at one batch size."""
    device, tile = settings.device, settings.tile
    row = {"tile": tile, "batch": batch, "precision": precision}
    free_memory(device)
    try:
        with PeakMemory(device) as peak:  # weights, optimizer state and activations
            torch.manual_seed(0)
            net = UNet(**settings.net).to(device).train()
            opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)  # paper's optimiser
            out = net.output_shape((tile, tile))
            x = torch.randn(batch, net.config.in_channels, tile, tile, device=device)
            target = torch.randint(0, net.config.num_classes, (batch, *out), device=device)
            weight = 1 + 9 * torch.rand(batch, *out, device=device)  # (B, H', W') like w(x)

            def step():
                with autocast(device, precision):
                    loss = weighted_cross_entropy(net(x), target, weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(settings.warmup):  # cuDNN algorithm choice, allocator growth
                step()
            sync(device)
            start = time.perf_counter()
            for _ in range(settings.steps):
                step()
            sync(device)
            seconds = (time.perf_counter() - start) / settings.steps
    except torch.OutOfMemoryError:
        free_memory(device)
        return row | {"error": "out of memory"}
    flops = 3 * forward_flops(net.config, (tile, tile), batch)
    return row | {
        "seconds_per_step": seconds,
        "tiles_per_second": batch / seconds,
        "gflop_per_second": flops / seconds / 1e9,
        "peak_memory_gib": gib(peak.bytes),
    }


def read_test_volume(data_dir: Path, slices: int | None) -> tuple[Path, np.ndarray]:
    """The ISBI test volume's path and its first ``slices`` slices (all for None), (N, H, W)."""
    path = Path(data_dir) / "isbi2012" / "test-volume.tif"
    volume = read_tiff(path)  # any slice count (the official file has 30)
    volume = volume[None] if volume.ndim == 2 else volume
    return path, volume[:slices] if slices else volume


def plan_summary(net: UNet, tiler: Tiler, size: tuple[int, int], images: int) -> dict:
    """The tiler's plan for ``images`` images of ``size``, with its memory estimate."""
    plan = tiler.plan(net, size)
    per_tile = tile_memory_bytes(net, max(plan.rows.in_sizes), max(plan.cols.in_sizes))
    tiles = plan.num_tiles * images
    return {
        "tile_shapes": {f"{h}x{w}": n for (h, w), n in plan.tile_shapes().items()},
        "tiles": tiles,
        "batch_size": plan.batch_size,
        "budget_gib": gib(tiler.memory_budget(net)),
        "estimate_gib": gib(per_tile * min(plan.batch_size, tiles)),
    }


def inference_stack(net: UNet, images: torch.Tensor, precision: str, device: str) -> dict:
    """Time the whole stack through the tiler with the plan chosen for this device."""
    tiler = Tiler()
    images = images.to(device)
    with autocast(device, precision):
        predict_probabilities(net, images[:1], tiler)  # warm-up
        free_memory(device)
        sync(device)
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            prob = predict_probabilities(net, images, tiler)
            sync(device)
            seconds = time.perf_counter() - start
    n, _, h, w = images.shape
    return {
        "what": "stack through Tiler (predict_probabilities)",
        "precision": precision,
        "slices": n,
        "size": f"{h}x{w}",
        "seconds": seconds,
        "slices_per_second": n / seconds,
        "megapixels_per_second": n * h * w / seconds / 1e6,
        "peak_memory_gib": gib(peak.bytes),
        "finite": bool(torch.isfinite(prob).all()),
        **plan_summary(net, tiler, (h, w), n),
    }


def inference_predict_path(net: UNet, source: Path, out: Path, settings: Settings) -> dict:
    """Time the predict path (read, standardise, tile, write probabilities.tif), bf16."""
    start = time.perf_counter()
    summary = predict_files(
        net,
        source,
        out,
        device=settings.device,
        precision="bf16",
        labels=False,
        overlays=False,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "what": "predict path (unet.predict.files.predict_files, TIFF in and out)",
        "precision": "bf16",
        "slices": summary["frames"],
        "size": ", ".join(f"{h}x{w}" for h, w in summary["sizes"]),
        "seconds": seconds,
        "slices_per_second": summary["frames"] / seconds,
        "megapixels_per_second": summary["megapixels_per_second"],
    }


def memory_check(net: UNet, tile: int, batch: int, precision: str, device: str) -> dict:
    """The tiler's estimate for ``batch`` tiles of ``tile`` px in one pass, against the peak."""
    row = {"tile": tile, "batch": batch, "precision": precision}
    out = net.output_shape((tile, tile))
    # `batch` images that one tile each covers exactly: one forward pass of `batch` tiles
    images = torch.randn(batch, net.config.in_channels, *out, device=device)
    tiler = Tiler(tile_size=tile, batch_size=batch)
    estimate = tile_memory_bytes(net, tile, tile) * batch
    free_memory(device)
    try:
        with autocast(device, precision), PeakMemory(device) as peak:
            tiler(net, images)
    except torch.OutOfMemoryError:
        free_memory(device)
        return row | {"estimate_gib": gib(estimate), "error": "out of memory"}
    return row | {
        "estimate_gib": gib(estimate),
        "measured_gib": gib(peak.bytes),
        "measured_over_estimate": None if peak.bytes is None else peak.bytes / estimate,
    }


def max_time(seconds: int) -> str:
    """Lightning's ``max_time`` string, DD:HH:MM:SS."""
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def training_run(out: Path, minutes: float, settings: Settings, data_dir: Path) -> dict:
    """``src/train.py experiment=isbi_paper`` in bf16 for a fixed time; its final metrics."""
    run_dir = out / "train"
    seconds = max(1, round(minutes * 60))
    limit = max_time(seconds)
    command = [
        sys.executable,
        "src/train.py",
        "experiment=isbi_paper",
        "trainer.precision=bf16-mixed",
        f"trainer.max_time={limit}",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        *settings.train_overrides,
    ]
    env = dict(os.environ, UNET_DATA_DIR=str(data_dir))
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        try:  # start-up, weight maps and the final validation get 5 minutes beyond max_time
            returncode = subprocess.run(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=seconds + 300,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = "timed out"
    wall = time.perf_counter() - start
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return {
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "wall_seconds": wall,
        "max_time": limit,
        "metrics": metrics,
        **steps_and_epochs(run_dir),
        "log": str(out / "train.log"),
    }


def steps_and_epochs(run_dir: Path) -> dict:
    """Optimizer steps (the ``global_step`` of the run's ``last.ckpt``), and the epochs they
    make (tiles seen / ``data.samples_per_epoch``)."""
    last, config = run_dir / "checkpoints" / "last.ckpt", run_dir / ".hydra" / "config.yaml"
    if not last.is_file():
        return {"steps": None, "epochs": None}
    steps = int(read_checkpoint(last).get("global_step", 0))
    if not config.is_file():
        return {"steps": steps, "epochs": None}
    data = OmegaConf.load(config).data
    return {"steps": steps, "epochs": steps * data.batch_size / data.samples_per_epoch}


def fmt(value, places: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{places}f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    """The results as Markdown tables."""
    hw = results["hardware"]
    gpu = hw.get("gpu") or "no GPU"
    if hw.get("gpu"):
        gpu += f" ({hw['gpu_memory_gib']} GiB, CUDA {hw['cuda']}, cuDNN {hw['cudnn']})"
    lines = [
        f"# GPU check ({results['mode']}), {results['started']}",
        "",
        f"- **Device:** {results['device']}; {gpu}",
        f"- **Host:** {hw['cpu']}, {hw['usable_cores']} of {hw['cores']} cores, "
        f"{hw['memory_gib']} GiB; torch {hw['torch']}; load average at start "
        f"{results['load_average_start']}",
        f"- **Network:** {results['network']}",
        f"- **cuDNN:** TF32 allowed {results['cudnn_allow_tf32']}, "
        f"benchmark mode {results['cudnn_benchmark']} (the defaults training uses)",
        f"- **Took:** {fmt(results.get('seconds'), 0)} s; "
        f"by part (s): {results.get('part_seconds')}",
        "",
    ]
    lines += speed_lines(results) + inference_lines(results)
    lines += memory_lines(results) + training_lines(results)
    return "\n".join(lines) + "\n"


def speed_lines(results: dict) -> list[str]:
    """The training-speed table."""
    lines = [
        "## Training speed (forward + weighted loss + backward + SGD step)",
        "",
        "| tile | batch | precision | s/step | tiles/s | GFLOP/s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.get("train_speed", []):
        if "error" in r:
            lines.append(f"| {r['tile']} | {r['batch']} | {r['precision']} | {r['error']} ||||")
            continue
        lines.append(
            f"| {r['tile']} | {r['batch']} | {r['precision']} | {fmt(r['seconds_per_step'], 4)} "
            f"| {fmt(r['tiles_per_second'], 2)} | {fmt(r['gflop_per_second'], 0)} "
            f"| {fmt(r['peak_memory_gib'], 2)} |"
        )
    return lines


def inference_lines(results: dict) -> list[str]:
    """The test-volume inference table."""
    lines = [
        "",
        "## Inference of the ISBI 2012 test volume",
        "",
        "| path | precision | slices | size | seconds | slices/s | MP/s | tiles, batch | "
        "estimate GiB | peak GiB | budget GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.get("inference", []):
        plan = f"{r['tile_shapes']}, {r['batch_size']}" if "tile_shapes" in r else ""
        lines.append(
            f"| {r['what']} | {r['precision']} | {r['slices']} | {r['size']} "
            f"| {fmt(r['seconds'], 2)} | {fmt(r['slices_per_second'], 1)} "
            f"| {fmt(r['megapixels_per_second'], 1)} | {plan} | {fmt(r.get('estimate_gib'), 2)} "
            f"| {fmt(r.get('peak_memory_gib'), 2)} | {fmt(r.get('budget_gib'), 1)} |"
        )
    return lines


def memory_lines(results: dict) -> list[str]:
    """The tiler's memory estimate against the measured peak."""
    lines = [
        "",
        "## Tiler memory estimate against the measured peak (one forward pass)",
        "",
        "`unet.inference.tiler.tile_memory_bytes` x tiles per pass, against "
        "`torch.cuda.max_memory_allocated` above the weights and input.",
        "",
        "| tile | batch | precision | estimate GiB | measured GiB | measured / estimate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.get("memory", []):
        measured = r.get("error") or fmt(r.get("measured_gib"), 2)
        lines.append(
            f"| {r['tile']} | {r['batch']} | {r['precision']} | {fmt(r['estimate_gib'], 2)} "
            f"| {measured} | {fmt(r.get('measured_over_estimate'), 2)} |"
        )
    return lines


def training_lines(results: dict) -> list[str]:
    """The training run's summary and final validation metrics."""
    train = results.get("training")
    lines: list[str] = []
    if train:
        lines += [
            "",
            "## Training run through the entry point (validation slices, not the test set)",
            "",
            f"`python {train['command']}`: exit status {train['returncode']}, "
            f"{fmt(train['wall_seconds'], 0)} s wall, {train['steps']} steps "
            f"({fmt(train['epochs'], 1)} epochs; log: `{train['log']}`).",
            "",
            "| metric (final validation of the best checkpoint) | value |",
            "| --- | --- |",
        ]
        for key, value in sorted((train["metrics"] or {}).items()):
            if isinstance(value, int | float):
                lines.append(f"| `{key}` | {fmt(float(value), 4)} |")
    return lines


class Report:
    """The results dict, written as JSON and Markdown after every part."""

    def __init__(self, out: Path, results: dict):
        self.out, self.results = out, results

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def run_check(settings: Settings, out: Path, data_dir: Path, train_minutes: float) -> dict:
    """Run every part of the check; returns the results (also written to ``out``)."""
    device = settings.device
    start = time.perf_counter()
    net = UNet(**settings.net).to(device).eval()
    results = {
        "mode": "smoke (CPU, tiny network)" if settings is SMOKE else "full",
        "device": device,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": machine.describe(),
        "load_average_start": machine.load_average(),
        "settings": asdict(settings),
        "network": ", ".join(f"{k}={v}" for k, v in net.config.to_dict().items()),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    report = Report(out, results)
    parts = results["part_seconds"] = {}

    def done(part: str, since: float) -> float:
        parts[part] = round(time.perf_counter() - since, 1)
        report.write()
        return time.perf_counter()

    print("1/4 training speed", flush=True)
    results["train_speed"] = [
        train_speed(settings, batch, precision)
        for precision in PRECISIONS
        for batch in settings.batches
    ]
    lap = done("train_speed", start)

    print("2/4 inference of the test volume", flush=True)
    source, volume = read_test_volume(data_dir, settings.slices)
    if settings.slices:  # the predict path reads a file: these slices as a TIFF
        source = out / "test-slices.tif"
        tifffile.imwrite(source, volume)
    images = torch.stack([torch.from_numpy(standardize(s)) for s in volume])[:, None]  # (N,1,H,W)
    results["inference"] = [inference_stack(net, images, p, device) for p in PRECISIONS]
    results["inference"].append(inference_predict_path(net, source, out / "predict", settings))
    lap = done("inference", lap)

    print("3/4 tiler memory estimate", flush=True)
    results["memory"] = [
        memory_check(net, tile, batch, precision, device)
        for tile in settings.memory_tiles
        for batch in settings.batches
        for precision in PRECISIONS
    ]
    lap = done("memory", lap)

    print(f"4/4 training run (about {train_minutes} min)", flush=True)
    del net
    free_memory(device)  # the training process needs the GPU's memory
    results["training"] = training_run(out, train_minutes, settings, data_dir)
    results["seconds"] = time.perf_counter() - start
    results["load_average_end"] = machine.load_average()
    done("training", lap)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="a new folder for the results")
    parser.add_argument("--train-minutes", type=float, default=None, help="default 4 (smoke: 0.5)")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("UNET_DATA_DIR", "data"))
    parser.add_argument("--smoke", action="store_true", help="tiny network on the CPU")
    args = parser.parse_args(argv)

    if not args.smoke and not torch.cuda.is_available():
        print(
            f"error: no CUDA GPU is visible (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False). This check measures a GPU: run it on a "
            "machine with one and the CUDA build of torch (docs/prediction.md, GPU install), "
            "or pass --smoke to run the same code on the CPU with a tiny network.",
            file=sys.stderr,
        )
        return 2
    test_volume = args.data_dir / "isbi2012" / "test-volume.tif"
    if not test_volume.is_file():
        print(
            f"error: {test_volume} not found; set UNET_DATA_DIR or --data-dir to the folder "
            "that holds isbi2012/ (docs/data.md)",
            file=sys.stderr,
        )
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or Path("outputs/gpu_check") / stamp
    if out.exists():
        print(
            f"error: {out} already exists; not overwriting it (choose a new --out)", file=sys.stderr
        )
        return 2
    out.mkdir(parents=True)
    out = out.resolve()
    settings = SMOKE if args.smoke else FULL
    minutes = args.train_minutes if args.train_minutes is not None else (0.5 if args.smoke else 4)
    results = run_check(settings, out, args.data_dir.resolve(), minutes)
    print(markdown(results))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0 if results["training"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
