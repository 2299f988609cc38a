"""The Segment widget: a model, an image layer -> probability and labels layers.

Prediction runs in a worker thread (the viewer stays responsive) with a progress bar over
tiles and a Cancel button that stops within one tile (:mod:`unet.napari.segmentation`).
The post-processing controls start from the settings stored with the model and re-label
the kept probabilities when moved, without predicting again. For images larger than
memory, "Stream to .zarr" runs ``unet.predict.zarr.route.predict_to_zarr`` on the layer's
file and opens the store with :mod:`unet.napari.reader`. A checkpoint the Fine-tune widget
of the same viewer writes becomes the current model (:func:`unet.napari.widgets.model_bus`).
Closing the viewer (or the widget's dock) during a run stops it after the current tile and
drops its result.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from unet.inference.postprocess import REGROW_CHOICES, PostProcessing
from unet.model.record import TTA_CHOICES
from unet.napari.layers import Frames, frames_of
from unet.napari.segmentation import Cancelled, Segmenter, label_frames, one_line
from unet.napari.widgets import (
    LayerChoice,
    PathRow,
    Relay,
    model_bus,
    run_in_thread,
    watch_close,
)

MODEL_TTA = "model's"


class SegmentWidget(QWidget):
    """Segment an image layer with a trained U-Net (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter: Segmenter | None = None
        self.probability: np.ndarray | None = None  # kept: labels are re-made from it
        self.labels_name: str | None = None  # the labels layer the controls update
        self.base = PostProcessing()  # the stored settings the controls start from
        self.cancel_flag = threading.Event()
        self.gone = watch_close(self, self.cancel_flag)
        self.worker = None
        self.relay = Relay()
        self.relay.advanced.connect(self.advance)
        layout = QVBoxLayout(self)
        layout.addLayout(self._model_form())
        layout.addLayout(self._run_row())
        layout.addWidget(self._postprocess_box())
        layout.addStretch(1)
        model_bus(napari_viewer).trained.connect(self.fine_tuned)

    # -- building ---------------------------------------------------------------------------

    def _model_form(self) -> QFormLayout:
        self.model_path = PathRow("checkpoint (.ckpt), package (.zip), .pt or .onnx")
        load = QPushButton("Load model")
        load.clicked.connect(lambda: self.load_model(self.model_path.path))
        self.model_info = QLabel("no model loaded")
        self.model_info.setWordWrap(True)
        self.image = LayerChoice(self.viewer, "Image")
        self.tta = QComboBox()
        self.tta.addItems([MODEL_TTA, *TTA_CHOICES])
        self.memory = QDoubleSpinBox()
        self.memory.setRange(0.05, 512.0)
        self.memory.setValue(1.0)
        self.memory.setSuffix(" GB")
        self.store_path = PathRow("output.zarr", "Zarr stores (*.zarr)", save=True)
        form = QFormLayout()
        form.addRow("model", self.model_path)
        form.addRow(load, self.model_info)
        form.addRow("image", self.image)
        form.addRow("test-time aug.", self.tta)
        form.addRow("tile memory", self.memory)
        form.addRow("large image store", self.store_path)
        return form

    def _run_row(self) -> QVBoxLayout:
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.segment)
        self.stream_button = QPushButton("Stream to .zarr")
        self.stream_button.clicked.connect(self.stream)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        buttons = QHBoxLayout()
        for button in (self.run_button, self.stream_button, self.cancel_button):
            buttons.addWidget(button)
        column = QVBoxLayout()
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.status)
        return column

    def _postprocess_box(self) -> QWidget:
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(1, 99)
        self.threshold_text = QLabel()
        self.min_area = QSpinBox()
        self.min_area.setRange(0, 10**7)
        self.regrow = QComboBox()
        self.regrow.addItems(REGROW_CHOICES)
        self.fill_holes = QCheckBox("fill holes")
        self.set_postprocessing(self.base)
        self.threshold.valueChanged.connect(self.threshold_moved)
        self.min_area.valueChanged.connect(self.relabel)
        self.regrow.currentTextChanged.connect(self.relabel)
        self.fill_holes.toggled.connect(self.relabel)
        box = QWidget()
        form = QFormLayout(box)
        row = QHBoxLayout()
        row.addWidget(self.threshold)
        row.addWidget(self.threshold_text)
        form.addRow("threshold", row)
        form.addRow("min area (px)", self.min_area)
        form.addRow("regrow", self.regrow)
        form.addRow("", self.fill_holes)
        return box

    # -- model ------------------------------------------------------------------------------

    def load_model(self, path: str) -> bool:
        """Load ``path``; its stored post-processing becomes the controls' start. A file
        that is not a model shows one line and keeps the current model."""
        if not path:
            show_error("choose a model file first (a .ckpt, .zip package, .pt or .onnx)")
            return False
        try:
            segmenter = Segmenter.load(path)
        except Exception as err:  # any unreadable file: one line, the widget stays usable
            show_error(one_line(err))
            return False
        self.segmenter, self.base = segmenter, segmenter.postprocessing()
        self.model_path.edit.setText(str(path))
        config = segmenter.trained.config
        self.model_info.setText(
            f"{config.in_channels} channel(s), {config.num_classes} classes, validated with "
            f"tta={segmenter.record.tta}"
        )
        self.set_postprocessing(self.base)
        return True

    def fine_tuned(self, path: str) -> None:
        """A checkpoint the Fine-tune widget wrote becomes the current model."""
        if not self.gone.is_set() and self.load_model(path):
            self.status.setText(f"model: fine-tuned {path}")

    def settings(self) -> PostProcessing:
        """The controls' post-processing (the stored grow threshold, lowered with it)."""
        threshold = self.threshold_value
        grow = self.base.grow_threshold
        return self.base.replace(
            threshold=threshold,
            min_area=self.min_area.value(),
            regrow=self.regrow.currentText(),
            fill_holes=self.fill_holes.isChecked(),
            grow_threshold=None if grow is None else min(grow, threshold),
        )

    def set_postprocessing(self, settings: PostProcessing) -> None:
        """Show ``settings`` in the controls without re-labelling for each control."""
        controls = (self.threshold, self.min_area, self.regrow, self.fill_holes)
        for control in controls:
            control.blockSignals(True)
        self.threshold_value = settings.threshold  # exact: the slider has steps of 0.01
        self.threshold.setValue(round(settings.threshold * 100))
        self.threshold_text.setText(f"{settings.threshold:.2f}")
        self.min_area.setValue(settings.min_area)
        self.regrow.setCurrentText(settings.regrow)
        self.fill_holes.setChecked(settings.fill_holes)
        for control in controls:
            control.blockSignals(False)

    # -- running ----------------------------------------------------------------------------

    def chosen_frames(self) -> tuple[str, Frames] | None:
        """(layer name, frames) to predict, or None after showing why not."""
        if self.segmenter is None and not self.load_model(self.model_path.path):
            return None
        layer = self.image.layer()
        if layer is None:
            show_error("no image layer: open an image first (or File > Open Sample > unet)")
            return None
        try:
            return layer.name, frames_of(layer.name, layer.data, layer.rgb, self.segmenter.channels)
        except Exception as err:  # a LayerError: one line
            show_error(one_line(err))
            return None

    def chosen_tta(self) -> str:
        tta = self.tta.currentText()
        return self.segmenter.record.tta if tta == MODEL_TTA else tta

    def segment(self) -> None:
        """Predict the chosen layer in a worker; adds (or updates) the two result layers."""
        chosen = self.chosen_frames()
        if chosen is None or self.worker is not None:
            return
        name, frames = chosen
        segmenter, tta = self.segmenter, self.chosen_tta()
        try:
            tiler = segmenter.tiler(self.memory.value())
            total = segmenter.tiles(frames, tiler, tta)
        except Exception as err:  # a tile size or tta the network cannot take
            show_error(one_line(err))
            return

        def work():
            try:
                return segmenter.predict(
                    frames, tiler, tta, self.relay.advanced.emit, self.cancel_flag
                )
            except Cancelled:  # nothing to show; _ended says so
                return None

        self._started(total, f"predicting {name}: {total} tiles")
        self.worker = run_in_thread(
            work, lambda prob: self.show_result(name, prob), self._ended, self.gone
        )

    def advance(self, tiles: int) -> None:
        """(viewer thread) ``tiles`` more forward passes done."""
        if not self.gone.is_set():
            self.progress.setValue(self.progress.value() + tiles)

    def cancel(self) -> None:
        """Stop the running prediction after its current tile."""
        self.cancel_flag.set()
        self.status.setText("cancelling...")

    def _started(self, total: int, text: str) -> None:
        self.cancel_flag.clear()
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.status.setText(text)
        self.run_button.setEnabled(False)
        self.stream_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

    def _ended(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.stream_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.cancel_flag.is_set():
            self.status.setText("cancelled: nothing added")
            show_info("prediction cancelled; no layers were added or changed")

    def show_result(self, name: str, probability) -> None:
        """Add or update ``<name> probability`` and ``<name> labels`` (both or neither)."""
        if probability is None or self.cancel_flag.is_set():  # cancelled, if only after the
            return  # last tile: "cancelled" means nothing added
        labels = label_frames(probability, self.settings())  # first: may refuse a setting
        self.probability = probability
        layer = self.image.layer()
        scale = layer.scale if layer is not None and layer.name == name else None
        scale = None if scale is None else list(scale)[-probability.ndim :]
        self._put(f"{name} probability", probability, "image", scale, contrast_limits=(0, 1))
        self._put(f"{name} labels", labels, "labels", scale)
        self.status.setText(f"done: {name}")

    def _put(self, name: str, data, kind: str, scale, **kwargs) -> None:
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
        else:
            add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
            add(data, name=name, **({"scale": scale} if scale is not None else {}), **kwargs)
        if kind == "labels":
            self.labels_name = name

    def threshold_moved(self, value: int) -> None:
        self.threshold_value = value / 100
        self.threshold_text.setText(f"{self.threshold_value:.2f}")
        self.relabel()

    def relabel(self, *_) -> None:
        """Labels from the kept probabilities with the controls' settings (no prediction)."""
        if self.probability is None or self.labels_name not in self.viewer.layers:
            return
        try:
            labels = label_frames(self.probability, self.settings())
        except Exception as err:  # a setting post-processing refuses
            show_error(one_line(err))
            return
        self.viewer.layers[self.labels_name].data = labels

    def stream(self) -> None:
        """The streamed route for images larger than memory (:mod:`unet.napari.streamed`)."""
        from unet.napari.streamed import stream_layer

        stream_layer(self)
