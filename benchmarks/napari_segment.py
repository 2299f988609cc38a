"""The Segment widget against unet.predict.files.predict_files on one 2048 x 2048 image.

    python benchmarks/napari_segment.py [--size 2048] [--base-channels 16] [--depth 4]

Prints the CPU, seconds for each route and the longest interval the Qt event loop was
blocked while the widget predicted (a QTimer ticking every 10 ms; a viewer feels frozen
above ~100 ms). The network is the own-data recipe's architecture (experiment=folder_cpu:
depth 4, 16 base channels, batch norm), random weights; tta=none, 1 GB tile memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def checkpoint(folder: Path, depth: int, base: int) -> Path:
    import torch

    from unet.model.fingerprint import record_probe
    from unet.model.network import UNet

    torch.manual_seed(0)
    net = UNet(depth=depth, base_channels=base, dropout=0.0, batch_norm=True).eval()
    saved = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    saved |= {"net_config": net.config.to_dict(), "net_probe": record_probe(net)}
    torch.save(saved, folder / "net.ckpt")
    return folder / "net.ckpt"


def widget_run(app, ckpt: Path, image) -> tuple[float, float]:
    """(seconds, longest event-loop gap in seconds) of the Segment widget."""
    from napari.components import ViewerModel
    from qtpy.QtCore import QTimer

    from unet.napari.segment import SegmentWidget

    viewer = ViewerModel()
    widget = SegmentWidget(viewer)
    viewer.add_image(image, name="image")
    widget.load_model(str(ckpt))
    widget.tta.setCurrentText("none")
    ticks = [time.perf_counter()]
    longest = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        longest[0] = max(longest[0], now - ticks[0])
        ticks[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    start = time.perf_counter()
    widget.segment()
    while widget.worker is not None or "image labels" not in viewer.layers:
        app.processEvents()
        time.sleep(0.001)
    seconds = time.perf_counter() - start
    timer.stop()
    return seconds, longest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=16)
    args = parser.parse_args()
    import numpy as np
    import tifffile
    from qtpy.QtWidgets import QApplication

    from unet.inference.checkpoint import load_trained
    from unet.inference.tiler import Tiler
    from unet.napari.sample import cell_image
    from unet.predict.files import predict_files

    app = QApplication.instance() or QApplication([])
    folder = Path(tempfile.mkdtemp(prefix="unet-napari-bench-"))
    ckpt = checkpoint(folder, args.depth, args.base_channels)
    image = np.tile(cell_image(512)[0], (args.size // 512 + 1,) * 2)[: args.size, : args.size]
    tifffile.imwrite(folder / "image.tif", image)
    print(f"CPU: {cpu_model()}")
    print(f"image {args.size}x{args.size}, net depth {args.depth}, {args.base_channels} channels")
    seconds, gap = widget_run(app, ckpt, image)
    print(f"Segment widget: {seconds:.1f} s, event loop blocked at most {1000 * gap:.0f} ms")
    trained = load_trained(ckpt)
    start = time.perf_counter()
    predict_files(
        trained.net, folder / "image.tif", folder / "out", tiler=Tiler(memory_gb=1.0),
        progress=False, overlays=False,
    )  # fmt: skip
    print(f"predict_files: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
