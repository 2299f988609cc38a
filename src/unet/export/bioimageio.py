"""The BioImage Model Zoo package (bioimage.io model format 0.5) of a trained U-Net.

One zip file: ``rdf.yaml`` (written and validated by ``bioimageio.spec``) and what it
names: TorchScript weights (Fiji/deepImageJ, ilastik and QuPath run these), PyTorch
state-dict weights (rebuilt by :class:`unet.inference.formats.any_size.AnySizeUNet`, which needs
this
package installed), ONNX weights (unless ``onnx=false``), a test input cropped from a real
image with the output the weights give for it, a cover (image | probability overlay) and a
README (:mod:`unet.export.package_readme`).

The input is (batch, channel, y, x) with the network's C input channels (1 gray, 3 RGB, or
a C-channel stack). By default the weights are
:class:`~unet.inference.formats.any_size.AnySizeUNet`:
y and x of any size from :func:`~unet.inference.formats.any_size.minimum_size` on, output (batch, K
classes, y, x) of the input's size, a halo for tools that predict blocks, and ``pad:
reflect`` (how the weights mirror). ``any_size=false``: the bare network, inputs of its
valid sizes ``smallest + k * step`` (:func:`unet.model.shapes.size_rule`) and outputs smaller by
the context the valid convolutions consume. Preprocessing is the training's per-image zero
mean, unit variance, channel by channel (:func:`unet.data.samples.standardize`); the
weights end with a softmax, so the output is class probabilities.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet.data.samples import standardize
from unet.errors import UserError
from unet.export.datasets import UNET_PAPER
from unet.export.package_readme import readme
from unet.inference.checkpoint import TrainedModel
from unet.inference.formats.any_size import AnySizeUNet, any_size_record, axis_sizes, minimum_size
from unet.inference.formats.check import require_finite
from unet.inference.formats.onnx import OPSET, write_onnx
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import KEY
from unet.inference.formats.torchscript import write_torchscript
from unet.io.atomic import atomic_file
from unet.io.panels import tint
from unet.labels import CELL_CLASS
from unet.model import shapes

INPUT, OUTPUT = "input", "output"
EPS = 1e-6  # bioimage.io's smallest allowed epsilon; training divides by the std alone


class PackageError(UserError, ValueError):
    """A package that cannot be built or does not validate."""


def test_crop(image: np.ndarray, config, where: str, any_size: bool = False) -> np.ndarray:
    """The centre of ``image`` ((H, W) or (C, H, W)) at the largest valid size that fits it
    (at most 512 px); ``any_size``: at most 512 px, at least the any-size minimum."""
    space = image.shape[-2:]
    if any_size:
        smallest = minimum_size(config)
        if min(space) < smallest:
            raise PackageError(
                f"image={where}: {space[0]}x{space[1]} px is smaller than the exported "
                f"network's smallest input ({smallest} px); choose a larger image"
            )
        top, left = [(s - min(s, 512)) // 2 for s in space]
        return image[..., top : top + min(space[0], 512), left : left + min(space[1], 512)]
    sizes = []
    for side in space:
        below = shapes.nearest_valid_input_sizes(min(side, 512), config.depth, config.padding)
        if below[0] > side:
            smallest = shapes.size_rule(config.depth, config.padding)[0]
            raise PackageError(
                f"image={where}: {space[0]}x{space[1]} px is smaller than the "
                f"network's smallest input ({smallest} px); choose a larger image"
            )
        sizes.append(below[0])
    top, left = [(s - c) // 2 for s, c in zip(space, sizes, strict=True)]
    return image[..., top : top + sizes[0], left : left + sizes[1]]


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 255] of an (H, W) or (C, H, W) image: three channels as RGB,
    other channel counts as their mean (as the run report shows them), stretched to the
    full range."""
    if image.ndim == 3 and image.shape[0] == 3:
        rgb = np.moveaxis(image, 0, -1).astype(np.float32)
    else:
        gray = image.mean(axis=0) if image.ndim == 3 else image
        rgb = np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)
    return (rgb - rgb.min()) / max(float(np.ptp(rgb)), 1e-6) * 255


