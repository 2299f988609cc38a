"""Qt pieces the Segment and Fine-tune widgets share: a file chooser row, a layer chooser
that follows the viewer's layers, a progress relay across threads, a worker runner whose
failures become one-line notifications (never a traceback dialog), the stop of a run when
its widget goes away, and the channel through which a fine-tuned model reaches Segment."""

from __future__ import annotations

import threading
import weakref
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


class ModelBus(QObject):
    """One viewer's channel for new checkpoints (see :func:`model_bus`)."""

    trained = Signal(str)  # a fine-tuned checkpoint's path


_BUSES: dict[int, ModelBus] = {}


def model_bus(viewer) -> ModelBus:
    """The channel on which ``viewer``'s Fine-tune widget announces a new checkpoint and its
    Segment widget picks it up. napari builds each docked widget on its own, in either
    order, so neither holds the other; both hold the viewer. Keyed by identity, since two
    viewers compare equal when their layers do."""
    key = id(viewer)
    if key not in _BUSES:
        _BUSES[key] = ModelBus()
        weakref.finalize(viewer, _BUSES.pop, key, None)
    return _BUSES[key]


def watch_close(widget: QWidget, cancel: threading.Event) -> threading.Event:
    """An event set when ``widget`` is destroyed (its viewer closed, its dock removed); it
    sets ``cancel`` too, so a running worker stops after its current tile or batch. Qt
    deletes the widget's children at once while the worker runs on: every callback that
    touches the widget checks the returned event first."""
    gone = threading.Event()

    def closed(*_) -> None:  # holds no reference to the widget: it is being deleted
        gone.set()
        cancel.set()

    widget.destroyed.connect(closed)
    return gone


def run_in_thread(
    work: Callable[[], object],
    done: Callable[[object], None],
    finished: Callable[[], None] | None = None,
    gone: threading.Event | None = None,
):
    """Run ``work()`` in a napari thread worker; ``done(result)`` runs in the viewer's
    thread. An exception, in ``work`` or in ``done``, shows one line (``show_error``);
    ``finished()`` runs either way. Once ``gone`` is set (the widget was closed) neither
    runs: the result is dropped. Returns the started worker."""

    def guarded():
        try:
            return True, work()
        except Exception as err:  # every failure reaches the user as one line
            return False, one_line(err)

    def returned(outcome) -> None:
        if gone is not None and gone.is_set():
            return
        ok, value = outcome
        if not ok:
            show_error(value)
            return
        try:
            done(value)
        except Exception as err:  # a slot's exception would reach napari's traceback dialog
            show_error(one_line(err))

    def ended() -> None:
        if finished is not None and not (gone is not None and gone.is_set()):
            finished()

    worker = create_worker(guarded)
    worker.returned.connect(returned)
    worker.finished.connect(ended)
    worker.start()
    return worker
