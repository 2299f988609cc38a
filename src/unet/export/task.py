"""``src/export.py``: a checkpoint to a bioimage.io package, an ONNX or a TorchScript file.

Everything that can be wrong with the settings (format, output name, an existing output,
the data set a package must name, its test image) is checked before the network is built;
the file appears under its name only once it is complete and checked against PyTorch.

A package names its training data: ``training_data=`` if given, else the data set the
checkpoint's stored data module settings belong to (:func:`unet.export.datasets.dataset_key`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from unet.config.checks import check_config
from unet.data.frames import FrameSource
from unet.data.pairs import image_files
from unet.data.readers import DataError
from unet.errors import OutputExistsError, UserError
from unet.export.datasets import DATASETS, OWN, dataset_key, own_dataset, own_images
from unet.inference.checkpoint import load_trained, net_config_of, read_checkpoint
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import model_record
from unet.inference.shipped import shipped_model_at
from unet.io.atomic import atomic_file
from unet.io.output_safety import check_apart, check_replaceable, output_lock, write_faults
from unet.io.progress import progress_bar
from unet.model.network import NetConfig

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
    if overwrite:
        check_replaceable(output)  # only a model unet exported
    return output


def first_training_image(hparams: dict, ckpt_path: str) -> Path:
    """The first image (by name) of the training images folder the checkpoint recorded;
    an error asking for ``image=`` if there is none."""
    folder = own_images(hparams)
    try:
        if folder is not None:
            return next(iter(image_files(folder, "images").values()))
    except DataError:  # no such folder, or no images in it
        pass
    found = f"its training images {folder} are not there" if folder else "it names no images"
    raise ExportSettingError(
        f"format=bioimageio with training_data=own needs image=<one of the training images> "
        f"(the package's test tensors and cover are cut from it): {ckpt_path}: {found}"
    )


def training_dataset(cfg: DictConfig, checkpoint: dict, config: NetConfig) -> dict:
    """The description of the training data the package names (:data:`DATASETS`' fields):
    ``training_data=`` if set, else the data set the checkpoint's data module settings
    belong to; ``training_data_name`` / ``_description`` replace its wording."""
    hparams = checkpoint.get("datamodule_hyper_parameters")
    hparams = dict(hparams) if isinstance(hparams, dict) else {}
    key = cfg.training_data or dataset_key(hparams)
    if key is None:
        found = "match none of these" if hparams else "are not stored in it"
        raise ExportSettingError(
            f"format=bioimageio needs training_data=isbi|hela|u373|own: {cfg.ckpt_path} does "
            f"not say which data it was trained on (its data settings {found}); the package "
            "describes the data and cites its papers"
        )
    if key == OWN:
        dataset = own_dataset(hparams, config.in_channels, config.num_classes)
        if cfg.image is None:
            dataset["image"] = first_training_image(hparams, cfg.ckpt_path)
    else:
        dataset = {**DATASETS[key], "image": Path(cfg.paths.data_dir) / DATASETS[key]["image"]}
    if cfg.training_data_name:
        dataset["name"] = cfg.training_data_name
    if cfg.training_data_description:
        dataset["description"] = cfg.training_data_description
    return dataset


def default_name(dataset: dict) -> str:
    """``U-Net <training data>``, other characters than a bioimage.io model name may use
    (letters, digits, ``_+-()`` and spaces) replaced by ``_``."""
    return "U-Net " + re.sub(r"[^A-Za-z0-9_+\- ()]", "_", dataset["name"])


def package_settings(cfg: DictConfig, checkpoint: dict, config: NetConfig) -> dict:
    """The bioimage.io settings of ``cfg`` and the checkpoint (its training data); an error
    for one a package cannot do without."""
    dataset = training_dataset(cfg, checkpoint, config)
    shipped = shipped_model_at(cfg.ckpt_path)
    # a shipped model names who trained it; any other checkpoint needs the user to say
    authors = list(OmegaConf.to_container(cfg.authors)) if cfg.authors else []
    authors = authors or list(shipped.authors if shipped else ())
    if not authors:
        raise ExportSettingError(
            'format=bioimageio needs authors=["Your Name"] (the zoo lists who made the model)'
        )
    return {
        "dataset": dataset,
        "name": cfg.name or default_name(dataset),
        "authors": authors,
        "license": cfg.license,
        "onnx": cfg.onnx,
        "any_size": cfg.any_size,
        "image": str(cfg.image or dataset["image"]),
    }


def write_file(fmt: str, model: ProbabilityUNet, output: Path, record: dict, overwrite: bool):
    """One ONNX or TorchScript file, written under a temporary name and then renamed."""
    from unet.inference.formats.onnx import write_onnx
    from unet.inference.formats.torchscript import write_torchscript

    writer = write_onnx if fmt == "onnx" else write_torchscript
    with atomic_file(output, replace=overwrite) as partial:
        writer(model, partial, record)


def package_steps(settings: dict | None) -> int:
    """How many steps writing the output takes (progress): 1 for a single file."""
    if settings is None:
        return 1
    from unet.export.bioimageio import PACKAGE_STEPS  # bioimage.io only: imported when used

    return PACKAGE_STEPS


def write_output(cfg: DictConfig, trained, record: dict, package, output: Path, on_step):
    """The package (``package`` = (image, settings); settings None: a single file) or the
    ONNX / TorchScript file ``output``; ``on_step`` is called after each step."""
    image, settings = package
    try:
        if settings is not None:
            from unet.export.bioimageio import write_package

            write_package(
                trained, record, image, settings["image"], output, settings, cfg.overwrite, on_step
            )
        else:
            write_file(cfg.format, ProbabilityUNet.wrap(trained.net), output, record, cfg.overwrite)
            on_step()
    except FileExistsError:  # created by someone else while this export ran
        raise OutputExistsError(
            f"output={output} appeared during the export; not replacing it"
        ) from None


def export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.output``; returns a summary
    (format, output, seconds, bytes)."""
    check_config(cfg)
    check_apart(cfg.output, ckpt_path=cfg.ckpt_path, image=cfg.get("image"))
    output = check_output(cfg.output, cfg.format, cfg.overwrite)
    settings, image = None, None
    if cfg.format == "bioimageio":  # before the slow part: a wrong setting shows at once
        checkpoint = read_checkpoint(cfg.ckpt_path)
        config = net_config_of(checkpoint, Path(cfg.ckpt_path))
        settings = package_settings(cfg, checkpoint, config)
        del checkpoint
        frames = FrameSource(settings["image"], channels=config.in_channels)
        _, image = next(iter(frames))
    with progress_bar(True, "export") as bar:
        task = bar.add_task("steps", total=1 + package_steps(settings))
        trained = load_trained(cfg.ckpt_path, trust=cfg.get("trust_checkpoint", False))
        record = model_record(trained)
        bar.advance(task)
        start = time.perf_counter()
        with output_lock(output), write_faults(output):
            write_output(cfg, trained, record, (image, settings), output, lambda: bar.advance(task))
    seconds = time.perf_counter() - start
    size = output.stat().st_size
    Console().print(
        f"{cfg.format}: {cfg.ckpt_path} -> {output} ({size / 2**20:.1f} MiB) in {seconds:.1f} s"
    )
    return {"format": cfg.format, "output": str(output), "seconds": seconds, "bytes": size}
