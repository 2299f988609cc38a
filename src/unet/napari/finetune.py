"""The Fine-tune widget: image layers and the labels a user corrected -> a new checkpoint.

The pairs are written as a ``data=folder`` data set and trained on from the chosen
checkpoint with the own-data recipe (:mod:`unet.napari.training_set`) in a worker thread:
a progress bar over epochs, the validation value after each, and Cancel, which stops
between batches and keeps the best checkpoint so far (as does closing the viewer). The new
checkpoint becomes this widget's model and, through :attr:`FinetuneWidget.trained` and the
viewer's :func:`unet.napari.widgets.model_bus`, the Segment widget's. Every problem is one
notification.
"""

from __future__ import annotations

import threading
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from unet.napari.segmentation import one_line
from unet.napari.training_set import Progress, Recipe, finetune, pair_frames
from unet.napari.widgets import (
    LayerChoice,
    PathRow,
    Relay,
    model_bus,
    run_in_thread,
    watch_close,
)


class FinetuneWidget(QWidget):
    """Fine-tune a checkpoint on corrected labels (see the module docstring)."""

    trained = Signal(str)  # the new checkpoint's path

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.pairs: list[tuple[LayerChoice, LayerChoice]] = []
        self.cancel_flag = threading.Event()
        self.gone = watch_close(self, self.cancel_flag)
        self.worker = None
        self.relay = Relay()
        self.relay.message.connect(self._epoch_text)
        self.relay.advanced.connect(self.progress_step)
        self.trained.connect(model_bus(napari_viewer).trained)
        layout = QVBoxLayout(self)
        self.model_path = PathRow("checkpoint (.ckpt) to start from", "Checkpoints (*.ckpt)")
        self.output = QLineEdit(str(Path.home() / "unet-finetune"))
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(10)
        self.tiles = QSpinBox()
        self.tiles.setRange(1, 10_000)
        self.tiles.setValue(20)
        form = QFormLayout()
        form.addRow("start from", self.model_path)
        form.addRow("output folder", self.output)
        form.addRow("epochs", self.epochs)
        form.addRow("tiles per epoch", self.tiles)
        layout.addLayout(form)
        self.pair_form = QFormLayout()
        layout.addLayout(self.pair_form)
        self.add_pair()
        more = QPushButton("+ another image and labels")
        more.clicked.connect(self.add_pair)
        layout.addWidget(more)
        layout.addLayout(self._run_row())
        layout.addStretch(1)

    def _run_row(self) -> QVBoxLayout:
        self.train_button = QPushButton("Fine-tune")
        self.train_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        column = QVBoxLayout()
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.status)
        return column

    def add_pair(self) -> tuple[LayerChoice, LayerChoice]:
        """One more (image, corrected labels) row."""
        pair = (LayerChoice(self.viewer, "Image"), LayerChoice(self.viewer, "Labels"))
        row = QHBoxLayout()
        row.addWidget(pair[0])
        row.addWidget(pair[1])
        self.pair_form.addRow(f"image, labels {len(self.pairs) + 1}", row)
        self.pairs.append(pair)
        return pair

    def chosen_pairs(self) -> list[tuple]:
        """(image layer, labels layer) of every row where both are chosen."""
        chosen = [(image.layer(), labels.layer()) for image, labels in self.pairs]
        return [(i, lab) for i, lab in chosen if i is not None and lab is not None]

    def start(self) -> None:
        """Check the pairs, then fine-tune in a worker."""
        if self.worker is not None:
            return
        checkpoint = self.model_path.path
        try:
            from unet.inference.checkpoint import load_trained

            channels = load_trained(checkpoint).config.in_channels
            frames = pair_frames(self.chosen_pairs(), channels)
        except Exception as err:  # not a checkpoint, layers that do not fit: one line
            show_error(one_line(err))
            return
        recipe = Recipe(self.epochs.value(), self.tiles.value())
        progress = Progress(self._report, self.cancel_flag)
        self.cancel_flag.clear()
        self.progress.setRange(0, recipe.epochs)
        self.progress.setValue(0)
        self.status.setText(f"fine-tuning on {len(frames)} image(s)...")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        parent = Path(self.output.text())

        def work():
            return finetune(Path(checkpoint), frames, parent, recipe, progress)

        self.worker = run_in_thread(work, self.finished, self._ended, self.gone)

    def _report(self, epoch: int, of: int, value: float | None) -> None:
        """(worker thread) one epoch done."""
        shown = "" if value is None else f", validation {value:.3f}"
        self.relay.message.emit(f"epoch {epoch}/{of}{shown}")
        self.relay.advanced.emit(epoch)

    def progress_step(self, epoch: int) -> None:
        if not self.gone.is_set():
            self.progress.setValue(epoch)

    def _epoch_text(self, text: str) -> None:
        if not self.gone.is_set():
            self.status.setText(text)

    def cancel(self) -> None:
        """Stop after the current batch; the best checkpoint so far is kept."""
        self.cancel_flag.set()
        self.status.setText("stopping after this batch...")

    def finished(self, outcome) -> None:
        """The new checkpoint becomes the model; or say that none was written."""
        best, metrics = outcome
        if best is None:
            show_info("fine-tuning stopped before its first epoch ended; the model is unchanged")
            self.status.setText("stopped: no new checkpoint")
            return
        self.model_path.edit.setText(str(best))
        value = metrics.get("val/iou", metrics.get("val/mean_iou"))
        score = "" if value is None else f" (validation IoU {value:.3f})"
        self.status.setText(f"new checkpoint: {best}{score}")
        show_info(f"fine-tuned: {best}{score}")
        self.trained.emit(str(best))

    def _ended(self) -> None:
        self.worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
