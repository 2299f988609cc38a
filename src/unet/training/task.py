"""Build everything a training run needs from a composed config, and run it."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from unet.config.checks import build, check_config
from unet.distributed import is_rank_zero, relaunch_as_this_job
from unet.errors import OutputExistsError
from unet.evaluation.task import predict_split, score_split, split_report
from unet.inference.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_trained,
    read_checkpoint,
    store_validation,
    verified_net,
)
from unet.inference.precision import choose_training
from unet.inference.tiler import Tiler
from unet.io.atomic import write_json
from unet.io.output_safety import write_faults
from unet.model.fingerprint import DAMAGED, nonfinite_weights
from unet.model.network import with_added_fields
from unet.model.record import ModelRecord
from unet.model.shapes import InvalidInputSizeError
from unet.training.callbacks import TrainingPlan, log_panels
from unet.training.checkpoint_io import AtomicCheckpointIO
from unet.training.guard import NumericGuard
from unet.training.start_from import adopt_start_architecture


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group that is a dict of objects (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry
    ]


def metrics_as_floats(metrics: dict) -> dict[str, float]:
    """Plain floats from Lightning's metric dict (tensors), for JSON."""
    return {k: float(v) for k, v in sorted(metrics.items())}


def check_tile_size(module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Fail before training starts if the data's tile size does not fit the network."""
    tile = getattr(datamodule.hparams, "tile_size", None)
    net = getattr(module, "net", None)
    if tile is not None and hasattr(net, "output_shape"):
        try:
            net.output_shape((tile, tile))
        except InvalidInputSizeError as err:
            raise InvalidInputSizeError(
                f"data.tile_size={tile} does not fit model.net: {err}"
            ) from None


def choose_for_machine(cfg: DictConfig, module, datamodule, stored: dict | None) -> None:
    """Resolve ``trainer.precision=auto`` (bf16 only where the device runs it natively) and
    ``model.channels_last=auto`` (where a timed train step is faster) for this machine, or
    as the ``stored`` choice of a resumed run (so that it trains on as it began); print the
    choice, and keep it on the module for checkpoints and metrics.json."""
    precision = cfg.trainer.precision
    channels_last = cfg.model.get("channels_last", False)
    if stored and "auto" in (str(precision), channels_last):
        precision = stored["precision"] if str(precision) == "auto" else precision
        channels_last = stored["channels_last"] if channels_last == "auto" else channels_last
    hparams = datamodule.hparams
    tile, batch = hparams.get("tile_size") or 188, hparams.get("batch_size") or 1
    choice = choose_training(
        module.net,
        (batch, module.net.config.in_channels, tile, tile),
        precision,
        cfg.trainer.get("accelerator", "auto"),
        channels_last,
    )
    if is_rank_zero():
        print(choice.line() + (" (as the resumed run chose)" if stored else ""))
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
        cfg.model.channels_last = choice.channels_last
    module.channels_last = choice.channels_last
    module.training_choice = choice.to_dict()


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from: a path as given, or for ``"last"`` this run folder's
    ``checkpoints/last.ckpt`` if it exists (None, a fresh start, if not)."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise CheckpointNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)


def check_resumable(ckpt_path: str, module: L.LightningModule) -> dict | None:
    """Refuse to resume from a checkpoint of another architecture, naming what differs;
    returns the checkpoint's training choice (precision, layout), if it stores one."""
    checkpoint = read_checkpoint(ckpt_path)
    stored = checkpoint.get("net_config")
    current = module.net.config.to_dict()
    if stored:
        stored = with_added_fields(stored)
    if stored and stored != current:
        differ = ", ".join(
            f"{k}: {stored.get(k)!r} in the checkpoint, {current.get(k)!r} now"
            for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)
        )
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: cannot resume, the checkpoint's network differs from "
            f"model.net ({differ}); resume with the run's own settings or start a new run"
        )
    weights = checkpoint.get("state_dict") or {}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    if found and found != expected:
        extra, lacking = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        shapes = [k for k in set(found) & set(expected) if found[k] != expected[k]]
        detail = (
            f"{len(shapes)} tensors of other shapes, e.g. {sorted(shapes)[0]}: "
            f"{found[sorted(shapes)[0]]} vs {expected[sorted(shapes)[0]]}"
            if shapes
            else f"tensors only in the checkpoint: {extra[:3]}, only in the model: {lacking[:3]}"
        )
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: cannot resume, its weights do not fit model.net "
            f"({detail}); resume with the run's own settings or start a new run"
        )
    check_sound(checkpoint, Path(ckpt_path))
    return checkpoint.get("training_choice")


