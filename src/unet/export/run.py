"""``src/export.py``: a checkpoint to a bioimage.io package, an ONNX or a TorchScript file.

Everything that can be wrong with the settings (format, output name, an existing output,
the data set a package must name) is checked before the checkpoint is loaded; the file
appears under its name only once it is complete and checked against PyTorch.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from unet.atomic import atomic_file
from unet.checkpoint import load_trained
from unet.data.frames import FrameSource
from unet.errors import OutputExistsError, UserError
from unet.export.datasets import DATASETS
from unet.export.probabilities import ProbabilityUNet
from unet.export.record import model_record
from unet.validation import check_config

SUFFIXES = {"bioimageio": ".zip", "onnx": ".onnx", "torchscript": ".pt"}


class ExportSettingError(UserError, ValueError):
    """An export setting that cannot work."""


def check_output(output: str | Path, fmt: str, overwrite: bool) -> Path:
    """The output file: the format's suffix, a writable folder, new unless ``overwrite``."""
    output = Path(output)
    suffix = SUFFIXES[fmt]
    if output.suffix.lower() != suffix:
        raise ExportSettingError(
            f"output={output}: format={fmt} writes a {suffix} file; expected a name ending "
            f"in {suffix}"
        )
    if output.is_dir():
        raise OutputExistsError(f"output={output} is an existing folder; expected a file name")
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"output={output} already exists; pass overwrite=true to replace it, or choose a "
            "new name"
        )
    if not output.parent.is_dir():
        raise ExportSettingError(f"output={output}: the folder {output.parent} does not exist")
    return output


def package_settings(cfg: DictConfig) -> dict:
    """The bioimage.io settings of ``cfg``; an error for one a package cannot do without."""
    if cfg.training_data is None:
        raise ExportSettingError(
            "format=bioimageio needs training_data=isbi|hela|u373 (the data set the "
            "checkpoint was trained on: its description and papers go into the package)"
        )
    if not cfg.authors:
        raise ExportSettingError(
            'format=bioimageio needs authors=["Your Name"] (the zoo lists who made the model)'
        )
    dataset = DATASETS[cfg.training_data]
    return {
        "training_data": cfg.training_data,
        "name": cfg.name or f"U-Net {dataset['name']}",
        "authors": list(OmegaConf.to_container(cfg.authors)),
        "license": cfg.license,
        "onnx": cfg.onnx,
        "image": cfg.image or str(Path(cfg.paths.data_dir) / dataset["image"]),
    }


def write_file(fmt: str, model: ProbabilityUNet, output: Path, record: dict, overwrite: bool):
    """One ONNX or TorchScript file, written under a temporary name and then renamed."""
    from unet.export.onnx import write_onnx
    from unet.export.torchscript import write_torchscript

    writer = write_onnx if fmt == "onnx" else write_torchscript
    with atomic_file(output, replace=overwrite) as partial:
        writer(model, partial, record)


def export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.output``; returns a summary
    (format, output, seconds, bytes)."""
    check_config(cfg)
    output = check_output(cfg.output, cfg.format, cfg.overwrite)
    settings = package_settings(cfg) if cfg.format == "bioimageio" else None
    image = None
    if settings is not None:  # read before the slow part: a wrong path shows at once
        _, image = next(iter(FrameSource(settings["image"])))
    trained = load_trained(cfg.ckpt_path)
    record = model_record(trained)
    start = time.perf_counter()
    try:
        if settings is not None:
            from unet.export.bioimageio import write_package

            write_package(
                trained, record, image, settings["image"], output, settings, cfg.overwrite
            )
        else:
            write_file(cfg.format, ProbabilityUNet.wrap(trained.net), output, record, cfg.overwrite)
    except FileExistsError:  # created by someone else while this export ran
        raise OutputExistsError(
            f"output={output} appeared during the export; not replacing it"
        ) from None
    seconds = time.perf_counter() - start
    size = output.stat().st_size
    Console().print(
        f"{cfg.format}: {cfg.ckpt_path} -> {output} ({size / 2**20:.1f} MiB) in {seconds:.1f} s"
    )
    return {"format": cfg.format, "output": str(output), "seconds": seconds, "bytes": size}
