"""The napari plugin: manifest, reader, the Stream button, inputs the widgets refuse or
adapt to, and the Fine-tune widget.

Widgets run on a ``napari.components.ViewerModel`` (the layer list and ``add_*`` methods
the widgets use, no canvas) and, for the cases a user meets, docked in a real
``napari.Viewer`` from napari's ``make_napari_viewer`` fixture, with pytest-qt's ``qtbot``
for the event loop and the worker threads. A real viewer needs OpenGL: under
``QT_QPA_PLATFORM=offscreen`` that means an X display (``xvfb-run -a``, as ``.ci/run``
does); without one those cases skip, and fail where ``CI`` is set. The shared fixtures
(viewers, the test checkpoint, ``segmented``, ``run_segment``) are in tests/conftest_napari.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from pathlib import Path

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari", reason="napari not installed: pip install -e '.[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt not installed: pip install -e '.[napari]'")
pytest.importorskip("npe2", reason="npe2 not installed: pip install -e '.[napari]'")

from npe2 import PluginManager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from unet.inference.checkpoint import load_trained  # noqa: E402
from unet.io.pixel_size import PixelSize  # noqa: E402
from unet.napari import finetune, reader, segment  # noqa: E402
from unet.napari.layers import frames_of  # noqa: E402
from unet.napari.reader import read_store  # noqa: E402
from unet.napari.sample import cell_image, sample_cells  # noqa: E402
from unet.napari.segmentation import label_frames  # noqa: E402
from unet.predict.files import predict_files  # noqa: E402
from unet.predict.task import predict  # noqa: E402
from unet.predict.zarr.route import predict_to_zarr  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_worker_left")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "unet" / "napari" / "napari.yaml"


WAIT_MS = 60_000


def test_manifest_validates_and_is_registered():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)  # schema check
    manifest.validate_imports()  # every python_name imports
    ids = {c.id for c in manifest.contributions.commands}
    assert {"unet.read", "unet.segment", "unet.finetune", "unet.sample_cells"} <= ids
    pyproject = (MANIFEST.parents[3] / "pyproject.toml").read_text()
    assert 'unet = "unet.napari:napari.yaml"' in pyproject
    assert "napari.yaml" in pyproject.split("[tool.setuptools.package-data]")[1]


def test_reader_opens_a_store_and_a_folder_with_their_pixel_size(napari_ckpt, tmp_path):
    image, _ = cell_image(96)
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, image)
    net = load_trained(napari_ckpt).net
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


def test_stream_button_writes_what_predict_to_zarr_writes(
    qtbot, any_viewer, napari_ckpt, tmp_path, dock
):
    viewer, source = any_viewer, tmp_path / "cells.tif"
    tifffile.imwrite(source, cell_image(96)[0])
    PluginManager.instance().discover()  # napari's builtin TIFF reader (a viewer does this)
    viewer.open(str(source), plugin="napari")  # a layer that knows its file
    widget = dock(qtbot, viewer, segment.SegmentWidget(viewer))
    assert widget.load_model(str(napari_ckpt)) and widget.image.currentText() == "cells"
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


def test_sixteen_bit_stack_and_three_channels(
    qtbot, viewer, napari_ckpt, tmp_path, errors, segmented, run_segment, napari_checkpoint
):
    image, _ = cell_image(96)
    stack = np.stack([image, cell_image(96, seed=1)[0]])  # uint16 (2, 96, 96)
    widget = segmented(qtbot, viewer, napari_ckpt, stack, name="stack")
    run_segment(qtbot, widget)
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
    run_segment(qtbot, widget)  # a gray network refuses in one line
    assert len(errors) == 1 and "RGB" in errors[0] and "3-channel" in errors[0]
    assert "rgb labels" not in viewer.layers
    assert widget.load_model(str(napari_checkpoint(tmp_path / "rgb.ckpt", in_channels=3)))
    run_segment(qtbot, widget)
    assert viewer.layers["rgb labels"].data.shape == (96, 96)


def test_bad_inputs_are_one_notification(
    qtbot, viewer, napari_ckpt, tmp_path, errors, segmented, run_segment
):
    widget = segmented(qtbot, viewer, napari_ckpt, np.zeros((2, 3, 40, 40), np.uint8), name="4d")
    run_segment(qtbot, widget)
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
    tuner.model_path.edit.setText(str(napari_ckpt))
    tuner.start()
    assert "shape (60, 64)" in errors[-1] and tuner.worker is None
    tuner.model_path.edit.setText(str(not_a_model))
    tuner.start()
    assert "not a readable PyTorch checkpoint" in errors[-1]
    assert all("\n" not in e for e in errors) and len(errors) == 4


def test_finetune_two_epochs_writes_a_checkpoint_predict_loads(
    qtbot, any_viewer, napari_ckpt, tmp_path, compose_predict, errors, dock
):
    viewer = any_viewer
    for data, kwargs, kind in sample_cells():
        getattr(viewer, f"add_{kind}")(data[:128, :128], **kwargs)
    segmenter = dock(qtbot, viewer, segment.SegmentWidget(viewer))  # both widgets open
    assert segmenter.load_model(str(napari_ckpt))
    tuner = dock(qtbot, viewer, finetune.FinetuneWidget(viewer))
    tuner.pairs[0][0].setCurrentText("unet sample cells")
    tuner.pairs[0][1].setCurrentText("unet sample labels")
    tuner.model_path.edit.setText(str(napari_ckpt))
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
