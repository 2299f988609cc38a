"""Peak memory and throughput of streamed (OME-Zarr) against in-memory prediction.

    python benchmarks/stream_memory.py [--size 16384] [--compare-size 2048] [--chunk 1024]
        [--tile 508] [--memory-gb 1] [--sections 1]
    python benchmarks/stream_memory.py --budget-table [--nets small,isbi_cpu,paper]
        [--shapes 2048x2048,12288x12288,4096x65536] [--max-rows 2048] [--compare-src PATH]

``--budget-table``: peak resident memory of streamed prediction at ``--memory-gb`` (tile
size and batch chosen by the planner) for each net and image shape, one process per case,
and the growth over the first shape. ``--max-rows`` crops the height of larger shapes (the
band's memory depends on the width; the statistics pass reads blocks): a shorter run.
``--time-limit S`` stops every shape after the first after S seconds of prediction and
reports the peak so far (the planner gives every column window of a wide image the same
band and tiles, so the peak is reached in the first window). ``--compare-src`` also runs
the first shape with the code of another checkout's ``src`` (e.g. the main branch) for
throughput. Nets: ``small`` (4 base channels, depth 2, valid),
``isbi_cpu`` (below), ``paper`` (64 base channels, depth 4, valid); random weights.

The isbi_cpu network (``configs/experiment/isbi_cpu.yaml``: depth 4, valid convs, 16 base
channels, batch norm; random weights, eval mode). Each measurement runs in its own process
(peak resident memory is per process, ``ru_maxrss``):

- ``stream``, size x size: a synthetic uint16 image written chunk by chunk to a zarr store
  (never whole in memory), predicted by ``unet.predict.zarr.route.predict_to_zarr`` into a
  float16 OME-Zarr store, without labels; with ``--sections N``, a (z, y, x) stack of N
  such sections into one (z, y, x) store (memory should not grow with N);
- ``stream`` and ``memory`` (``unet.inference.image.predict_image``, today's path, the image and
  its (K, H, W) float32 map in memory) on a compare-size image that fits, for throughput.
Megapixels/s count the whole run (statistics pass, reading, writing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from unet.inference.machine import cpu_model


def isbi_cpu_net(name: str = "isbi_cpu"):
    from unet.model.network import UNet

    torch.manual_seed(0)
    kwargs = {
        "small": dict(base_channels=4, depth=2),
        "isbi_cpu": dict(base_channels=16, batch_norm=True),
        "paper": dict(base_channels=64),
    }[name]
    return UNet(dropout=0.0, **kwargs).eval()


def synthetic_rows(y0: int, y1: int, w: int, x0: int = 0) -> np.ndarray:
    """Rows y0..y1-1, columns x0..w-1 of a smooth uint16 test image (the same whatever the
    chunking). Separable: a column and a row vector, no full-size coordinate grids."""
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, w, dtype=np.float32)[None, :]
    return (1000 + 300 * np.sin(yy / 23.0) * np.cos(xx / 31.0)).astype(np.uint16)


def write_input(path: Path, size, chunk: int, sections: int = 1) -> None:
    """A (y, x) OME-Zarr image, or a (z, y, x) stack of ``sections`` (> 1) such images."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    names = "zyx" if sections > 1 else "yx"
    axes = [{"name": a, "type": "space"} for a in names]
    scale = [{"type": "scale", "scale": [1.0] * len(names)}]
    datasets = [{"path": "0", "coordinateTransformations": scale}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    h, w = (size, size) if isinstance(size, int) else size
    shape, chunks = (sections, h, w), (1, chunk, chunk)
    array = group.create_array(
        "0", shape=shape[-len(names) :], chunks=chunks[-len(names) :], dtype="uint16"
    )
    # chunk by chunk: the writer's memory (part of this process's peak) stays one chunk
    for z in range(sections):
        for y in range(0, h, chunk):
            for x in range(0, w, chunk):
                rows = synthetic_rows(y, min(y + chunk, h), min(x + chunk, w), x)
                where = (slice(y, y + chunk), slice(x, x + chunk))
                array[(z, *where) if sections > 1 else where] = rows + np.uint16(100 * z)


def run_one(mode: str, size: int, chunk: int, tile: int, memory_gb: float, sections: int) -> dict:
    from unet.inference.tiler import Tiler

    net, tiler = isbi_cpu_net(), Tiler(tile_size=tile, memory_gb=memory_gb)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "stream":
            from unet.predict.zarr.route import predict_to_zarr

            write_input(Path(tmp) / "in.zarr", size, chunk, sections)
            start = time.perf_counter()
            predict_to_zarr(
                net,
                Path(tmp) / "in.zarr",
                Path(tmp) / "out.zarr",
                chunk=chunk,
                tiler=tiler,
                labels=False,
                progress=False,
            )
        else:
            from unet.inference.image import predict_image

            sections = 1
            image = synthetic_rows(0, size, size)
            start = time.perf_counter()
            predict_image(net, image, tiler)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "mode": mode,
        "size": size,
        "sections": sections,
        "seconds": seconds,
        "peak_gb": peak / 2**30,
        "megapixels_per_second": sections * size * size / 1e6 / seconds,
    }


