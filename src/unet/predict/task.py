"""The prediction task of ``src/predict.py``: the config, read once into a request, goes
to one of three routes.

- a folder output, one process: :func:`unet.prediction.folder_route`;
- a ``<name>.zarr`` output, one process: :func:`unet.stream_prediction.zarr_route`
  (README, "Large images");
- with a ``trainer`` (``trainer=ddp``): the ranks of a Lightning Trainer, either output,
  :func:`unet.distributed_prediction.ranks_route`.

The only module of the prediction stage that sees the Hydra config.
"""

from __future__ import annotations

from omegaconf import DictConfig

from unet.predict.request import PredictRequest, read_request
from unet.prediction import folder_route


def predict(cfg: DictConfig) -> dict:
    """Predict ``cfg.input`` with the network of ``cfg.ckpt_path`` (a checkpoint, or a
    bioimage.io package, ONNX or TorchScript file from ``src/export.py``); results go to
    ``cfg.output``. With a ``trainer`` (``trainer=ddp``), on the ranks of a Lightning
    Trainer. Returns the route's summary."""
    return route(read_request(cfg))


def route(request: PredictRequest) -> dict:
    """Run ``request`` on the route its output and trainer choose."""
    if request.trainer is not None:
        # imported here: only this route needs Lightning, the inference modules do not
        from unet.distributed_prediction import ranks_route

        return ranks_route(request)
    if request.store:
        # imported here: zarr and ome-zarr are an optional extra (pip install .[zarr])
        from unet.stream_prediction import zarr_route

        return zarr_route(request)
    return folder_route(request)