def cover_image(crop: np.ndarray, prob: np.ndarray, membranes: bool = False) -> np.ndarray:
    """(h, 2w, 3) uint8: the image where the output lies | the same with the prediction:
    for two classes the cell probability in red (``membranes``: the probability of class 0,
    ISBI's membranes, instead), for K > 2 every pixel's most probable class but 0
    (background) in its own colour.

    Args:
        crop: the test input, (h0, w0) or (C, h0, w0).
        prob: the class probabilities for it, (K, h, w) with h <= h0, w <= w0 (centred).
        membranes: show class 0 (ISBI 2012: membranes between cells) rather than cells.
    """
    h, w = prob.shape[-2:]
    top, left = (crop.shape[-2] - h) // 2, (crop.shape[-1] - w) // 2
    rgb = display_rgb(crop[..., top : top + h, left : left + w])
    if prob.shape[0] == 2:
        shown = 1 - prob[CELL_CLASS] if membranes else prob[CELL_CLASS]
        alpha = 0.6 * shown[..., None]
        tinted = (1 - alpha) * rgb + alpha * np.array([255.0, 40.0, 40.0])
    else:
        tinted = tint(rgb / 255, prob.argmax(axis=0), alpha=0.5) * 255
    return np.concatenate([rgb, tinted], axis=1).round().astype(np.uint8)


def channel_names(config) -> tuple[list[str], list[str]]:
    """(input, output) channel names: ``gray`` or ``channel0``..; ``background``, ``cell``
    for two classes, ``background``, ``class1``.. for more."""
    c = config.in_channels
    inputs = ["gray"] if c == 1 else [f"channel{i}" for i in range(c)]
    if config.num_classes == 2:
        return inputs, ["background", "cell"]
    return inputs, ["background", *(f"class{k}" for k in range(1, config.num_classes))]


