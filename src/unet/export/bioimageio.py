"""The BioImage Model Zoo package (bioimage.io model format 0.5) of a trained U-Net.

One zip file: ``rdf.yaml`` (written and validated by ``bioimageio.spec``) and what it
names: TorchScript weights (Fiji/deepImageJ, ilastik and QuPath run these), PyTorch
state-dict weights (rebuilt by :class:`unet.export.probabilities.ProbabilityUNet`, which
needs this package installed), optionally ONNX weights, a test input cropped from a real
image with the output the weights give for it, a cover (image | probability overlay) and a
README.

The input is (batch, channel, y, x) with y and x of any valid size, ``smallest + k * step``
(:func:`unet.shapes.size_rule`); the output's y and x are the input's minus the halo the
valid convolutions consume (``same`` nets: equal sizes, with a halo to crop between
tiles, :func:`unet.tiler.edge_reach`). Preprocessing is the training's per-image zero mean,
unit variance; the weights end with a softmax, so the output is class probabilities.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet import shapes
from unet.atomic import atomic_file
from unet.checkpoint import TrainedModel
from unet.data.samples import standardize
from unet.errors import UserError
from unet.export.datasets import DATASETS, UNET_PAPER
from unet.export.onnx import OPSET, write_onnx
from unet.export.probabilities import ProbabilityUNet
from unet.export.record import KEY
from unet.export.torchscript import write_torchscript
from unet.labels import CELL_CLASS
from unet.tiler import edge_reach

INPUT, OUTPUT = "input", "output"
EPS = 1e-6  # bioimage.io's smallest allowed epsilon; training divides by the std alone


class PackageError(UserError, ValueError):
    """A package that cannot be built or does not validate."""


def axis_sizes(config) -> dict:
    """The size rule in bioimage.io terms: input minimum and step, output offset and halo."""
    smallest, step = shapes.size_rule(config.depth, config.padding)
    halo = edge_reach(config.depth, config.padding, config.up_mode)
    if halo:  # the zoo requires an output of more than 2 x halo at the minimum size
        smallest = shapes.smallest_input_covering(2 * halo + 1, config.depth, config.padding)
    offset = -shapes.halo(config.depth, config.padding)
    return {"min": smallest, "step": step, "offset": offset, "halo": halo}


def test_crop(image: np.ndarray, config, where: str) -> np.ndarray:
    """The centre of ``image`` at the largest valid size that fits it (at most 512 px)."""
    sizes = []
    for side in image.shape:
        below = shapes.nearest_valid_input_sizes(min(side, 512), config.depth, config.padding)
        if below[0] > side:
            smallest = shapes.size_rule(config.depth, config.padding)[0]
            raise PackageError(
                f"image={where}: {image.shape[0]}x{image.shape[1]} px is smaller than the "
                f"network's smallest input ({smallest} px); choose a larger image"
            )
        sizes.append(below[0])
    top, left = [(s - c) // 2 for s, c in zip(image.shape, sizes, strict=True)]
    return image[top : top + sizes[0], left : left + sizes[1]]


def cover_image(crop: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(h, 2w, 3) uint8: the image where the output lies | the same with the probability of
    not-cell (membrane, background) in red."""
    h, w = cells.shape
    top, left = (crop.shape[0] - h) // 2, (crop.shape[1] - w) // 2
    gray = crop[top : top + h, left : left + w].astype(np.float32)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6) * 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    alpha = 0.6 * (1 - cells[..., None])
    tinted = (1 - alpha) * rgb + alpha * np.array([255.0, 40.0, 40.0])
    return np.concatenate([rgb, tinted], axis=1).round().astype(np.uint8)


def readme(name: str, dataset: dict, record: dict, sizes: dict, pytorch: str) -> str:
    """The package's documentation (README.md)."""
    chosen = record.get("postprocess_chosen_on") or {}
    post = record.get("postprocess")
    if post:
        validated = (
            f"Post-processing chosen on the {chosen.get('split', '?')} split of the training data "
            f"({chosen.get('score', '?')} = {chosen.get('value', float('nan')):.4f}): cell "
            f"seeds where p(cell) > {post['threshold']}, then {post}."
        )
    else:
        validated = "No post-processing was validated; the plain rule is p(cell) > 0.5."
    return f"""# {name}

U-Net (Ronneberger et al. 2015) trained on {dataset["name"]}: a gray-value image in,
per-pixel class probabilities out (channel 1 = cell).

## Input sizes (tiling)

Inputs must be {sizes["min"]} + {sizes["step"]}k pixels along y and x (k = 0, 1, 2, ...);
the output is {-sizes["offset"]} pixels smaller than the input, centred
(halo {sizes["halo"]} px). Zoo tools tile larger images for you.

## Preprocessing and output

Each image is standardised to zero mean and unit variance (as in training). The weights
end with a softmax: the output holds class probabilities.

## Validation

{validated}
The test tensors are a crop of a real image and the output of these weights for it
(PyTorch {pytorch}); TorchScript and ONNX weights match PyTorch within 1e-4 at three sizes.

## Training data

{dataset["description"]}
"""


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
                import_from=ProbabilityUNet.__module__,
                callable=ProbabilityUNet.__name__,
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


def tensor_descriptions(config, folder: Path) -> tuple[list, list]:
    """(inputs, outputs) descriptions, with the test tensors already in ``folder``."""
    from bioimageio.spec.model.v0_5 import (
        BatchAxis,
        ChannelAxis,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        SpaceOutputAxisWithHalo,
        ZeroMeanUnitVarianceDescr,
        ZeroMeanUnitVarianceKwargs,
    )

    sizes = axis_sizes(config)
    in_axes = [
        BatchAxis(),
        ChannelAxis(channel_names=["gray"]),
        *(
            SpaceInputAxis(id=a, size=ParameterizedSize(min=sizes["min"], step=sizes["step"]))
            for a in ("y", "x")
        ),
    ]
    out_space = []
    for a in ("y", "x"):
        size = SizeReference(tensor_id=INPUT, axis_id=a, offset=sizes["offset"])
        out_space.append(
            SpaceOutputAxisWithHalo(id=a, size=size, halo=sizes["halo"])
            if sizes["halo"]
            else SpaceOutputAxis(id=a, size=size)
        )
    classes = ["background", "cell"] if config.num_classes == 2 else None
    classes = classes or [f"class{k}" for k in range(config.num_classes)]
    inputs = InputTensorDescr(
        id=INPUT,
        description="gray-value image (any intensity range; standardised per image)",
        axes=in_axes,
        test_tensor=FileDescr(source=folder / "test_input.npy"),
        preprocessing=[
            EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32")),
            ZeroMeanUnitVarianceDescr(
                kwargs=ZeroMeanUnitVarianceKwargs(axes=["channel", "y", "x"], eps=EPS)
            ),
        ],
    )
    outputs = OutputTensorDescr(
        id=OUTPUT,
        description="softmax class probabilities",
        axes=[BatchAxis(), ChannelAxis(channel_names=classes), *out_space],
        test_tensor=FileDescr(source=folder / "test_output.npy"),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return [inputs], [outputs]


@torch.no_grad()
def write_test_tensors(model: ProbabilityUNet, image: np.ndarray, where: str, folder: Path):
    """test_input.npy (a raw crop, (1, 1, h, w)), test_output.npy and cover.png."""
    crop = test_crop(image, model.config, where)
    raw = crop.astype(np.float32)[None, None]  # (1, 1, h, w)
    prob = model(torch.from_numpy(standardize(crop))[None, None]).numpy()  # (1, K, h', w')
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", prob)
    Image.fromarray(cover_image(crop, prob[0, CELL_CLASS])).save(folder / "cover.png")


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

    dataset = DATASETS[settings["training_data"]]
    inputs, outputs = tensor_descriptions(trained.config, folder)
    pytorch = torch.__version__.split("+")[0]
    text = readme(settings["name"], dataset, record, axis_sizes(trained.config), pytorch)
    (folder / "README.md").write_text(text)
    try:
        return ModelDescr(
            name=settings["name"],
            description=f"U-Net for {dataset['modality']}: class probabilities per pixel "
            f"(trained on {dataset['name']}).",
            authors=[Author(name=name) for name in settings["authors"]],
            cite=[CiteEntry(**UNET_PAPER), *(CiteEntry(**c) for c in dataset["cite"])],
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


def write_package(
    trained: TrainedModel,
    record: dict,
    image: np.ndarray,
    image_path: str,
    output: Path,
    settings: dict,
    overwrite: bool = False,
) -> Path:
    """Build, validate and write the package zip ``output``.

    Args:
        trained: the trained network and its stored settings.
        record: :func:`unet.export.record.model_record` of it.
        image: a real 2D image (the test tensors and cover are cropped from it).
        image_path: where ``image`` came from (for messages).
        output: the zip file to write (refused if it exists, unless ``overwrite``).
        settings: ``name``, ``authors`` (list of names), ``license`` (SPDX id),
            ``training_data`` (a :data:`DATASETS` key) and ``onnx`` (also ONNX weights).
    """
    from bioimageio.spec import load_model_description, save_bioimageio_package
    from bioimageio.spec.model.v0_5 import ModelDescr

    model = ProbabilityUNet.wrap(trained.net.cpu())
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        folder = Path(tmp)
        weights = write_weights(model, folder, record, settings["onnx"])
        write_test_tensors(model, image, image_path, folder)
        descr = describe(trained, record, folder, settings, weights)
        staged = save_bioimageio_package(descr, output_path=folder / "package.zip")
        written = load_model_description(staged, perform_io_checks=True)
        if not isinstance(written, ModelDescr):
            errors = written.validation_summary.errors
            first = errors[0] if errors else "unknown"
            raise PackageError(f"{output}: the package does not validate: {first}")
        with atomic_file(output, replace=overwrite) as partial:
            shutil.move(staged, partial)
    return output
