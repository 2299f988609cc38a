"""The napari plugin: open predictions, segment and fine-tune inside the viewer.

An npe2 manifest (``napari.yaml``, registered under the ``napari.manifest`` entry point)
contributes a reader (:mod:`unet.napari.reader`), the Segment widget
(:mod:`unet.napari.segment`), the Fine-tune widget (:mod:`unet.napari.finetune`) and a
synthetic sample (:mod:`unet.napari.sample`). The widgets are thin: prediction is
:func:`unet.inference.image.predict_image` with :class:`unet.inference.tiler.Tiler`, labels are
:class:`unet.inference.postprocess.PostProcessing`, fine-tuning is :func:`unet.training.task.train`
on a
``data=folder`` data set. Install with ``pip install -e ".[napari]"``.

The Qt-free parts (:mod:`unet.napari.layers`, :mod:`unet.napari.segmentation`,
:mod:`unet.napari.training_set`) are usable and tested without a viewer.
"""
