"""The prediction task of ``src/predict.py``: the config, read once into a request, goes
to one of three routes.

- a folder output, one process: :func:`unet.predict.files.folder_route`;
- a ``<name>.zarr`` output, one process: :func:`unet.predict.zarr.route.zarr_route`
  (docs/large-images.md);
- with a ``trainer`` (``trainer=ddp``): the ranks of a Lightning Trainer, either output,
  :func:`unet.predict.ranks.ranks_route`.

The only module of the prediction stage that sees the Hydra config: :func:`read_request`
reads it once into a :class:`unet.predict.request.PredictRequest`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from unet.config.checks import check_config
from unet.io.pixel_size import pixel_size_setting
from unet.predict.files import folder_route
from unet.predict.request import (
    Outputs,
    PredictRequest,
    TilerSettings,
    ZarrSettings,
    check_request,
)


def predict(cfg: DictConfig) -> dict:
    """Predict ``cfg.input`` with the network of ``cfg.ckpt_path`` (a checkpoint, or a
    bioimage.io package, ONNX or TorchScript file from ``src/export.py``); results go to
    ``cfg.output``. With a ``trainer`` (``trainer=ddp``), on the ranks of a Lightning
    Trainer. Returns the route's summary."""
    return route(read_request(cfg))


def read_request(cfg: DictConfig) -> PredictRequest:
    """The request of the composed ``predict`` config, after checking it: every setting's
    type and range (a ConfigError), the per-object outputs (an ObjectOutputError), an
    output apart from the input and checkpoint (an UnsafeOutputError), and what the chosen
    route cannot do (a PredictionSettingError)."""
    check_config(cfg)  # types and ranges of every setting, before anything is read
    request = PredictRequest(
        checkpoint=str(cfg.ckpt_path),
        input=str(cfg.input),
        output=str(cfg.output),
        trust_checkpoint=cfg.get("trust_checkpoint", False),
        overwrite=cfg.overwrite,
        nonfinite=cfg.get("nonfinite", "refuse"),
        input_axes=cfg.get("input_axes", "auto"),
        device=str(cfg.device),
        precision=cfg.precision,
        engine=cfg.get("engine", "torch"),
        tta=cfg.tta,
        tiler=TilerSettings(**plain(cfg.tiler, drop="_target_")),
        postprocess={k: v for k, v in plain(cfg.get("postprocess")).items() if v is not None},
        write=Outputs(
            labels=cfg.labels,
            overlays=cfg.overlays,
            challenge_naming=cfg.challenge_naming,
            instance_class=cfg.get("instance_class"),
            measurements=cfg.get("measurements", False),
            rois=cfg.get("rois", False),
        ),
        pixel_size=pixel_size_setting(cfg.get("pixel_size")),
        progress=cfg.progress,
        zarr=ZarrSettings(**plain(cfg.get("zarr"))),
        trainer=plain(cfg.trainer) if cfg.get("trainer") is not None else None,
    )
    check_request(request)
    return request


def plain(node, drop: str | None = None) -> dict:
    """A config node as a plain, resolved dict (an absent node: empty), without ``drop``."""
    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in values.items() if k != drop}


def route(request: PredictRequest) -> dict:
    """Run ``request`` on the route its output and trainer choose."""
    if request.trainer is not None:
        # imported here: only this route needs Lightning, the inference modules do not
        from unet.predict.ranks import ranks_route

        return ranks_route(request)
    if request.store:
        # imported here: zarr and ome-zarr are an optional extra (pip install .[zarr])
        from unet.predict.zarr.route import zarr_route

        return zarr_route(request)
    return folder_route(request)
