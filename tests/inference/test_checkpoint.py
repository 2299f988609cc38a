"""Models are verified before use: finite weights and batch-norm statistics, a probe that
reproduces (NaN counts as a mismatch), no unverifiable checkpoint unless trusted, and no
NaN or infinite probabilities ever written as a result."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from unet.config.checks import ConfigError
from unet.config.cli import run_or_exit
from unet.errors import UserError
from unet.evaluation.task import evaluate
from unet.export.task import export
from unet.inference.checkpoint import CheckpointError, TrainedModel, load_trained
from unet.inference.formats.check import ExportCheckError, require_match
from unet.inference.formats.loading import load_for_prediction
from unet.inference.formats.probabilities import ProbabilityUNet
from unet.inference.formats.record import model_record
from unet.inference.formats.torchscript import EXTRA_FILE, trace
from unet.io.output_safety import MARKER, write_marker
from unet.model.fingerprint import probe_mismatch, record_probe
from unet.model.network import UNet
from unet.predict.task import predict
from unet.training.module import SegmentationModule
from unet.training.task import check_resumable

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the first convolution's weight and the first batch norm's running variance
POISON = {"weight": "net.down.0.0.weight", "running_var": "net.down.0.1.running_var"}


def tiny_net(seed: int = 0, padding: str = "valid") -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=2, depth=2, dropout=0.0, batch_norm=True, padding=padding).eval()


def save(path: Path, net: UNet, probe: bool = True, **edits) -> Path:
    """A checkpoint as training writes it (``net_probe`` only if ``probe``); ``edits``
    replace entries of the architecture record afterwards."""
    checkpoint = {
        "state_dict": {f"net.{k}": v.clone() for k, v in net.state_dict().items()},
        "net_config": {**net.config.to_dict(), **edits},
    }
    if probe:
        checkpoint["net_probe"] = record_probe(net)
    torch.save(checkpoint, path)
    return path


def poisoned(tmp_path: Path, where: str, value: float = float("nan")) -> Path:
    """A sound checkpoint (probe recorded) with one value of ``POISON[where]`` replaced."""
    path = save(tmp_path / f"poisoned_{where}.ckpt", tiny_net())
    checkpoint = torch.load(path, weights_only=True)
    assert POISON[where] in checkpoint["state_dict"]
    checkpoint["state_dict"][POISON[where]].view(-1)[0] = value
    torch.save(checkpoint, path)
    return path


def gray_image(path: Path, frames: int = 1) -> Path:
    rng = np.random.default_rng(0)
    shape = (frames, 60, 70) if frames > 1 else (60, 70)
    tifffile.imwrite(path, rng.integers(0, 255, shape, dtype=np.uint8), photometric="minisblack")
    return path


def compose_eval(overrides: list[str]):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def exits_2(capsys, fn, *args) -> str:
    """``fn(*args)`` through the entry points' wrapper: exit code 2; returns the one line."""
    with pytest.raises(SystemExit) as caught:
        run_or_exit(fn, *args)
    assert caught.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("where", ["weight", "running_var"])
def test_one_nan_is_refused_by_every_entry(
    where, tmp_path, capsys, compose_predict, compose_export
):
    ckpt = poisoned(tmp_path, where)
    name = ckpt.name
    values = sum(v.numel() for v in tiny_net().state_dict().values() if v.is_floating_point())
    cause = f"1 of {values:,}"
    # predict: nothing written
    out = tmp_path / "out"
    settings = [f"ckpt_path={ckpt}", f"input={gray_image(tmp_path / 'a.tif')}", f"output={out}"]
    message = exits_2(capsys, predict, compose_predict(settings))
    assert name in message and cause in message and POISON[where] in message
    assert "NaN or infinite" in message and not out.exists()
    # eval (the checkpoint is read before the data)
    message = exits_2(capsys, evaluate, compose_eval([f"ckpt_path={ckpt}"]))
    assert name in message and cause in message
    # export
    onnx = tmp_path / "x.onnx"
    settings = [f"ckpt_path={ckpt}", "format=onnx", f"output={onnx}"]
    message = exits_2(capsys, export, compose_export(settings))
    assert name in message and cause in message and not onnx.exists()
    # fine-tuning: model.init_from
    optimizer = partial(torch.optim.Adam, lr=1e-3)
    with pytest.raises(CheckpointError) as caught:
        SegmentationModule(tiny_net(1), optimizer=optimizer, init_from=str(ckpt))
    assert f"model.init_from={ckpt}" in str(caught.value) and cause in str(caught.value)
    # resume: ckpt_path
    module = SegmentationModule(tiny_net(1), optimizer=optimizer)
    resumable = torch.load(ckpt, weights_only=True)
    resumable["state_dict"] = {
        **{k: v for k, v in module.state_dict().items()},
        POISON[where]: resumable["state_dict"][POISON[where]],
    }
    torch.save(resumable, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError) as caught:
        check_resumable(str(tmp_path / "last.ckpt"), module)
    assert "last.ckpt" in str(caught.value) and "NaN or infinite" in str(caught.value)


def test_overflowing_weights_are_refused(tmp_path):
    """Finite weights whose output is not finite (an overflow) are refused at load too."""
    ckpt = poisoned(tmp_path, "weight", value=3e38)
    with pytest.raises(CheckpointError, match="NaN or infinite") as caught:
        load_trained(ckpt)
    assert ckpt.name in str(caught.value)


def test_resume_refuses_nan_optimizer_state(tmp_path):
    module = SegmentationModule(tiny_net(), optimizer=partial(torch.optim.Adam, lr=1e-3))
    checkpoint = {
        "state_dict": module.state_dict(),
        "net_config": module.net.config.to_dict(),
        "net_probe": record_probe(module.net),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([0.0, float("inf")])}}}],
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="1 of .* optimizer values are NaN") as caught:
        check_resumable(str(tmp_path / "last.ckpt"), module)
    assert "optimizer 0, parameter 0, exp_avg" in str(caught.value)
    checkpoint["optimizer_states"][0]["state"][0]["exp_avg"][1] = 0.0
    torch.save(checkpoint, tmp_path / "last.ckpt")
    check_resumable(str(tmp_path / "last.ckpt"), module)  # sound: accepted


def test_a_nan_probe_is_a_mismatch():
    net = tiny_net()
    probe = record_probe(net)
    assert probe_mismatch(net, probe) is None
    probe["logits"][0, 0, 0, 0] = float("nan")
    assert "NaN" in probe_mismatch(net, probe)


def test_edited_padding_without_probe_is_refused_unless_trusted(tmp_path, compose_predict):
    ckpt = save(tmp_path / "unprobed.ckpt", tiny_net(), probe=False, padding="same")
    with pytest.raises(CheckpointError, match="holds no probe.*trust_checkpoint=true") as caught:
        load_trained(ckpt)
    assert "unprobed.ckpt" in str(caught.value)
    image, out = gray_image(tmp_path / "a.tif"), tmp_path / "out"
    settings = [f"ckpt_path={ckpt}", f"input={image}", f"output={out}"]
    with pytest.raises(CheckpointError, match="unprobed.ckpt: holds no probe"):
        predict(compose_predict(settings))
    assert not out.exists()
    # trusted: the user vouches for the record (the weights are still checked)
    predict(compose_predict([*settings, "trust_checkpoint=true", "overlays=false"]))
    assert (out / "probabilities.tif").is_file()
    assert load_trained(ckpt, trust=True).config.padding == "same"
    with pytest.raises(ConfigError, match="trust_checkpoint='maybe': expected true or false"):
        predict(compose_predict([*settings, "trust_checkpoint=maybe"]))
    # a probe still decides when there is one: trusting does not pass an edited record
    edited = save(tmp_path / "edited.ckpt", tiny_net(), padding="same")
    with pytest.raises(CheckpointError, match="edited.ckpt: .*does not fit its weights"):
        load_trained(edited, trust=True)


def nan_network(net: UNet) -> UNet:
    """``net`` with one NaN bias in its head: every output pixel of class 0 is NaN."""
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    return net


def test_export_check_fails_on_nan():
    model = ProbabilityUNet.wrap(tiny_net())
    # an exported model giving NaN where PyTorch gives numbers: an infinite difference
    nan_run = lambda x: np.full_like(model(torch.from_numpy(x)).detach().numpy(), np.nan)  # noqa: E731
    with pytest.raises(ExportCheckError, match="differ from PyTorch's by inf"):
        require_match("ONNX", nan_run, model)
    # NaN against NaN: the network's own output is refused, not compared
    broken = ProbabilityUNet.wrap(nan_network(tiny_net()))
    with pytest.raises(ExportCheckError, match="own output holds .* NaN or infinite"):
        require_match("TorchScript", lambda x: broken(torch.from_numpy(x)).numpy(), broken)


def test_nan_exported_files_are_refused_by_the_runner(tmp_path):
    net = nan_network(tiny_net())
    model = ProbabilityUNet.wrap(net)
    record = model_record(TrainedModel(net=net, config=net.config))
    torchscript = tmp_path / "broken.pt"
    torch.jit.save(trace(model), str(torchscript), _extra_files={EXTRA_FILE: json.dumps(record)})
    with pytest.raises(CheckpointError, match="broken.pt: 1 of .* stored weights are NaN"):
        load_for_prediction(torchscript)
    # a package's weights go through the same loader (TorchScript, else ONNX)
    from unet.inference.formats.onnx import write_onnx

    onnx = tmp_path / "broken.onnx"
    with pytest.raises(ExportCheckError, match="own output"):
        write_onnx(model, onnx, record)  # the file is written, then its check fails
    with pytest.raises(CheckpointError, match="broken.onnx: 1 of .* stored weights are NaN"):
        load_for_prediction(onnx)


def test_exported_record_with_edited_padding_is_refused(tmp_path):
    """An exported graph carries its own padding: a record that says otherwise is caught
    by the output size for the probe input."""
    net = tiny_net()
    record = model_record(TrainedModel(net=net, config=net.config))
    record["net_config"]["padding"] = "same"
    path = tmp_path / "edited.pt"
    model = ProbabilityUNet.wrap(net)
    torch.jit.save(trace(model), str(path), _extra_files={EXTRA_FILE: json.dumps(record)})
    with pytest.raises(CheckpointError, match=r"edited.pt: it cannot run .*padding=same"):
        load_for_prediction(path)


def nan_from_call(monkeypatch, module, bad_call: int) -> None:
    """``module.load_for_prediction`` gives a verified network whose ``bad_call``-th forward
    pass (1-based) returns NaN: a network that breaks on one tile."""
    real = module.load_for_prediction
    calls = {"n": 0}

    def load(path, trust=False):
        trained = real(path, trust)
        forward = trained.net.forward

        def patched(x):
            calls["n"] += 1
            out = forward(x)
            return out * float("nan") if calls["n"] == bad_call else out

        trained.net.forward = patched
        return trained

    monkeypatch.setattr(module, "load_for_prediction", load)


def test_nan_tile_stops_the_folder_route_keeping_the_old_output(
    tmp_path, compose_predict, monkeypatch, capsys
):
    import unet.predict.setup

    ckpt = save(tmp_path / "tiny.ckpt", tiny_net())
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier result")
    write_marker(out, "predict")  # an earlier output of unet's, which overwrite may replace
    stack = gray_image(tmp_path / "stack.tif", frames=3)
    nan_from_call(monkeypatch, unet.predict.setup, bad_call=2)  # the second frame's only tile
    settings = [f"ckpt_path={ckpt}", f"input={stack}", f"output={out}", "overwrite=true"]
    message = exits_2(capsys, predict, compose_predict(settings))
    assert (
        "tiny.ckpt" in message and "frame stack_001" in message and "are NaN or infinite" in message
    )
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.txt"]  # the old output, untouched
    assert not list(tmp_path.glob("out*partial*"))


def test_nan_tile_stops_the_zarr_route_before_writing(tmp_path, compose_predict, monkeypatch):
    pytest.importorskip("zarr")
    import zarr

    import unet.predict.setup

    ckpt = save(tmp_path / "tiny.ckpt", tiny_net())
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "big.tif", rng.integers(0, 255, (150, 120), dtype=np.uint8))
    out = tmp_path / "out.zarr"
    settings = [f"ckpt_path={ckpt}", f"input={tmp_path / 'big.tif'}", f"output={out}"]
    settings += ["zarr.chunk=64", "tiler.tile_size=92", "tiler.batch_size=1"]
    nan_from_call(monkeypatch, unet.predict.setup, bad_call=7)  # 3rd row of tiles: 2nd band
    with pytest.raises(UserError) as caught:
        predict(compose_predict(settings))
    message = str(caught.value)
    assert "tiny.ckpt" in message and "big.tif, rows" in message and "\n" not in message
    done = sorted(int(p.name) for p in (out / "unet-progress").iterdir() if p.name.isdigit())
    assert done == list(range(len(done))) and 0 < len(done) < 3  # earlier rows kept
    written = zarr.open_array(out / "0", mode="r")[: len(done) * 64]
    assert np.isfinite(written.astype(np.float32)).all()
    assert not list(out.rglob("labels.json"))  # no labels from a map with holes
    # the next run, with a sound network, continues the store and completes it
    monkeypatch.undo()
    summary = predict(compose_predict(settings))
    assert summary["rows_predicted"] == 150 - 64 * len(done)
    whole = zarr.open_array(out / "0", mode="r")[:]
    assert np.isfinite(whole.astype(np.float32)).all()


def test_exported_probe_is_checked_and_old_exports_without_one_load(tmp_path):
    net = tiny_net()
    model = ProbabilityUNet.wrap(net)
    record = model_record(TrainedModel(net=net, config=net.config))

    def write(name: str, record: dict) -> Path:
        path = tmp_path / name
        torch.jit.save(trace(model), str(path), _extra_files={EXTRA_FILE: json.dumps(record)})
        return path

    assert load_for_prediction(write("sound.pt", record)).config == net.config
    swapped = json.loads(json.dumps(record))
    swapped["probe"]["probabilities"][0][0][0][0] = -1.0  # no network gives it: off by >= 1
    with pytest.raises(CheckpointError, match=r"swapped.pt: the exported weights do not fit"):
        load_for_prediction(write("swapped.pt", swapped))
    record.pop("probe")  # written before exports stored a probe: shape and finiteness only
    assert load_for_prediction(write("old.pt", record)).config == net.config