def optimizer_tensors(checkpoint: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a checkpoint's optimizer states (Adam's moments, ...), named."""
    found = []
    for i, optimizer in enumerate(checkpoint.get("optimizer_states") or []):
        for param, values in (optimizer.get("state") or {}).items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    found.append((f"optimizer {i}, parameter {param}, {key}", value))
    return found


def check_sound(checkpoint: dict, path: Path) -> None:
    """Refuse to resume from a damaged checkpoint: NaN or infinite weights, batch-norm
    statistics or optimizer state (they would poison every later step), or a network that
    does not reproduce its probe (:func:`unet.inference.checkpoint.verified_net`)."""
    named = [*(checkpoint.get("state_dict") or {}).items(), *optimizer_tensors(checkpoint)]
    if damaged := nonfinite_weights(named, "weights, batch-norm statistics and optimizer values"):
        raise CheckpointError(f"ckpt_path={path}: cannot resume, {damaged}; {DAMAGED}")
    if checkpoint.get("net_config") is not None:  # a run's own checkpoints always have one
        verified_net(checkpoint, path, trust=True, label=f"ckpt_path={path}")


def logger_versions(ckpt_path: str | None) -> dict:
    """The loggers' runs recorded in a checkpoint (``SegmentationModule.on_save_checkpoint``)."""
    if ckpt_path is None:
        return {}
    return dict(read_checkpoint(ckpt_path).get("logger_versions") or {})


def sweep_group(cfg: DictConfig) -> str | None:
    """A name shared by the jobs of one Hydra multirun (its folder), None in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}"


def prepare_wandb(cfg: DictConfig, ckpt_path: str | None) -> None:
    """Fill in the W&B logger's run id (a resumed checkpoint's) and group (the sweep)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg:
        return
    with open_dict(cfg):
        if wandb_cfg.id is None:
            wandb_cfg.id = logger_versions(ckpt_path).get("WandbLogger")
        if wandb_cfg.group is None:
            wandb_cfg.group = sweep_group(cfg)


def prepare_csv(cfg: DictConfig) -> None:
    """A run continued in the folder of an earlier one (``ckpt_path=last``) writes its CSV
    metrics to a new file: Lightning's CSV logger would replace the earlier ``metrics.csv``.
    The first continuation writes ``csv/resume-1/``."""
    csv_cfg = (cfg.get("logger") or {}).get("csv")
    if not csv_cfg or csv_cfg.version not in ("", None):
        return
    folder = Path(csv_cfg.save_dir) / csv_cfg.name
    if not (folder / "metrics.csv").exists():
        return
    k = 1
    while (folder / f"resume-{k}").exists():
        k += 1
    with open_dict(cfg):
        csv_cfg.version = f"resume-{k}"


def finish_loggers(loggers: list, failed: bool) -> None:
    """End the W&B run (failed or not), so that the next job of a multirun starts its own."""
    if is_rank_zero() and any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model of ``cfg``, then score its best checkpoint on the validation split.

    Returns the final validation metrics, also written to ``<output_dir>/metrics.json``.
    Under DDP every rank runs this; only rank 0 writes files. A full, read-only or forbidden
    run folder is one line (:class:`unet.io.output_safety.OutputWriteError`).
    """
    with write_faults(cfg.paths.output_dir):
        return fit_run(cfg)


def fit_run(cfg: DictConfig) -> dict[str, float]:
    """The work of :func:`train`."""
    check_config(cfg)  # types and ranges of every setting, before anything is read
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    resuming = cfg.ckpt_path is not None
    if not resuming and (output_dir / "checkpoints").exists() and is_rank_zero():
        raise OutputExistsError(
            f"{output_dir / 'checkpoints'} already exists; "
            "to continue that run pass ckpt_path=last (or a checkpoint path), "
            "otherwise choose a new hydra.run.dir"
        )
    adopt_start_architecture(cfg)  # fine-tuning: the start model's network, before building
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    module = build(cfg, "model")
    check_tile_size(module, datamodule)
    stored_choice = None
    if ckpt_path is not None:  # before any logger makes a folder for a run that cannot resume
        stored_choice = check_resumable(ckpt_path, module)
    if cfg.get("train", True):
        # read and check the data now (Lightning would do it inside fit, after the loggers
        # made their folders); DataModule.setup does the work once
        datamodule.setup("fit")
    prepare_wandb(cfg, ckpt_path)
    prepare_csv(cfg)
    # debug=fast_dev_run: a check that everything runs, which leaves no logs behind
    loggers = [] if cfg.trainer.get("fast_dev_run") else instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # a learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not sys.stdout.isatty():  # a log file: a bar's redraws would fill it with escape codes
        with open_dict(cfg):  # (EpochLog prints plain epoch lines there instead)
            cfg.trainer.enable_progress_bar = False
    if not cfg.trainer.enable_progress_bar:  # (Lightning refuses a bar then)
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    choose_for_machine(cfg, module, datamodule, stored_choice)
    callbacks.append(NumericGuard())  # always: a non-finite loss must never train on
    callbacks.append(TrainingPlan())  # what is about to run, and how long it will take
    trainer = build(
        cfg, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
        if isinstance(logger, WandbLogger) and is_rank_zero():
            # also as a file of the run, readable before `wandb sync` (offline runs)
            config_file = Path(logger.experiment.dir) / "config_resolved.yaml"
            config_file.write_text(OmegaConf.to_yaml(resolved))

    failed = True
    try:
        with relaunch_as_this_job():
            metrics = fit_and_validate(cfg, trainer, module, datamodule, ckpt_path)
        failed = False
    finally:
        finish_loggers(loggers, failed)
    return metrics


def fit_and_validate(cfg, trainer, module, datamodule, ckpt_path) -> dict[str, float]:
    """Fit (unless ``train=false``), then score the best checkpoint on the validation split
    (unless ``validate=false``); rank 0 writes ``metrics.json`` and the run report
    (``report.md``), whose panels also go to the image loggers (W&B, TensorBoard)."""
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    choice = module.training_choice or {}  # precision, channels_last, step_seconds
    metrics = metrics_as_floats(trainer.callback_metrics) | choice
    if cfg.validate and trainer.is_global_zero:
        best = next(
            (
                c.best_model_path
                for c in trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint)
            ),
            "",
        )
        metrics, split, postprocess = final_validation(cfg, module, datamodule, best)
        metrics |= choice
        write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        panels = split_report(
            cfg, datamodule, "val", split, postprocess, metrics, "train", csv_logs(cfg)
        )
        log_panels(trainer.loggers, panels, "report/val", trainer.global_step)
    return metrics


def csv_logs(cfg: DictConfig) -> list[Path]:
    """The CSV logger's metric files of this run folder: the run's, then its resumptions'."""
    csv_cfg = (cfg.get("logger") or {}).get("csv")
    if not csv_cfg:
        return []
    folder = Path(csv_cfg.save_dir) / csv_cfg.name
    first = [folder / "metrics.csv"] if (folder / "metrics.csv").is_file() else []
    resumed = sorted(folder.glob("resume-*/metrics.csv"), key=lambda p: int(p.parent.name[7:]))
    return first + resumed


def final_validation(cfg, module, datamodule, best: str):
    """Every metric of the best checkpoint on the validation split (``unet.evaluation.task``),
    with the post-processing chosen there (``choose_postprocess``). The checkpoint stores
    that post-processing and the model record of how the split was predicted
    (:mod:`unet.model.record`), so that ``src/predict.py`` and ``src/eval.py`` repeat both.

    Returns:
        The metrics, the predicted split and the post-processing used (for the report).
    """
    net = load_trained(best).net if best else module.net.eval()
    datamodule.setup("validate")
    # an instance-norm net's output depends on the whole tile: validated (and recorded, so
    # that predict and eval repeat it) at the training tile size, not at an automatic one
    tiler = Tiler(tile_size=cfg.data.tile_size) if net.config.instance_norm else Tiler()
    # full precision on the CPU, whatever the training's precision was
    record = ModelRecord(
        tta=cfg.tta or "none", precision="32", tile_size=tiler.tile_size, overlap=tiler.overlap
    )
    split = predict_split(net, datamodule, "val", tiler, record.tta, record.precision)
    choose = cfg.choose_postprocess
    metrics, postprocess, chosen_on = score_split(split, choose=choose)
    if best:
        chosen_on = chosen_on | {"split": "val", "tta": record.tta}
        store_validation(best, record, postprocess if choose else None, chosen_on)
    metrics |= {"checkpoint": best, "tta": record.tta, "postprocess": postprocess.to_dict()}
    return metrics, split, postprocess
