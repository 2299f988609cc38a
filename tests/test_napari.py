"""The napari plugin: manifest, reader, Segment and Fine-tune widgets.

Widgets run on a ``napari.components.ViewerModel`` (the layer list and ``add_*`` methods
the widgets use, no canvas) and, for the cases a user meets, docked in a real
``napari.Viewer`` from napari's ``make_napari_viewer`` fixture, with pytest-qt's ``qtbot``
for the event loop and the worker threads. A real viewer needs OpenGL: under
``QT_QPA_PLATFORM=offscreen`` that means an X display (``xvfb-run -a``, as ``.ci/run``
does); without one those cases skip, and fail where ``CI`` is set.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

napari = pytest.importorskip("napari", reason="napari not installed: pip install -e '.[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt not installed: pip install -e '.[napari]'")
pytest.importorskip("npe2", reason="npe2 not installed: pip install -e '.[napari]'")

from napari.components import ViewerModel  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from npe2 import PluginManager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from unet.checkpoint import load_trained  # noqa: E402
from unet.fingerprint import record_probe  # noqa: E402
from unet.inference import predict_image  # noqa: E402
from unet.napari import finetune, reader, segment, streamed, widgets  # noqa: E402
from unet.napari.layers import frames_of  # noqa: E402
from unet.napari.reader import read_store  # noqa: E402
from unet.napari.sample import cell_image, sample_cells  # noqa: E402
from unet.napari.segmentation import label_frames  # noqa: E402
from unet.network import UNet  # noqa: E402
from unet.pixel_size import PixelSize  # noqa: E402
from unet.predict.task import predict  # noqa: E402
from unet.prediction import predict_files  # noqa: E402
from unet.stream_prediction import predict_to_zarr  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "unet" / "napari" / "napari.yaml"
WAIT_MS = 60_000


def tiny_checkpoint(path: Path, in_channels: int = 1, image=None) -> Path:
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


@pytest.fixture(scope="module")
def isbi_slice(data_dir, tmp_path_factory) -> Path:
    """The first ISBI 2012 training slice, 256 x 256, as a TIFF."""
    image = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif", key=0)[:256, :256]
    path = tmp_path_factory.mktemp("isbi") / "slice.tif"
    tifffile.imwrite(path, image)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, isbi_slice) -> Path:
    image = tifffile.imread(isbi_slice)
    return tiny_checkpoint(tmp_path_factory.mktemp("napari") / "tiny.ckpt", image=image)


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


@pytest.fixture(autouse=True)
def no_worker_left(qapp):
    """Every napari worker of a test has ended before the next test starts (a worker left
    running would call into widgets that later tests' teardown has deleted)."""
    yield
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(30_000), "a napari worker still runs"
    qapp.processEvents()


@pytest.fixture
def viewer(qtbot):
    return ViewerModel()


@pytest.fixture(params=["model", "window"])
def any_viewer(request, qtbot):
    """A ViewerModel (logic) and a real viewer with the widgets docked (what a user runs)."""
    return ViewerModel() if request.param == "model" else request.getfixturevalue("window")


def dock(qtbot, viewer, widget):
    """Dock ``widget`` in a real viewer's window (which then owns it); else qtbot does."""
    if isinstance(viewer, napari.Viewer):
        viewer.window.add_dock_widget(widget, name=type(widget).__name__)
    else:
        qtbot.addWidget(widget)
    return widget


def excepthook_calls(monkeypatch) -> list[tuple]:
    """The exceptions that reach ``sys.excepthook`` (napari shows them in a traceback dialog)
    from here on; call it in the test body: pytest-qt sets its own hook after the fixtures."""
    caught: list[tuple] = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: caught.append(exc))
    return caught


