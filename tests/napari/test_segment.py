"""The napari plugin's Segment widget: the same result as src/predict.py, relabelling
without predicting again, cancelling, closing the viewer mid-run, failures as notifications.

Widgets run on a ``napari.components.ViewerModel`` (the layer list and ``add_*`` methods
the widgets use, no canvas) and, for the cases a user meets, docked in a real
``napari.Viewer`` from napari's ``make_napari_viewer`` fixture, with pytest-qt's ``qtbot``
for the event loop and the worker threads. A real viewer needs OpenGL: under
``QT_QPA_PLATFORM=offscreen`` that means an X display (``xvfb-run -a``, as ``.ci/run``
does); without one those cases skip, and fail where ``CI`` is set. The shared fixtures
(viewers, the test checkpoint, ``segmented``, ``run_segment``) are in tests/conftest_napari.py.
"""

from __future__ import annotations

import dataclasses
import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported


import numpy as np
import pytest
import tifffile
import torch

napari = pytest.importorskip("napari", reason="napari not installed: pip install -e '.[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt not installed: pip install -e '.[napari]'")
pytest.importorskip("npe2", reason="npe2 not installed: pip install -e '.[napari]'")

from napari.utils.notifications import NotificationSeverity  # noqa: E402

from unet.napari import segment  # noqa: E402
from unet.napari.sample import cell_image  # noqa: E402
from unet.napari.segmentation import label_frames  # noqa: E402
from unet.predict.files import predict_files  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_worker_left")

WAIT_MS = 60_000


class Counting(torch.nn.Module):
    """A network that counts its forward passes (and can set a flag at pass ``at``)."""

    def __init__(self, net, at: int | None = None, flag=None):
        super().__init__()
        self.net, self.config, self.calls, self.at, self.flag = net, net.config, 0, at, flag

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            self.flag.set()
        return self.net(x)


class Gate(Counting):
    """Holds its first forward pass until released (a test acts during that tile)."""

    def __init__(self, net):
        super().__init__(net)
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        self.entered.set()
        self.release.wait(WAIT_MS / 1000)
        return super().forward(x)


class Failing(Counting):
    def forward(self, x):
        raise RuntimeError("CUDA out of memory (as a test)")


def test_segment_widget_equals_predict_path(
    qtbot, any_viewer, napari_ckpt, isbi_slice_tif, tmp_path, segmented, run_segment
):
    viewer, image = any_viewer, tifffile.imread(isbi_slice_tif)
    widget = segmented(qtbot, viewer, napari_ckpt, image)
    widget.tta.setCurrentText("flips8")
    run_segment(qtbot, widget)
    segmenter = widget.segmenter
    out = tmp_path / "predicted"
    predict_files(
        segmenter.trained.net, isbi_slice_tif, out, tiler=segmenter.tiler(widget.memory.value()),
        tta="flips8", postprocess=segmenter.postprocessing(), progress=False,
    )  # fmt: skip
    expected = tifffile.imread(out / "labels" / "slice.tif")
    labels = viewer.layers["image labels"].data
    assert expected.max() > 1  # several cells: the comparison can fail
    np.testing.assert_array_equal(labels, expected)
    probability = tifffile.imread(out / "probabilities.tif")
    np.testing.assert_array_equal(viewer.layers["image probability"].data, probability)


def test_threshold_relabels_without_predicting_again(
    qtbot, any_viewer, napari_ckpt, isbi_slice_tif, segmented, run_segment
):
    viewer = any_viewer
    widget = segmented(qtbot, viewer, napari_ckpt, tifffile.imread(isbi_slice_tif))
    counting = Counting(widget.segmenter.trained.net)
    widget.segmenter.trained.net = counting
    run_segment(qtbot, widget)
    calls, before = counting.calls, viewer.layers["image labels"].data.copy()
    assert calls > 0
    stored = widget.segmenter.postprocessing().threshold
    moved = round(stored * 100) + 3
    widget.threshold.setValue(moved)  # as a user dragging the slider
    after = viewer.layers["image labels"].data
    assert counting.calls == calls
    assert not np.array_equal(before, after)
    settings = widget.segmenter.postprocessing().replace(threshold=moved / 100)
    np.testing.assert_array_equal(after, label_frames(widget.probability, settings))