def stop_after(seconds: float, start: float, base: int) -> None:
    """After ``seconds``, print the case's JSON so far (peak and time, ``stopped``) and end
    the process at once (its stores stay in ``TMPDIR``, which :func:`budget_table` gives
    each case and removes): every column window of a wide image has the same band and
    tiles, so the peak is reached in the first."""

    def report() -> None:
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = {"seconds": elapsed, "peak_gb": peak / 2**30, "before_gb": base / 2**30}
        print(json.dumps(result | {"megapixels_per_second": float("nan"), "stopped": True}))
        sys.stdout.flush()
        os._exit(0)

    timer = threading.Timer(seconds, report)
    timer.daemon = True
    timer.start()


def run_budget_case(
    net_name: str, shape, chunk: int, memory_gb: float, time_limit: float | None = None
) -> dict:
    """One streamed prediction of a (h, w) image with ``net_name`` at ``memory_gb``
    (stopped after ``time_limit`` seconds of prediction, if given)."""
    from unet.inference.tiler import Tiler
    from unet.predict.zarr.route import predict_to_zarr

    net = isbi_cpu_net(net_name)
    with tempfile.TemporaryDirectory() as tmp:
        write_input(Path(tmp) / "in.zarr", shape, chunk)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        if time_limit:
            stop_after(time_limit, start, base)
        predict_to_zarr(
            net,
            Path(tmp) / "in.zarr",
            Path(tmp) / "out.zarr",
            chunk=chunk,
            tiler=Tiler(memory_gb=memory_gb),
            labels=False,
            progress=False,
        )
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": seconds,
        "peak_gb": peak / 2**30,
        "before_gb": base / 2**30,
        "megapixels_per_second": shape[0] * shape[1] / 1e6 / seconds,
    }


def budget_table(args) -> None:
    """Peak memory per net and shape (one subprocess each); throughput against --compare-src."""
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    shapes = [(min(h, args.max_rows) if i else h, w) for i, (h, w) in enumerate(shapes)]
    sources = [("this", str(Path(__file__).resolve().parents[1] / "src"))]
    if args.compare_src:
        sources.append(("compare", args.compare_src))
    for net in args.nets.split(","):
        first = None
        for i, shape in enumerate(shapes):
            for label, src in sources if i == 0 else sources[:1]:
                command = [sys.executable, __file__, "--case", net, f"{shape[0]}x{shape[1]}"]
                command += ["--chunk", str(args.chunk), "--memory-gb", str(args.memory_gb)]
                if args.time_limit and i:
                    command += ["--time-limit", str(args.time_limit)]
                with tempfile.TemporaryDirectory() as tmp:
                    env = dict(os.environ, PYTHONPATH=src, TMPDIR=tmp)
                    done = subprocess.run(
                        command, check=True, capture_output=True, text=True, env=env
                    )
                r = json.loads(done.stdout.strip().splitlines()[-1])
                first = first if first is not None or label != "this" else r["peak_gb"]
                rate = "stopped" if r.get("stopped") else f"{r['megapixels_per_second']:.3f} Mpx/s"
                print(
                    f"{net:8s} {label:7s} {shape[0]:5d} x {shape[1]:5d}: {r['seconds']:7.1f} s, "
                    f"{rate}, peak {r['peak_gb']:.2f} GB "
                    f"(+{(r['peak_gb'] - first) * 1024:.0f} MB over the first shape)",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--compare-size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=508)
    parser.add_argument("--memory-gb", type=float, default=1.0)
    parser.add_argument("--sections", type=int, default=1, help="stack this many (streamed runs)")
    parser.add_argument("--one", choices=["stream", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--budget-table", action="store_true")
    parser.add_argument("--nets", default="small,isbi_cpu,paper")
    parser.add_argument("--shapes", default="2048x2048,12288x12288,4096x65536")
    parser.add_argument("--max-rows", type=int, default=1 << 30)
    parser.add_argument("--compare-src", help="another checkout's src, for throughput")
    parser.add_argument(
        "--time-limit", type=float, help="stop each shape after the first after this many seconds"
    )
    args = parser.parse_args()
    if args.case:
        shape = tuple(int(v) for v in args.case[1].split("x"))
        result = run_budget_case(args.case[0], shape, args.chunk, args.memory_gb, args.time_limit)
        print(json.dumps(result))
        return
    if args.budget_table:
        print(f"{cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()}")
        budget_table(args)
        return
    if args.one:
        result = run_one(args.one, args.size, args.chunk, args.tile, args.memory_gb, args.sections)
        print(json.dumps(result))
        return
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    runs = [("stream", args.size), ("memory", args.compare_size), ("stream", args.compare_size)]
    runs = list(dict.fromkeys(runs))  # --compare-size equal to --size: each run once
    for mode, size in runs:
        command = [
            sys.executable,
            __file__,
            "--one",
            mode,
            "--size",
            str(size),
            "--chunk",
            str(args.chunk),
            "--tile",
            str(args.tile),
            "--memory-gb",
            str(args.memory_gb),
            "--sections",
            str(args.sections),
        ]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        stack = f"{result['sections']} x " if result["sections"] > 1 else ""
        print(
            f"{mode:6s} {stack}{size:6d}^2: {result['seconds']:8.1f} s, "
            f"{result['megapixels_per_second']:.3f} Mpx/s, peak {result['peak_gb']:.2f} GB"
        )


if __name__ == "__main__":
    main()
