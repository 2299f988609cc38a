"""The training data sets a package can name: what they are and the papers to cite.

The paper's data sets (``isbi``, ``hela``, ``u373``) are described here once; a model
trained on a user's own folder (``data=folder``) gets a description built from what its
checkpoint recorded (:func:`own_dataset`). :func:`dataset_key` tells them apart by the
data module's stored hyperparameters.
"""

from __future__ import annotations

from pathlib import Path

UNET_PAPER = {
    "text": "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
_CTC_PAPERS = [
    {
        "text": "Maška M, et al. A benchmark for comparison of cell tracking algorithms. "
        "Bioinformatics 30(11), 1609-1617 (2014).",
        "doi": "10.1093/bioinformatics/btu080",
    },
    {
        "text": "Ulman V, et al. An objective comparison of cell-tracking algorithms. "
        "Nature Methods 14, 1141-1152 (2017).",
        "doi": "10.1038/nmeth.4473",
    },
]
_CTC_TERMS = (
    "Cell Tracking Challenge training data; use outside the challenge needs the data "
    "providers' permission."
)

DATASETS = {
    "isbi": {
        "name": "ISBI 2012 EM segmentation challenge",
        "membranes": True,  # class 0 is what the eye follows: the cover shows it in red
        "description": "Serial-section transmission electron microscopy of the Drosophila "
        "first-instar larva ventral nerve cord, 512x512 px slices; labels: cell interior vs. "
        "membrane.",
        "modality": "electron microscopy",
        "tags": ["electron-microscopy", "membrane-segmentation", "neurons", "drosophila"],
        "image": "isbi2012/test-volume.tif",
        "cite": [
            {
                "text": "Cardona A, et al. An integrated micro- and macroarchitectural analysis "
                "of the Drosophila brain by computer-assisted serial section electron "
                "microscopy. PLoS Biology 8(10), e1000502 (2010).",
                "doi": "10.1371/journal.pbio.1000502",
            },
            {
                "text": "Arganda-Carreras I, et al. Crowdsourcing the creation of image "
                "segmentation algorithms for connectomics. Front. Neuroanat. 9, 142 (2015).",
                "doi": "10.3389/fnana.2015.00142",
            },
        ],
    },
    "hela": {
        "name": "Cell Tracking Challenge DIC-C2DH-HeLa",
        "description": "HeLa cells on a flat glass, differential interference contrast "
        f"microscopy, 512x512 px frames; labels: cell instances. {_CTC_TERMS}",
        "modality": "differential interference contrast microscopy",
        "tags": ["light-microscopy", "cell-segmentation", "dic", "hela"],
        "image": "DIC-C2DH-HeLa/01/t000.tif",
        "cite": _CTC_PAPERS,
    },
    "u373": {
        "name": "Cell Tracking Challenge PhC-C2DH-U373",
        "description": "Glioblastoma-astrocytoma U373 cells on a polyacrylamide substrate, "
        f"phase contrast microscopy, 520x696 px frames; labels: cell instances. {_CTC_TERMS}",
        "modality": "phase contrast microscopy",
        "tags": ["light-microscopy", "cell-segmentation", "phase-contrast", "u373"],
        "image": "PhC-C2DH-U373/01/t000.tif",
        "cite": _CTC_PAPERS,
    },
}

CTC_KEYS = {"DIC-C2DH-HeLa": "hela", "PhC-C2DH-U373": "u373"}
OWN = "own"  # training_data=own: the user's own folder of images and masks


def dataset_key(hparams: dict) -> str | None:
    """The data set a checkpoint's data module hyperparameters belong to (``isbi``,
    ``hela``, ``u373`` or ``own``), or None if they fit none of them.

    Each data module stores its constructor arguments: only ISBI's have ``val_slices``,
    only the Cell Tracking Challenge's ``dataset`` (its name), only the folder's
    ``mask_type``.
    """
    if "val_slices" in hparams:
        return "isbi"
    if "dataset" in hparams:
        return CTC_KEYS.get(str(hparams["dataset"]))
    if "mask_type" in hparams:
        return OWN
    return None


def own_images(hparams: dict) -> Path | None:
    """The folder of training images a ``data=folder`` checkpoint recorded (None if it
    recorded none); an absolute ``images`` replaces ``data_dir``, as in training."""
    if "data_dir" not in hparams:
        return None
    return Path(str(hparams["data_dir"])) / str(hparams.get("images", "images"))


def own_dataset(hparams: dict, in_channels: int, num_classes: int) -> dict:
    """The description of a model's own training data, in the shape of :data:`DATASETS`
    (``image``: None; the caller finds one). ``hparams`` may be empty (a checkpoint that
    recorded no data settings); the channels and classes are the network's."""
    folder = Path(str(hparams["data_dir"])).name if "data_dir" in hparams else None
    masks = {
        "semantic": "semantic masks (one class index per pixel)",
        "instance": "instance masks (one id per object, 0 = background)",
    }.get(str(hparams.get("mask_type")), "masks")
    channels = "gray" if in_channels == 1 else f"{in_channels}-channel"
    where = f"the folder {folder}" if folder else "a folder (its name was not recorded)"
    return {
        "name": f"own images ({folder})" if folder else "own images",
        "description": f"The model authors' own {channels} images and {masks} from {where}, "
        f"{num_classes} classes (class 0 = background), trained with data=folder of this "
        "U-Net repository.",
        "modality": "the authors' own images",
        "tags": [],
        "image": None,
        # nothing is known about these images' source: only the method is cited
        "cite": [UNET_PAPER],
    }