@pytest.mark.parametrize("at", [1, 2])  # the first tile, a later one
def test_cancel_stops_within_one_tile(
    qtbot, any_viewer, napari_ckpt, isbi_slice_tif, at, segmented, run_segment
):
    viewer = any_viewer
    widget = segmented(qtbot, viewer, napari_ckpt, tifffile.imread(isbi_slice_tif))
    segmenter = widget.segmenter
    segmenter.record = dataclasses.replace(segmenter.record, tile_size=76)  # many tiles
    counting = Counting(segmenter.trained.net, at=at, flag=widget.cancel_flag)
    segmenter.trained.net = counting
    tiler = segmenter.tiler(widget.memory.value())
    assert segmenter.tiles(widget.chosen_frames()[1], tiler, "none") > 10
    run_segment(qtbot, widget)
    assert counting.calls == at  # the pass during which cancel was pressed, no other
    assert [layer.name for layer in viewer.layers] == ["image"]  # no half result
    assert widget.probability is None and "cancelled" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_the_viewer_stops_the_run(
    qtbot, window, napari_ckpt, monkeypatch, notes, segmented, excepthook_calls
):
    hooked = excepthook_calls(monkeypatch)
    widget = segmented(qtbot, window, napari_ckpt, cell_image(160)[0])
    segmenter = widget.segmenter
    segmenter.record = dataclasses.replace(segmenter.record, tile_size=76)  # several tiles
    gate = segmenter.trained.net = Gate(segmenter.trained.net)
    assert segmenter.tiles(widget.chosen_frames()[1], segmenter.tiler(1.0), "none") > 1
    added: list[str] = []
    window.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    widget.segment()
    worker, ended = widget.worker, []
    worker.finished.connect(lambda: ended.append(True))
    assert gate.entered.wait(WAIT_MS / 1000)
    window.close()  # during the first tile
    gate.release.set()
    qtbot.waitUntil(lambda: bool(ended), timeout=WAIT_MS)
    qtbot.wait(50)  # the worker's queued signals
    assert gate.calls == 1 and not worker.is_running  # stopped after the open tile
    assert added == [] and widget.probability is None  # (closing removed "image")
    assert hooked == [] and notes == []  # no traceback, no error


def test_failures_are_notifications_never_tracebacks(
    qtbot, window, napari_ckpt, monkeypatch, notes, segmented, run_segment, excepthook_calls
):
    hooked = excepthook_calls(monkeypatch)
    widget = segmented(qtbot, window, napari_ckpt, cell_image(64)[0])
    net = widget.segmenter.trained.net
    widget.segmenter.trained.net = Failing(net)
    run_segment(qtbot, widget)  # in the worker
    widget.segmenter.trained.net = net

    def refuse(*_):
        raise ValueError("min_area must be >= 0")

    monkeypatch.setattr(segment, "label_frames", refuse)
    run_segment(qtbot, widget)  # in the slot that shows the result
    window.add_image(np.zeros((2, 3, 40, 40), np.uint8), name="4d")
    widget.image.setCurrentText("4d")
    run_segment(qtbot, widget)  # before the worker
    errors = [n.message for n in notes if n.severity == NotificationSeverity.ERROR]
    assert hooked == [] and len(errors) == 3 and all("\n" not in e for e in errors)
    assert errors[0].startswith("RuntimeError: CUDA out of memory")
    assert errors[1] == "ValueError: min_area must be >= 0"
    assert "expected (height, width) or a stack" in errors[2]
    assert [layer.name for layer in window.layers] == ["image", "4d"]  # both or neither