def write_weights(model: ProbabilityUNet, folder: Path, record: dict, onnx: bool) -> dict:
    """Weight files in ``folder``; returns their bioimage.io descriptions."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        OnnxWeightsDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
    )

    pytorch = torch.__version__.split("+")[0]
    torch.save(model.state_dict(), folder / "weights.pt")
    write_torchscript(model, folder / "weights_torchscript.pt", record)
    weights = {
        "pytorch_state_dict": PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=ArchitectureFromLibraryDescr(
                import_from=type(model).__module__,
                callable=type(model).__name__,
                kwargs=model.config.to_dict(),
            ),
            pytorch_version=pytorch,
            comment="needs the unet package of this repository (pip install .)",
        ),
        "torchscript": TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=pytorch,
            parent="pytorch_state_dict",
        ),
    }
    if onnx:
        write_onnx(model, folder / "weights.onnx", record)
        weights["onnx"] = OnnxWeightsDescr(
            source=folder / "weights.onnx", opset_version=OPSET, parent="pytorch_state_dict"
        )
    return weights


def tensor_descriptions(
    config, folder: Path, pixel_size=None, any_size: bool = True
) -> tuple[list, list]:
    """(inputs, outputs) descriptions, with the test tensors already in ``folder``; the
    space axes carry ``pixel_size`` (the training data's) as scale and unit; ``any_size``:
    the weights of :class:`unet.inference.formats.any_size.AnySizeUNet`."""
    from bioimageio.spec.model import v0_5 as spec

    sizes = axis_sizes(config, any_size)
    scales = axis_scales(pixel_size)
    in_names, classes = channel_names(config)
    inputs = input_description(spec, config, folder, sizes, scales, in_names, any_size)
    outputs = spec.OutputTensorDescr(
        id=OUTPUT,
        description="softmax class probabilities",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=classes),
            *output_space_axes(spec, sizes, scales),
        ],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return [inputs], [outputs]


def input_description(spec, config, folder: Path, sizes, scales, in_names, any_size: bool):
    """The input tensor: its axes, test tensor, padding and per-image standardisation."""
    space = spec.ParameterizedSize
    in_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=in_names),
        *(
            spec.SpaceInputAxis(id=a, size=space(min=sizes["min"], step=sizes["step"]), **scales[a])
            for a in ("y", "x")
        ),
    ]
    image = "gray-value image" if config.in_channels == 1 else f"{config.in_channels}-channel image"
    return spec.InputTensorDescr(
        id=INPUT,
        description=f"{image} (any intensity range; standardised per image and channel)",
        axes=in_axes,
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        # blocks at the image border (and a tool's frame around a whole image) are mirrored
        # as the network mirrors (numpy's reflect, unet.data.mirror)
        pad=spec.ReflectPadding() if any_size else None,
        preprocessing=[
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
            spec.ZeroMeanUnitVarianceDescr(
                # over y and x: each channel of each image on its own, as in training
                kwargs=spec.ZeroMeanUnitVarianceKwargs(axes=["y", "x"], eps=EPS)
            ),
        ],
    )


def output_space_axes(spec, sizes, scales) -> list:
    """The output's y and x axes: the input's size plus the net's offset, with its halo."""
    axes = []
    for a in ("y", "x"):
        size = spec.SizeReference(tensor_id=INPUT, axis_id=a, offset=sizes["offset"])
        axes.append(
            spec.SpaceOutputAxisWithHalo(id=a, size=size, halo=sizes["halo"], **scales[a])
            if sizes["halo"]
            else spec.SpaceOutputAxis(id=a, size=size, **scales[a])
        )
    return axes


def axis_scales(pixel_size) -> dict[str, dict]:
    """Per space axis, the ``scale`` and ``unit`` of a known pixel size (none otherwise)."""
    if pixel_size is None or not pixel_size.known:
        return {"y": {}, "x": {}}
    return {
        "y": {"scale": zoo_scale(pixel_size.y), "unit": pixel_size.unit},
        "x": {"scale": zoo_scale(pixel_size.x), "unit": pixel_size.unit},
    }


def zoo_scale(scale: float) -> float:
    """``scale`` rounded to float32's 24 significant bits. The zoo tools size an output axis
    as ``int(input size * input scale / output scale + offset)``; with a full-precision
    scale such as 0.650000293 um (a TIFF resolution) the product is rounded and 209 becomes
    208.99999999999997, so ``int`` gives 208 and bioimageio.core refuses the package's own
    output. With 24 significant bits the product is exact for any size below 2**29, and the
    quotient is the size again. The change is below 1e-7 of the scale."""
    return float(np.float32(scale))


@torch.no_grad()
def write_test_tensors(
    model: ProbabilityUNet, image: np.ndarray, where: str, folder: Path, membranes: bool = False
):
    """test_input.npy (a raw crop, (1, C, h, w)), test_output.npy and cover.png.

    ``image``: (H, W) for a gray network, (C, H, W) for one of C input channels;
    ``membranes``: the cover shows class 0 (ISBI's membranes), see :func:`cover_image`.
    """
    crop = test_crop(image, model.config, where, isinstance(model, AnySizeUNet))
    raw = crop.astype(np.float32).reshape(1, -1, *crop.shape[-2:])  # (1, C, h, w)
    prob = model(torch.from_numpy(standardize(raw[0]))[None]).numpy()  # (1, K, h', w')
    require_finite(f"test input cropped from {where}", prob, raw.shape[-2:])
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", prob)
    Image.fromarray(cover_image(raw[0], prob[0], membranes)).save(folder / "cover.png")


def describe(trained: TrainedModel, record: dict, folder: Path, settings: dict, weights: dict):
    """The validated ``ModelDescr`` of the files in ``folder``."""
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        Config,
        DatasetDescr,
        FileDescr,
        ModelDescr,
        WeightsDescr,
    )
    from pydantic import ValidationError

    dataset = settings["dataset"]
    any_size = settings.get("any_size", True)
    inputs, outputs = tensor_descriptions(trained.config, folder, trained.pixel_size, any_size)
    pytorch = torch.__version__.split("+")[0]
    text = readme(
        settings["name"], dataset, record, trained.config, pytorch, any_size, settings["onnx"]
    )
    papers = [UNET_PAPER, *(c for c in dataset["cite"] if c != UNET_PAPER)]
    (folder / "README.md").write_text(text)
    try:
        return ModelDescr(
            name=settings["name"],
            description=f"U-Net for {dataset['modality']}: class probabilities per pixel "
            f"(trained on {dataset['name']}).",
            authors=[Author(name=name) for name in settings["authors"]],
            cite=[CiteEntry(**c) for c in papers],
            license=settings["license"],
            tags=["unet", "segmentation", "2d", "pytorch", *dataset["tags"]],
            documentation=FileDescr(source=folder / "README.md"),
            covers=[FileDescr(source=folder / "cover.png")],
            inputs=inputs,
            outputs=outputs,
            weights=WeightsDescr(**weights),
            training_data=DatasetDescr(
                name=dataset["name"],
                description=dataset["description"],
                cite=[CiteEntry(**c) for c in dataset["cite"]],
            ),
            config=Config(**{KEY: record}),
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise PackageError(f"bioimage.io field {where}: {first['msg']}") from None


def write_reflect_padding(package: Path) -> None:
    """Spell out ``pad: {mode: reflect}`` in the package's rdf.yaml.

    bioimageio.spec 0.5.12 leaves a field at its default out when it writes rdf.yaml, so
    ``ReflectPadding()`` (whose ``mode`` defaults to ``reflect``) is written as ``pad: {}``,
    which reads back as constant (zero) padding.
    """
    with zipfile.ZipFile(package) as archive:
        members = {info: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(package, "w") as archive:
        for info, data in members.items():
            if info.filename == "rdf.yaml":
                data = data.replace(b"\n    pad: {}\n", b"\n    pad: {mode: reflect}\n")
            archive.writestr(info, data)


# weights, test tensors, the zip, its validation: write_package's steps, for progress
PACKAGE_STEPS = 4


def write_package(
    trained: TrainedModel,
    record: dict,
    image: np.ndarray,
    image_path: str,
    output: Path,
    settings: dict,
    overwrite: bool = False,
    on_step=None,
) -> Path:
    """Build, validate and write the package zip ``output``.

    Args:
        trained: the trained network and its stored settings.
        record: :func:`unet.inference.formats.record.model_record` of it.
        image: a real 2D image (the test tensors and cover are cropped from it).
        image_path: where ``image`` came from (for messages).
        output: the zip file to write (refused if it exists, unless ``overwrite``).
        settings: ``name``, ``authors`` (list of names), ``license`` (SPDX id),
            ``dataset`` (the training data: a :data:`unet.export.datasets.DATASETS` entry or
            :func:`unet.export.datasets.own_dataset`), ``onnx`` (also ONNX weights) and
            ``any_size`` (default True: :class:`unet.inference.formats.any_size.AnySizeUNet`
            weights;
            False: the bare network and its valid sizes).
        on_step: called after each of the :data:`PACKAGE_STEPS` steps (progress).
    """
    step = on_step or (lambda: None)
    from bioimageio.spec import load_model_description, save_bioimageio_package
    from bioimageio.spec.model.v0_5 import ModelDescr

    any_size = settings.get("any_size", True)
    if any_size:  # the runner (predict.py model.zip) and readers of rdf.yaml see it
        record = {**record, "any_size": any_size_record(trained.config)}
    model = (AnySizeUNet if any_size else ProbabilityUNet).wrap(trained.net.cpu())
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        folder = Path(tmp)
        weights = write_weights(model, folder, record, settings["onnx"])
        step()
        membranes = settings["dataset"].get("membranes", False)
        write_test_tensors(model, image, image_path, folder, membranes)
        step()
        descr = describe(trained, record, folder, settings, weights)
        staged = save_bioimageio_package(descr, output_path=folder / "package.zip")
        if any_size:
            write_reflect_padding(staged)
        step()
        written = load_model_description(staged, perform_io_checks=True)
        step()
        if not isinstance(written, ModelDescr):
            errors = written.validation_summary.errors
            first = errors[0] if errors else "unknown"
            raise PackageError(f"{output}: the package does not validate: {first}")
        if any_size and written.inputs[0].pad.mode != "reflect":
            raise PackageError(f"{output}: rdf.yaml lost its reflect padding (bioimageio.spec)")
        with atomic_file(output, replace=overwrite) as partial:
            shutil.move(staged, partial)
    return output
