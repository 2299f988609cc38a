"""What the Segment widget does, without Qt: load a model, predict frames with progress and
cancel, and turn the kept probabilities into labels as often as the settings change.

Prediction is :func:`unet.inference.image.predict_image` with a :class:`unet.inference.tiler.Tiler`
and the
model record's test-time augmentation and precision (:mod:`unet.model.record`), so the
labels equal ``src/predict.py``'s for the same image and settings. The tiler runs one tile
per forward pass, and the per-pass callback checks the cancel flag, so a cancel stops
within one tile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet.errors import UserError
from unet.inference.checkpoint import TrainedModel
from unet.inference.formats.loading import load_for_prediction
from unet.inference.image import predict_image, require_finite_output
from unet.inference.postprocess import PostProcessing, postprocessing_for
from unet.inference.tiler import Tiler
from unet.inference.tta import count_tiles
from unet.labels import foreground_probability
from unet.model.record import ModelRecord, record_or_default
from unet.napari.layers import Frames


class Cancelled(Exception):
    """Raised inside a prediction whose cancel flag was set (caught by the caller)."""


@dataclass
class Segmenter:
    """A loaded model and what it was validated with.

    Attributes:
        trained: the network and its stored settings (``unet.inference.checkpoint.TrainedModel``).
        record: how it was validated (tta, precision, tiles): the defaults here.
    """

    trained: TrainedModel
    record: ModelRecord

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        """A checkpoint, a bioimage.io package (.zip), an ONNX or TorchScript file, checked
        as it loads (``unet.inference.formats.loading.load_for_prediction``)."""
        trained = load_for_prediction(path)
        return cls(trained, record_or_default(trained.record, trained.path))

    @property
    def channels(self) -> int:
        return self.trained.config.in_channels

    def postprocessing(self) -> PostProcessing:
        """The post-processing stored with the model (the plain defaults where none)."""
        return postprocessing_for(self.trained.postprocess, None)

    def tiler(self, memory_gb: float | None) -> Tiler:
        """The validated tiles (size, overlap) within ``memory_gb``, one tile per pass."""
        return Tiler(
            tile_size=self.record.tile_size,
            overlap=self.record.overlap,
            batch_size=1,
            memory_gb=memory_gb,
        )

    def tiles(self, frames: Frames, tiler: Tiler, tta: str) -> int:
        """Forward passes a prediction of ``frames`` runs (for the progress bar)."""
        size = frames.shape[-2:]
        return len(frames) * count_tiles(self.trained.net, size, tiler, tta)

    def predict(
        self,
        frames: Frames,
        tiler: Tiler,
        tta: str,
        on_tiles: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """Cell probabilities, float32, of ``frames.shape``; raises :class:`Cancelled` after
        the forward pass during which ``cancel`` was set."""

        def on_batch(n: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_tiles is not None:
                on_tiles(n)

        where = str(self.trained.path)
        maps = []
        for index in range(len(frames)):
            prob = predict_image(
                self.trained.net, frames.frame(index), tiler, tta, self.record.precision,
                on_batch=on_batch,
            )  # fmt: skip
            require_finite_output(prob, f"frame {index}", where)
            maps.append(foreground_probability(prob))
        return np.stack(maps).reshape(frames.shape)


def label_frames(probability: np.ndarray, postprocess: PostProcessing) -> np.ndarray:
    """Instance labels (uint32) of (H, W) or (frames, H, W) cell probabilities, numbered
    1..n in each frame (as ``labels/`` of a prediction folder)."""
    planes = probability.reshape(-1, *probability.shape[-2:])
    labels = np.stack([postprocess(p) for p in planes]).astype(np.uint32)
    return labels.reshape(probability.shape)


def one_line(err: BaseException) -> str:
    """A message for a notification: a UserError's own line, else its type and first line."""
    if isinstance(err, UserError):
        return str(err)
    text = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
