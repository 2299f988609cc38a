"""A trained U-Net outside this repository: TorchScript, ONNX and bioimage.io packages.

- ``probabilities``: the exported network, U-Net + softmax (standardised image in,
  class probabilities out);
- ``record``: what travels with the weights (architecture, validated post-processing);
- ``torchscript``, ``onnx``: one file each, checked against PyTorch at several valid sizes;
- ``bioimageio``: the BioImage Model Zoo package (rdf.yaml, weights, test tensors, cover);
- ``runner``: an exported file or package back as a network for ``unet.inference.tiler``
  (``src/predict.py ckpt_path=model.zip``);
- ``run``: ``src/export.py``'s work.

None of these import Lightning; bioimageio.spec, onnx and onnxruntime (the ``export``
extra) are imported only by the functions that need them.
"""
