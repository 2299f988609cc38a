"""Inference imports neither Lightning nor torchmetrics (a fresh interpreter checks it)."""

from __future__ import annotations

import subprocess
import sys

INFERENCE = [
    "unet.prediction",
    # the prediction task: its request, shared set-up and output folder (not the ranks route)
    "unet.predict.task",
    "unet.predict.request",
    "unet.predict.model",
    "unet.predict.output_folder",
    "unet.inference",
    "unet.checkpoint",
    "unet.model_record",
    "unet.postprocess",
    "unet.tta",
    # streamed prediction of large images (README, "Large images")
    "unet.streaming",
    "unet.zarr_io",
    "unet.prediction_store",
    "unet.stream_prediction",
    "unet.predict.store_rows",
    "unet.predict.section_labels",
    "unet.chunked_labels",
    "unet.chunked_holes",
    # per-object outputs (measurements.csv, rois/)
    "unet.objects",
    "unet.measurements",
    "unet.chunked_measurements",
    "unet.rois",
    "unet.tiler",
    "unet.engines",
    "unet.shapes",
    "unet.export.probabilities",
    "unet.export.record",
    "unet.export.torchscript",
    "unet.export.onnx",
    "unet.export.bioimageio",
    "unet.export.runner",
    "unet.export.run",
]
TRAINING_ONLY = ("lightning", "pytorch_lightning", "torchmetrics")


def test_inference_modules_do_not_import_training_libraries():
    code = (
        f"import sys\nimport {', '.join(INFERENCE)}\n"
        f"print(' '.join(m for m in {TRAINING_ONLY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"inference imports {result.stdout.strip()}"
    # and the check itself can fail: the training side does import them
    code = "import sys, unet.module; print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "True"


# the plugin's Qt-free parts (unet.napari.*): usable in a script without a viewer
QT_FREE_PLUGIN = [
    "unet.napari.reader",
    "unet.napari.layers",
    "unet.napari.segmentation",
    "unet.napari.training_set",
    "unet.napari.sample",
]
VIEWER_ONLY = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def test_inference_and_plugin_core_do_not_import_napari_or_qt():
    modules = INFERENCE + QT_FREE_PLUGIN
    code = (
        f"import sys\nimport {', '.join(modules)}\n"
        f"print(' '.join(m for m in {VIEWER_ONLY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"inference imports {result.stdout.strip()}"
