"""Fixtures of the napari plugin's tests (tests/napari/), registered by
tests/conftest.py (``pytest_plugins``).

napari and Qt are imported inside the fixtures: the rest of the suite loads this module
too and must run where napari is not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet.inference.image import predict_image
from unet.model.fingerprint import record_probe
from unet.model.network import UNet

WAIT_MS = 60_000


def _napari_checkpoint(path: Path, in_channels: int = 1, image=None) -> Path:
    """A probed checkpoint of a 2-level, 4-channel net with batch norm; with ``image``, its
    stored threshold is the median cell probability there (an untrained net's
    probabilities sit near 0.5: the stored setting makes cells of them)."""
    torch.manual_seed(0)
    net = UNet(in_channels=in_channels, base_channels=4, depth=2, dropout=0.0, batch_norm=True)
    net.eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    saved = {
        "state_dict": state,
        "net_config": net.config.to_dict(),
        "net_probe": record_probe(net),
    }
    if image is not None:
        cells = predict_image(net, image)[1]
        saved["postprocess"] = {"threshold": float(np.median(cells)), "min_area": 4}
    torch.save(saved, path)
    return path


@pytest.fixture(scope="session")
def napari_checkpoint() -> Callable[..., Path]:
    """``napari_checkpoint(path, in_channels=1, image=None)``: :func:`_napari_checkpoint`."""
    return _napari_checkpoint


@pytest.fixture(scope="module")
def isbi_slice_tif(data_dir, tmp_path_factory) -> Path:
    """The first ISBI 2012 training slice, 256 x 256, as a TIFF."""
    image = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif", key=0)[:256, :256]
    path = tmp_path_factory.mktemp("isbi") / "slice.tif"
    tifffile.imwrite(path, image)
    return path


@pytest.fixture(scope="module")
def napari_ckpt(tmp_path_factory, isbi_slice_tif) -> Path:
    """A napari test checkpoint whose stored threshold makes cells of ``isbi_slice_tif``."""
    image = tifffile.imread(isbi_slice_tif)
    return _napari_checkpoint(tmp_path_factory.mktemp("napari") / "tiny.ckpt", image=image)


def opengl_missing() -> str | None:
    """Why a real viewer cannot draw here, or None (vispy needs an OpenGL context)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if context.create() and context.makeCurrent(surface):
        context.doneCurrent()
        return None
    platform, display = os.environ.get("QT_QPA_PLATFORM"), os.environ.get("DISPLAY")
    return (
        f"no OpenGL context (QT_QPA_PLATFORM={platform}, DISPLAY={display}): a real napari "
        "viewer needs a display; run under xvfb-run -a"
    )


@pytest.fixture
def window(request, qapp):
    """A real napari.Viewer (Qt main window, vispy canvas), closed after the test."""
    why = None
    if not request.config.pluginmanager.has_plugin("napari"):
        why = "napari's pytest plugin (make_napari_viewer) is not registered"
    why = why or opengl_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why + " (CI must run the real-viewer tests)")
        pytest.skip(why)
    return request.getfixturevalue("make_napari_viewer")()


@pytest.fixture
def no_worker_left(qapp):
    """Every napari worker of a test has ended before the next test starts (a worker left
    running would call into widgets that later tests' teardown has deleted). The napari
    test modules use it on every test (``pytestmark``)."""
    yield
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(30_000), "a napari worker still runs"
    qapp.processEvents()


@pytest.fixture
def viewer(qtbot):
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture(params=["model", "window"])
def any_viewer(request, qtbot):
    """A ViewerModel (logic) and a real viewer with the widgets docked (what a user runs)."""
    from napari.components import ViewerModel

    return ViewerModel() if request.param == "model" else request.getfixturevalue("window")


def _dock(qtbot, viewer, widget):
    import napari

    if isinstance(viewer, napari.Viewer):
        viewer.window.add_dock_widget(widget, name=type(widget).__name__)
    else:
        qtbot.addWidget(widget)
    return widget


@pytest.fixture(scope="session")
def dock() -> Callable:
    """``dock(qtbot, viewer, widget)``: docks ``widget`` in a real viewer's window (which
    then owns it); else qtbot does."""
    return _dock


def _segmented(qtbot, viewer, ckpt, image, name="image", **layer):
    from unet.napari import segment

    widget = _dock(qtbot, viewer, segment.SegmentWidget(viewer))
    viewer.add_image(image, name=name, **layer)
    assert widget.load_model(str(ckpt))
    return widget


@pytest.fixture(scope="session")
def segmented() -> Callable:
    """``segmented(qtbot, viewer, ckpt, image, name="image", **layer)``: a docked Segment
    widget with ``ckpt`` loaded and ``image`` added as a layer."""
    return _segmented


def _run_segment(qtbot, widget) -> None:
    widget.segment()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


@pytest.fixture(scope="session")
def run_segment() -> Callable:
    """``run_segment(qtbot, widget)``: presses Segment and waits for its worker to end."""
    return _run_segment


@pytest.fixture(scope="session")
def excepthook_calls() -> Callable:
    """``excepthook_calls(monkeypatch)``: the exceptions that reach ``sys.excepthook``
    (napari shows them in a traceback dialog) from here on; call it in the test body:
    pytest-qt sets its own hook after the fixtures."""

    def hook(monkeypatch) -> list[tuple]:
        caught: list[tuple] = []
        monkeypatch.setattr(sys, "excepthook", lambda *exc: caught.append(exc))
        return caught

    return hook


@pytest.fixture
def notes():
    """The notifications napari's notification manager receives during the test."""
    from napari.utils.notifications import notification_manager

    received: list = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The lines the widgets show with show_error (instead of a notification)."""
    from unet.napari import finetune, segment, streamed, widgets

    shown: list[str] = []
    for module in (segment, finetune, widgets, streamed):
        monkeypatch.setattr(module, "show_error", shown.append)
    return shown
