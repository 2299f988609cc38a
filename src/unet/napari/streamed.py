"""The Segment widget's route for images larger than memory: stream the layer's file into a
``.zarr`` store (``unet.predict.zarr.route.predict_to_zarr``: chunk rows, resumable) in a
worker, then open the store with :mod:`unet.napari.reader` (lazy zarr layers).

The store is predicted without test-time augmentation, as ``src/predict.py`` does for a
``.zarr`` output; a cancel leaves the finished chunk rows, and streaming to the same store
again continues there.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info

from unet.napari.reader import read_store
from unet.napari.segmentation import Cancelled, one_line
from unet.napari.widgets import run_in_thread


def layer_file(layer) -> str | None:
    """The file a layer was opened from, or None (made in the viewer, or by a script)."""
    path = getattr(layer.source, "path", None)
    return str(path) if path else None


def stream_layer(widget) -> None:
    """Stream the widget's chosen image layer into its chosen store (module docstring)."""
    chosen = widget.chosen_frames()
    if chosen is None or widget.worker is not None:
        return
    name, frames = chosen
    source = layer_file(widget.image.layer())
    output = widget.store_path.path
    if source is None:
        show_error(
            f"image layer {name!r} was not opened from a file; the .zarr route reads the "
            "image from its file: open it with File > Open, or use Segment"
        )
        return
    if not output.rstrip("/").endswith(".zarr"):
        show_error(f"store {output!r}: expected a path ending in .zarr; choose one")
        return
    segmenter = widget.segmenter
    try:
        tiler = segmenter.tiler(widget.memory.value())
        total = segmenter.tiles(frames, tiler, "none")
    except Exception as err:  # a tile size the network cannot take: one line
        show_error(one_line(err))
        return

    def on_batch(n: int) -> None:
        if widget.cancel_flag.is_set():
            raise Cancelled
        widget.relay.advanced.emit(n)

    def work():
        from unet.predict.zarr.route import predict_to_zarr

        try:
            predict_to_zarr(
                segmenter.trained.net, source, output, tiler=tiler,
                precision=segmenter.record.precision, postprocess=widget.settings(),
                progress=False, on_batch=on_batch, checkpoint=str(segmenter.trained.path),
                training_pixel_size=segmenter.trained.pixel_size,
            )  # fmt: skip
        except Cancelled:
            return None
        return read_store(Path(output))

    def done(layers) -> None:
        if layers is None:
            return
        for data, kwargs, kind in layers:
            add = widget.viewer.add_image if kind == "image" else widget.viewer.add_labels
            add(data, **kwargs)
        show_info(f"{name} -> {output}")

    widget._started(total, f"streaming {name} -> {output}")
    widget.worker = run_in_thread(work, done, widget._ended, widget.gone)
