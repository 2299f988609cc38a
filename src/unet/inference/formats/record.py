"""What travels with exported weights: the architecture, the validated post-processing and
the model record of how it was validated (:mod:`unet.model.record`: test-time augmentation,
precision, standardisation, tiles), which a package's runner defaults to.

The record is plain JSON-able data. TorchScript files keep it as an extra file, ONNX files
as metadata, bioimage.io packages in the ``config.unet`` section of ``rdf.yaml``; reading
it back gives the :class:`unet.inference.checkpoint.TrainedModel` fields that prediction needs.
"""

from __future__ import annotations

from pathlib import Path

from unet.inference.checkpoint import CheckpointError, TrainedModel, parse_net_config
from unet.inference.postprocess import PostProcessing, PostProcessingError
from unet.io.pixel_size import KEY as PIXEL_SIZE
from unet.model import shapes
from unet.model.fingerprint import record_probability_probe
from unet.model.network import NetConfig
from unet.model.record import ModelRecord, ModelRecordError, record_or_default, stored_record

KEY = "unet"  # ONNX metadata key, TorchScript extra file stem, rdf.yaml config section


def model_record(trained: TrainedModel) -> dict:
    """The record of a trained model (architecture, post-processing, how it was validated,
    size rule, probe)."""
    config = trained.config
    smallest, step = shapes.size_rule(config.depth, config.padding)
    return {
        "net_config": config.to_dict(),
        "postprocess": trained.postprocess.to_dict() if trained.postprocess else None,
        "postprocess_chosen_on": dict(trained.chosen_on),
        "model_record": record_or_default(trained.record, trained.path).to_dict(),
        # the training data's pixel size (None: unknown); also the rdf.yaml axes' scale
        PIXEL_SIZE: trained.pixel_size.to_record() if trained.pixel_size else None,
        # in words for people reading rdf.yaml: inputs smallest + k * step, output smaller by
        "input_size": {"smallest": smallest, "step": step},
        "output_smaller_by": shapes.halo(config.depth, config.padding),
        "output": "softmax class probabilities; "
        + ("class 1 = cell" if config.num_classes == 2 else "class 0 = background"),
        # the probabilities for a fixed input: loading checks the exported weights against it
        "probe": record_probability_probe(trained.net),
    }


def config_from_record(record: dict, path: Path) -> NetConfig:
    """The architecture of a record; a CheckpointError naming ``path`` if it is unusable."""
    stored = record.get("net_config") if isinstance(record, dict) else None
    if not isinstance(stored, dict):
        raise CheckpointError(
            f"{path}: expected a model exported by unet (with a '{KEY}' record holding "
            "'net_config'), found none"
        )
    return parse_net_config(stored, path)


def postprocess_from_record(record: dict, path: Path) -> PostProcessing | None:
    """The validated post-processing of a record, or None if it has none."""
    if record.get("postprocess") is None:
        return None
    try:
        return PostProcessing.from_dict(record["postprocess"])
    except PostProcessingError as err:
        raise CheckpointError(f"{path}: stored post-processing settings: {err}") from None


def validation_from_record(record: dict, path: Path) -> ModelRecord | None:
    """How the exported model was validated (:func:`unet.model.record.stored_record`)."""
    chosen_on = record.get("postprocess_chosen_on") or {}
    try:
        return stored_record(record.get("model_record"), chosen_on, path)
    except ModelRecordError as err:
        raise CheckpointError(str(err)) from None