@pytest.fixture
def notes():
    """The notifications napari's notification manager receives during the test."""
    received: list = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The lines the widgets show with show_error (instead of a notification)."""
    shown: list[str] = []
    for module in (segment, finetune, widgets, streamed):
        monkeypatch.setattr(module, "show_error", shown.append)
    return shown


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


def segmented(qtbot, viewer, ckpt, image, name="image", **layer) -> segment.SegmentWidget:
    widget = dock(qtbot, viewer, segment.SegmentWidget(viewer))
    viewer.add_image(image, name=name, **layer)
    assert widget.load_model(str(ckpt))
    return widget


def run(qtbot, widget) -> None:
    widget.segment()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_manifest_validates_and_is_registered():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)  # schema check
    manifest.validate_imports()  # every python_name imports
    ids = {c.id for c in manifest.contributions.commands}
    assert {"unet.read", "unet.segment", "unet.finetune", "unet.sample_cells"} <= ids
    pyproject = (MANIFEST.parents[3] / "pyproject.toml").read_text()
    assert 'unet = "unet.napari:napari.yaml"' in pyproject
    assert "napari.yaml" in pyproject.split("[tool.setuptools.package-data]")[1]


def test_reader_opens_a_store_and_a_folder_with_their_pixel_size(ckpt, tmp_path):
    image, _ = cell_image(96)
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, image)
    net = load_trained(ckpt).net
    size = PixelSize.of((0.5, 0.25), ("micrometer", "micrometer"))
    store = tmp_path / "out.zarr"
    predict_to_zarr(net, source, store, chunk=64, progress=False, pixel_size=size)
    folder = tmp_path / "out"
    predict_files(net, source, folder, progress=False, pixel_size=size)
    assert reader.get_reader(str(source)) is None
    for path in (store, folder):
        layers = reader.get_reader(str(path))(str(path))
        assert [kind for _, _, kind in layers] == ["image", "labels"]
        (prob, prob_kw, _), (labels, labels_kw, _) = layers
        assert prob.shape == labels.shape == (96, 96)
        np.testing.assert_allclose(prob_kw["scale"], [0.5, 0.25], rtol=1e-6)
        np.testing.assert_allclose(labels_kw["scale"], [0.5, 0.25], rtol=1e-6)
        assert np.asarray(labels).max() >= 0 and 0 <= float(np.asarray(prob).max()) <= 1
    folder_labels = reader.read(str(folder))[1][0]
    np.testing.assert_array_equal(np.asarray(reader.read(str(store))[1][0]), folder_labels)


def test_segment_widget_equals_predict_path(qtbot, any_viewer, ckpt, isbi_slice, tmp_path):
    viewer, image = any_viewer, tifffile.imread(isbi_slice)
    widget = segmented(qtbot, viewer, ckpt, image)
    widget.tta.setCurrentText("flips8")
    run(qtbot, widget)
    segmenter = widget.segmenter
    out = tmp_path / "predicted"
    predict_files(
        segmenter.trained.net, isbi_slice, out, tiler=segmenter.tiler(widget.memory.value()),
        tta="flips8", postprocess=segmenter.postprocessing(), progress=False,
    )  # fmt: skip
    expected = tifffile.imread(out / "labels" / "slice.tif")
    labels = viewer.layers["image labels"].data
    assert expected.max() > 1  # several cells: the comparison can fail
    np.testing.assert_array_equal(labels, expected)
    probability = tifffile.imread(out / "probabilities.tif")
    np.testing.assert_array_equal(viewer.layers["image probability"].data, probability)


def test_threshold_relabels_without_predicting_again(qtbot, any_viewer, ckpt, isbi_slice):
    viewer = any_viewer
    widget = segmented(qtbot, viewer, ckpt, tifffile.imread(isbi_slice))
    counting = Counting(widget.segmenter.trained.net)
    widget.segmenter.trained.net = counting
    run(qtbot, widget)
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
def test_cancel_stops_within_one_tile(qtbot, any_viewer, ckpt, isbi_slice, at):
    viewer = any_viewer
    widget = segmented(qtbot, viewer, ckpt, tifffile.imread(isbi_slice))
    segmenter = widget.segmenter
    segmenter.record = dataclasses.replace(segmenter.record, tile_size=76)  # many tiles
    counting = Counting(segmenter.trained.net, at=at, flag=widget.cancel_flag)
    segmenter.trained.net = counting
    tiler = segmenter.tiler(widget.memory.value())
    assert segmenter.tiles(widget.chosen_frames()[1], tiler, "none") > 10
    run(qtbot, widget)
    assert counting.calls == at  # the pass during which cancel was pressed, no other
    assert [layer.name for layer in viewer.layers] == ["image"]  # no half result
    assert widget.probability is None and "cancelled" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_the_viewer_stops_the_run(qtbot, window, ckpt, monkeypatch, notes):
    hooked = excepthook_calls(monkeypatch)
    widget = segmented(qtbot, window, ckpt, cell_image(160)[0])
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


def test_failures_are_notifications_never_tracebacks(qtbot, window, ckpt, monkeypatch, notes):
    hooked = excepthook_calls(monkeypatch)
    widget = segmented(qtbot, window, ckpt, cell_image(64)[0])
    net = widget.segmenter.trained.net
    widget.segmenter.trained.net = Failing(net)
    run(qtbot, widget)  # in the worker
    widget.segmenter.trained.net = net

    def refuse(*_):
        raise ValueError("min_area must be >= 0")

    monkeypatch.setattr(segment, "label_frames", refuse)
    run(qtbot, widget)  # in the slot that shows the result
    window.add_image(np.zeros((2, 3, 40, 40), np.uint8), name="4d")
    widget.image.setCurrentText("4d")
    run(qtbot, widget)  # before the worker
    errors = [n.message for n in notes if n.severity == NotificationSeverity.ERROR]
    assert hooked == [] and len(errors) == 3 and all("\n" not in e for e in errors)
    assert errors[0].startswith("RuntimeError: CUDA out of memory")
    assert errors[1] == "ValueError: min_area must be >= 0"
    assert "expected (height, width) or a stack" in errors[2]
    assert [layer.name for layer in window.layers] == ["image", "4d"]  # both or neither


def test_stream_button_writes_what_predict_to_zarr_writes(qtbot, any_viewer, ckpt, tmp_path):
    viewer, source = any_viewer, tmp_path / "cells.tif"
    tifffile.imwrite(source, cell_image(96)[0])
    PluginManager.instance().discover()  # napari's builtin TIFF reader (a viewer does this)
    viewer.open(str(source), plugin="napari")  # a layer that knows its file
    widget = dock(qtbot, viewer, segment.SegmentWidget(viewer))
    assert widget.load_model(str(ckpt)) and widget.image.currentText() == "cells"
    widget.store_path.edit.setText(str(tmp_path / "widget.zarr"))
    qtbot.mouseClick(widget.stream_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    segmenter = widget.segmenter
    predict_to_zarr(
        segmenter.trained.net, source, tmp_path / "direct.zarr",
        tiler=segmenter.tiler(widget.memory.value()), precision=segmenter.record.precision,
        postprocess=widget.settings(), progress=False,
    )  # fmt: skip
    direct = read_store(tmp_path / "direct.zarr")
    assert np.asarray(direct[1][0]).max() > 0  # cells: the comparison can fail
    streamed_layers = read_store(tmp_path / "widget.zarr")
    for (data, kwargs, _), (expected, _, _) in zip(streamed_layers, direct, strict=True):
        np.testing.assert_array_equal(np.asarray(data), np.asarray(expected))
        shown = viewer.layers[kwargs["name"].replace("direct", "widget")]
        np.testing.assert_array_equal(np.asarray(shown.data), np.asarray(expected))


def test_sixteen_bit_stack_and_three_channels(qtbot, viewer, ckpt, tmp_path, errors):
    image, _ = cell_image(96)
    stack = np.stack([image, cell_image(96, seed=1)[0]])  # uint16 (2, 96, 96)
    widget = segmented(qtbot, viewer, ckpt, stack, name="stack")
    run(qtbot, widget)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (2, 96, 96) and labels[0].max() > 0
    segmenter, settings = widget.segmenter, widget.settings()
    for k in range(2):  # each frame as if it were predicted alone
        alone = frames_of("frame", stack[k], False, 1)
        prob = segmenter.predict(alone, segmenter.tiler(widget.memory.value()), "none")
        np.testing.assert_array_equal(labels[k], label_frames(prob, settings))
    rgb = np.stack([image // 256] * 3, axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget.image.setCurrentText("rgb")
    run(qtbot, widget)  # a gray network refuses in one line
    assert len(errors) == 1 and "RGB" in errors[0] and "3-channel" in errors[0]
    assert "rgb labels" not in viewer.layers
    assert widget.load_model(str(tiny_checkpoint(tmp_path / "rgb.ckpt", in_channels=3)))
    run(qtbot, widget)
    assert viewer.layers["rgb labels"].data.shape == (96, 96)


def test_bad_inputs_are_one_notification(qtbot, viewer, ckpt, tmp_path, errors):
    widget = segmented(qtbot, viewer, ckpt, np.zeros((2, 3, 40, 40), np.uint8), name="4d")
    run(qtbot, widget)
    assert "expected (height, width) or a stack" in errors[-1]
    not_a_model = tmp_path / "notes.ckpt"
    not_a_model.write_text("hello")
    assert not widget.load_model(str(not_a_model))
    assert "not a readable PyTorch checkpoint" in errors[-1] and widget.segmenter is not None
    tuner = finetune.FinetuneWidget(viewer)
    qtbot.addWidget(tuner)
    image, _ = cell_image(64)
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.zeros((60, 64), np.uint16), name="short labels")
    tuner.pairs[0][0].setCurrentText("cells")
    tuner.pairs[0][1].setCurrentText("short labels")
    tuner.model_path.edit.setText(str(ckpt))
    tuner.start()
    assert "shape (60, 64)" in errors[-1] and tuner.worker is None
    tuner.model_path.edit.setText(str(not_a_model))
    tuner.start()
    assert "not a readable PyTorch checkpoint" in errors[-1]
    assert all("\n" not in e for e in errors) and len(errors) == 4


def test_finetune_two_epochs_writes_a_checkpoint_predict_loads(
    qtbot, any_viewer, ckpt, tmp_path, compose_predict, errors
):
    viewer = any_viewer
    for data, kwargs, kind in sample_cells():
        getattr(viewer, f"add_{kind}")(data[:128, :128], **kwargs)
    segmenter = dock(qtbot, viewer, segment.SegmentWidget(viewer))  # both widgets open
    assert segmenter.load_model(str(ckpt))
    tuner = dock(qtbot, viewer, finetune.FinetuneWidget(viewer))
    tuner.pairs[0][0].setCurrentText("unet sample cells")
    tuner.pairs[0][1].setCurrentText("unet sample labels")
    tuner.model_path.edit.setText(str(ckpt))
    tuner.output.setText(str(tmp_path / "runs"))
    tuner.epochs.setValue(2)
    tuner.tiles.setValue(2)
    with qtbot.waitSignal(tuner.trained, timeout=WAIT_MS) as new:
        tuner.start()
    qtbot.waitUntil(lambda: tuner.worker is None, timeout=WAIT_MS)
    assert errors == []
    best = Path(new.args[0])
    assert best.is_file() and tuner.model_path.path == str(best)
    assert segmenter.segmenter.trained.path == best  # Segment's current model now
    assert segmenter.model_path.path == str(best) and "fine-tuned" in segmenter.status.text()
    assert tuner.progress.value() == 2 and "new checkpoint" in tuner.status.text()
    assert load_trained(best).postprocess is not None  # chosen at the final validation
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, viewer.layers["unet sample cells"].data)
    out = tmp_path / "predicted"
    predict(compose_predict([f"ckpt_path={best}", f"input={image}", f"output={out}"]))
    assert tifffile.imread(out / "labels" / "cells.tif").shape == (128, 128)
