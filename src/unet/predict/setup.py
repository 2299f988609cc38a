"""What every prediction route sets up the same way: the model (loaded and verified, the
settings it was validated with filling those left null), the device, the frames it reads
and the post-processing of its probabilities.

Plain torch; imports no Lightning (the folder and ``.zarr`` routes run without it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from unet.data.frames import FrameSource
from unet.inference.checkpoint import TrainedModel
from unet.inference.engines import engine_tiler
from unet.inference.formats.loading import load_for_prediction
from unet.inference.postprocess import PostProcessing, postprocessing_for
from unet.io.pixel_size import PixelSize, read_pixel_size
from unet.model.record import record_or_default, settings_for
from unet.predict.request import PredictionSettingError, PredictRequest


def resolve_device(device: str) -> torch.device:
    """``auto`` (a GPU if one is visible), ``cpu`` or ``cuda[:n]``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PredictionSettingError(f"device={device}, but no GPU is visible; use device=cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PredictionSettingError(f"device={device!r}: expected auto, cpu or cuda") from None


def check_network(net: nn.Module, instance_class: int | None = None) -> nn.Module:
    """``net`` if it has 2 or more classes and ``instance_class`` is one of its foreground
    classes, else a PredictionSettingError."""
    config = net.config
    if config.num_classes < 2:
        raise PredictionSettingError(
            f"the network predicts {config.num_classes} class(es); prediction needs a "
            "background and a foreground class (2 or more classes)"
        )
    if instance_class is not None and not 1 <= instance_class < config.num_classes:
        raise PredictionSettingError(
            f"instance_class={instance_class}: expected a foreground class of the network, "
            f"1..{config.num_classes - 1}"
        )
    return net


def load_model(request: PredictRequest, streamed: bool = False):
    """(the checkpoint or exported model of ``request``, checked as it loads, and the
    request with the model record's settings where it left them null,
    :func:`with_model_record`)."""
    trained = load_for_prediction(request.checkpoint, request.trust_checkpoint)
    return trained, with_model_record(request, trained, streamed)


def with_model_record(
    request: PredictRequest, trained: TrainedModel, streamed: bool = False
) -> PredictRequest:
    """``request`` with its null ``tta``, ``precision``, ``tiler.tile_size`` and
    ``tiler.overlap`` those the model was validated with (:mod:`unet.model.record`); a
    value given wins, with a line saying so. ``streamed`` (a .zarr output): no test-time
    augmentation, with a note where the model was validated with one."""
    record = record_or_default(trained.record, trained.path)
    tta, precision = settings_for(record, request.tta, request.precision)
    if streamed and request.tta is None and tta != "none":
        print(
            f"note: a .zarr output is predicted without test-time augmentation; the model "
            f"was validated with tta={tta} (its post-processing was chosen on those probabilities)"
        )
        tta = "none"
    tiler = request.tiler
    tiler = engine_tiler(tiler, request.engine, trained.net.config, record.tile_size)
    tiler = replace(tiler, overlap=record.overlap if tiler.overlap is None else tiler.overlap)
    return request.but(tta=tta, precision=precision, tiler=tiler)


def post_processing(request: PredictRequest, trained: TrainedModel) -> PostProcessing:
    """The model's stored post-processing with the request's overrides."""
    return postprocessing_for(trained.postprocess, request.postprocess)


@dataclass(frozen=True)
class FramesSetUp:
    """What a prediction of frames (a folder output, one process or ranks) works with."""

    request: PredictRequest  # with the model record's settings
    net: nn.Module  # checked (:func:`check_network`), on the CPU
    source: FrameSource
    postprocess: PostProcessing
    pixel_size: PixelSize | None  # of the input: the request's, else what the input says
    training_pixel_size: PixelSize | None


def set_up_frames(request: PredictRequest) -> FramesSetUp:
    """Load the model, open the frames of ``request.input`` (the network's input channels
    say how to read them: gray, RGB, channel stacks) and get the post-processing."""
    trained, request = load_model(request)
    net = check_network(trained.net, request.write.instance_class)
    source = FrameSource(
        request.input, net.config.in_channels, request.nonfinite, request.input_axes
    )
    return FramesSetUp(
        request,
        net,
        source,
        post_processing(request, trained),
        request.pixel_size or read_pixel_size(request.input),
        trained.pixel_size,
    )
