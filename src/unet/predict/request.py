"""One prediction request: every setting of ``configs/predict.yaml``, typed and checked.

``src/predict.py`` composes the Hydra config; :func:`unet.predict.task.read_request` checks
it (types and ranges, ``unet.config.checks``) and turns it into a frozen
:class:`PredictRequest`, which :func:`check_request` checks as a whole (outputs that cannot
be written, settings the chosen route cannot do). Every route below the entry takes the
request (or one of its small settings objects) and never the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from unet.errors import UserError
from unet.inference.tiler import Tiler
from unet.io.output_safety import check_apart
from unet.io.pixel_size import PixelSize
from unet.predict.objects import check_object_outputs


class PredictionSettingError(UserError, ValueError):
    """A prediction setting that cannot work (output path, device, precision, network)."""


@dataclass(frozen=True)
class TilerSettings:
    """The tiler of ``predict.yaml`` (:class:`unet.inference.tiler.Tiler`; None: chosen at run time,
    the first two from the model record)."""

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    memory_gb: float | None = None
    max_tile: int | None = None  # not a setting: the engine's cap on a chosen tile size

    def tiler(self) -> Tiler:
        """The tiler these settings describe."""
        return Tiler(self.tile_size, self.overlap, self.batch_size, self.memory_gb, self.max_tile)


@dataclass(frozen=True)
class ZarrSettings:
    """How a ``.zarr`` output is read and written (docs/large-images.md)."""

    level: int = 0  # resolution level of an OME-Zarr or pyramidal TIFF input
    chunk: int = 1024  # chunk side (px) of the output store
    probability_dtype: str = "float16"  # float16 | float32 | uint8 (round(255 p))


@dataclass(frozen=True)
class Outputs:
    """What a prediction writes besides the probabilities."""

    labels: bool = True
    overlays: bool = True
    challenge_naming: bool = False  # labels/maskNNN.tif
    instance_class: int | None = None  # K > 2: the class labels/ holds (None: foreground)
    measurements: bool = False
    rois: bool = False


@dataclass(frozen=True)
class PredictRequest:
    """Every setting of one prediction (``configs/predict.yaml`` explains each).

    ``tta``, ``precision`` and the tiler's ``tile_size``/``overlap`` may be None until
    :func:`unet.predict.setup.load_model` fills them from the model record.
    ``trainer``: the Trainer's settings (plain, resolved) for prediction on its ranks,
    None for one process. ``postprocess``: the non-null overrides of the model's
    post-processing.
    """

    checkpoint: str
    input: str
    output: str
    trust_checkpoint: bool = False
    overwrite: bool = False
    nonfinite: str = "refuse"
    input_axes: str = "auto"
    device: str = "auto"
    precision: str | int | None = None
    engine: str = "torch"
    tta: str | None = None
    tiler: TilerSettings = field(default_factory=TilerSettings)
    postprocess: dict = field(default_factory=dict)
    write: Outputs = field(default_factory=Outputs)
    pixel_size: PixelSize | None = None
    progress: bool = True
    zarr: ZarrSettings = field(default_factory=ZarrSettings)
    trainer: dict | None = None

    @property
    def store(self) -> bool:
        """Whether the output is an OME-Zarr store (``<name>.zarr``), not a folder."""
        return is_store(self.output)

    def but(self, **changes) -> PredictRequest:
        """A copy with ``changes``."""
        return replace(self, **changes)


def is_store(output) -> bool:
    """Whether ``output`` names an OME-Zarr store (``<name>.zarr``), not a folder."""
    return str(output).rstrip("/").endswith(".zarr")


def check_request(request: PredictRequest) -> None:
    """Refuse outputs and settings the request's route cannot write or do."""
    write = request.write
    check_object_outputs(
        write.measurements,
        write.rois,
        labels=write.labels,
        store=request.store,
        ranks=request.trainer is not None,
    )
    check_apart(request.output, input=request.input, ckpt_path=request.checkpoint)
    if request.trainer is not None and request.engine != "torch":
        raise PredictionSettingError(
            f"engine={request.engine} with trainer={request.trainer.get('strategy', 'set')}: "
            "prediction on a Trainer's ranks runs PyTorch; set engine=torch, or leave "
            "the trainer out"
        )
    if request.store:
        check_store_settings(request)


def check_store_settings(request: PredictRequest) -> None:
    """A .zarr output is predicted without test-time augmentation (null: the model's
    validated one is left out, :func:`unet.predict.setup.with_model_record`) and refuses
    NaN or infinite pixels."""
    if request.tta not in (None, "none"):
        raise PredictionSettingError(
            f"tta={request.tta}: a .zarr output is predicted without test-time augmentation; "
            "set tta=none"
        )
    if request.nonfinite != "refuse":
        raise PredictionSettingError(
            f"nonfinite={request.nonfinite}: a .zarr output refuses NaN or infinite pixels; "
            "set nonfinite=refuse, or use a folder output"
        )
