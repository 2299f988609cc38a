"""Screenshots of the napari plugin for docs/napari.md: python scripts/napari_screenshots.py

Opens a headless viewer (Qt offscreen; the canvas needs OpenGL, so without a display this
starts Xvfb if it is installed), loads the synthetic sample, fine-tunes a small random
network on the sample's labels with the Fine-tune widget (a minute on 2 CPU cores), then
segments the sample with the result in the Segment widget, and saves
docs/images/napari_finetune.png and docs/images/napari_segment.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def ensure_display() -> subprocess.Popen | None:
    """An X display for OpenGL (offscreen Qt draws the canvas through it)."""
    if os.environ.get("DISPLAY") or shutil.which("Xvfb") is None:
        return None
    server = subprocess.Popen(
        ["Xvfb", ":93", "-screen", "0", "1400x1000x24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ["DISPLAY"] = ":93"
    time.sleep(2)
    return server


def random_checkpoint(path: Path) -> Path:
    """A probed checkpoint of an untrained depth-3, 8-channel net (the starting point)."""
    import torch

    from unet.model.fingerprint import record_probe
    from unet.model.network import UNet

    torch.manual_seed(0)
    net = UNet(base_channels=8, depth=3, dropout=0.0, batch_norm=True).eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    saved = {"state_dict": state, "net_config": net.config.to_dict()}
    saved["net_probe"] = record_probe(net)
    torch.save(saved, path)
    return path


def wait(app, done, seconds: float = 600) -> None:
    """Run the Qt event loop until ``done()`` or ``seconds`` pass."""
    end = time.monotonic() + seconds
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(viewer, app, name: str) -> None:
    from PIL import Image

    viewer.reset_view()
    end = time.monotonic() + 1.0  # let the canvas redraw at its new size
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    picture = viewer.screenshot(canvas_only=False, flash=False)
    IMAGES.mkdir(parents=True, exist_ok=True)
    small = Image.fromarray(picture).convert("RGB").quantize(128)  # small PNGs for the docs
    small.save(IMAGES / name, optimize=True)
    print(f"wrote {IMAGES / name} {picture.shape[1]}x{picture.shape[0]}")


def main() -> None:
    server = ensure_display()
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        from unet.napari.finetune import FinetuneWidget
        from unet.napari.sample import sample_cells
        from unet.napari.segment import SegmentWidget

        work = Path(tempfile.mkdtemp(prefix="unet-napari-"))
        viewer = napari.Viewer(show=False)
        viewer.window.resize(1400, 820)
        app = QApplication.instance()
        for data, kwargs, kind in sample_cells():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        viewer.layers["unet sample labels"].visible = True
        tuner = FinetuneWidget(viewer)
        viewer.window.add_dock_widget(tuner, name="Fine-tune")
        tuner.pairs[0][0].setCurrentText("unet sample cells")
        tuner.pairs[0][1].setCurrentText("unet sample labels")
        tuner.model_path.edit.setText(str(random_checkpoint(work / "start.ckpt")))
        tuner.output.setText(str(work / "runs"))
        tuner.epochs.setValue(int(os.environ.get("EPOCHS", "12")))
        tuner.tiles.setValue(16)
        tuner.start()
        wait(app, lambda: tuner.worker is None)
        save(viewer, app, "napari_finetune.png")
        checkpoint = tuner.model_path.path
        viewer.close()
        viewer = napari.Viewer(show=False)  # a fresh window for the second picture
        viewer.window.resize(1400, 820)
        for data, kwargs, kind in sample_cells():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        segment = SegmentWidget(viewer)
        viewer.window.add_dock_widget(segment, name="Segment")
        if not segment.load_model(checkpoint):
            sys.exit("no trained checkpoint to segment with")
        segment.image.setCurrentText("unet sample cells")
        segment.segment()
        wait(app, lambda: segment.worker is None)
        viewer.layers["unet sample cells probability"].visible = False
        save(viewer, app, "napari_segment.png")
        viewer.close()
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
