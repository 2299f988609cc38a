"""The training data sets a package can name: what they are and the papers to cite."""

from __future__ import annotations

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
