"""Qt pieces the Segment and Fine-tune widgets share: a file chooser row, a layer chooser
that follows the viewer's layers, a progress relay across threads, and a worker runner
whose failures become one-line notifications (never a traceback dialog)."""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from unet.napari.segmentation import one_line

MODEL_FILES = "Models (*.ckpt *.zip *.pt *.onnx);;All files (*)"


class Relay(QObject):
    """Signals a worker thread emits; Qt delivers them in the viewer's thread."""

    advanced = Signal(int)  # tiles or epochs done since the last signal
    message = Signal(str)  # a status line


class PathRow(QWidget):
    """A line edit with a "..." button that opens a file dialog."""

    def __init__(self, placeholder: str, filter: str = MODEL_FILES, save: bool = False):
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        self._filter, self._save = filter, save
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(browse)

    def _browse(self) -> None:
        dialog = QFileDialog.getSaveFileName if self._save else QFileDialog.getOpenFileName
        path, _ = dialog(self, "Choose a file", self.edit.text(), self._filter)
        if path:
            self.edit.setText(path)

    @property
    def path(self) -> str:
        return self.edit.text().strip()


class LayerChoice(QComboBox):
    """The names of the viewer's layers of one type, kept up to date."""

    def __init__(self, viewer, layer_type: str):
        super().__init__()
        self.viewer, self.layer_type = viewer, layer_type
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
        current = self.currentText()
        names = [
            layer.name for layer in self.viewer.layers if type(layer).__name__ == self.layer_type
        ]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def run_in_thread(work: Callable[[], object], done: Callable[[object], None], finished=None):
    """Run ``work()`` in a napari thread worker; ``done(result)`` runs in the viewer's
    thread. An exception shows one line (``show_error``) and ``done`` is not called;
    ``finished()`` runs either way. Returns the started worker."""

    def guarded():
        try:
            return True, work()
        except Exception as err:  # every failure reaches the user as one line
            return False, one_line(err)

    def returned(outcome) -> None:
        ok, value = outcome
        if ok:
            done(value)
        else:
            show_error(value)

    worker = create_worker(guarded)
    worker.returned.connect(returned)
    if finished is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker
