"""A bioimage.io package's README.md: sizes, tiling, preprocessing, validation, tools.

What each tool needs is taken from its own documentation (deepImageJ, ilastik's Neural
Network workflow, QuPath's Bioimage Model Zoo and Deep Java Library extensions); only
bioimageio.core is run by this repository's tests (tests/export/test_zoo_package.py).
"""

from __future__ import annotations

from unet.inference.formats.any_size import axis_sizes


def sizes_section(sizes: dict, depth: int, any_size: bool) -> str:
    """``## Input sizes (tiling)``: the size rule, the halo and when blocks stitch exactly."""
    if not any_size:
        return f"""## Input sizes (tiling)

Inputs must be {sizes["min"]} + {sizes["step"]}k pixels along y and x (k = 0, 1, 2, ...);
the output is {-sizes["offset"]} pixels smaller than the input, centred
(halo {sizes["halo"]} px). Zoo tools tile larger images for you.
"""
    grid, halo = 2**depth, sizes["halo"]
    return f"""## Input sizes (tiling)

Any image of at least {sizes["min"]} x {sizes["min"]} pixels: the weights mirror the image
at its borders (the context the U-Net's valid convolutions consume) and return class
probabilities of the input's size, as `src/predict.py` of the training repository does.
For large images, tools predict blocks and discard {halo} px (the halo) at each inner block
edge; the input declares `pad: reflect` for blocks at the image border.

Exact (equal to the whole image): blocks whose size (with halo) is a multiple of {grid}
(2^depth, the pooling grid), on an image whose sides are multiples of {grid}. Otherwise
the tool shifts the last row and column of blocks back to the image's edge, off the pooling
grid, and their probabilities can differ noticeably (up to 0.5 for a briefly trained test
network): predict such images whole, or cut them to a multiple of {grid} first.
Standardisation is per image: tools that compute it over the whole image before tiling
(bioimageio.core does) match training; statistics per block would not.
"""


def norm_note(config, record: dict) -> str:
    """For a network with instance norm: its output depends on the block size."""
    if not getattr(config, "instance_norm", False):
        return ""
    tile = (record.get("model_record") or {}).get("tile_size")
    size = f" of {tile} x {tile} px (the training tile)" if tile else " of the training tile's size"
    return f"""
This network normalises each block by the block's own statistics (instance norm), so its
probabilities depend a little on the block size. Blocks{size} reproduce
the training repository's predictions; other sizes give close but not equal ones.
"""


def tools_section(min_size: int, grid: int, onnx: bool) -> str:
    """``## Running it``: the steps per tool, and what was tested."""
    engines = "TorchScript or ONNX" if onnx else "TorchScript"
    n = -(-512 // grid) * grid - min_size  # blocks of about 512 px on the pooling grid
    return f"""## Running it

- bioimageio.core (Python; the only tool run by the exporting repository's tests):
  `pip install bioimageio.core torch`, then
  `bioimageio predict model.zip --inputs image.tif --blockwise {n}` (blocks of
  {min_size} + {n} = {min_size + n} px, a multiple of {grid}: exact, see above). Without
  `--blockwise` the whole image is one block, but bioimageio.core pads it by the halo
  *before* standardising, so the statistics include that mirrored frame (a small
  difference from training's); blocked prediction standardises the image as it is.
- Fiji / deepImageJ (not run here): install deepImageJ from the Fiji update site, then
  `Plugins > deepImageJ > deepImageJ Install Model`, choose this zip; open an image and
  `Plugins > deepImageJ > deepImageJ Run`. It runs the {engines} weights and tiles with the
  rdf.yaml's minimum ({min_size} px), step and halo.
- ilastik 1.4 or later (not run here): start the Neural Network workflow, load an image,
  drag this zip onto the model field (or choose it), then predict and export the
  probabilities.
- QuPath 0.5 (not run here): install the Deep Java Library extension with its PyTorch
  engine and the Bioimage Model Zoo extension, then
  `Extensions > Bioimage Model Zoo > Create pixel classifier` and choose this zip's
  rdf.yaml. The extension's documentation warns that models needing statistics of the
  whole image (this one standardises per image) can give different results in QuPath.
- napari (not run here): predict with bioimageio.core as above and add the result as an
  image layer (`viewer.add_image(prob)`).
"""


TTA_WORDS = {
    "none": "none (one pass)",
    "flips8": "flips8 (the mean probabilities of the 8 flips and rotations of the input)",
    "paper7": "paper7 (the mean of the 7 flips and rotations that are not the identity)",
}


def validation_settings(how: dict) -> str:
    """The model record (:mod:`unet.model.record`) in words, for README.md."""
    if not how:
        return ""
    tta = how.get("tta", "none")
    return (
        f"The validation predicted with test-time augmentation {TTA_WORDS.get(tta, tta)} at "
        f"precision {how.get('precision', '32')}; the labels of the chosen post-processing "
        "assume the same (`config.unet.model.record`, which this project's `src/predict.py` "
        "uses by default for this package)."
    )


def readme(
    name: str,
    dataset: dict,
    record: dict,
    config,
    pytorch: str,
    any_size: bool = True,
    onnx: bool = True,
) -> str:
    """The package's documentation (README.md); ``any_size``: weights of any input size,
    ``onnx``: the package has ONNX weights."""
    c, k = config.in_channels, config.num_classes
    # the probability post-processing turns into objects (unet.labels.foreground_probability)
    p = "p(cell)" if k == 2 else "p(foreground) = 1 - p(class 0)"
    chosen = record.get("postprocess_chosen_on") or {}
    post = record.get("postprocess")
    if post:
        validated = (
            f"Post-processing chosen on the {chosen.get('split', '?')} split of the training data "
            f"({chosen.get('score', '?')} = {chosen.get('value', float('nan')):.4f}): object "
            f"seeds where {p} > {post['threshold']}, then {post}."
        )
    else:
        validated = f"No post-processing was validated; the plain rule is {p} > 0.5."
    validated += " " + validation_settings(record.get("model_record") or {})
    sizes = axis_sizes(config, any_size)
    image = "a gray-value image" if c == 1 else f"a {c}-channel image (RGB or a channel stack)"
    classes = "channel 1 = cell" if k == 2 else f"{k} channels, class 0 = background"
    return f"""# {name}

U-Net (Ronneberger et al. 2015) trained on {dataset["name"]}: {image} in,
per-pixel class probabilities out ({classes}).

{sizes_section(sizes, config.depth, any_size)}{norm_note(config, record)}
## Preprocessing and output

Each image is standardised to zero mean and unit variance, each channel on its own (as in
training). The weights end with a softmax: the output holds class probabilities.

## Validation

{validated}
The test tensors are a crop of a real image and the output of these weights for it
(PyTorch {pytorch}); TorchScript and ONNX weights match PyTorch within 1e-4 at three sizes.

{tools_section(sizes["min"], 2**config.depth, onnx)}
## Training data

{dataset["description"]}
"""
