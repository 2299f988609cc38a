"""Inference engines (unet.inference.engines) and the per-machine training choice
(unet.inference.precision)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet.config.checks import ConfigError, check_config
from unet.inference import engines, precision
from unet.inference.engines import EngineError, EngineNet, engine_network
from unet.inference.image import InferenceSettingError, predict_image
from unet.inference.postprocess import PostProcessing
from unet.inference.tiler import Tiler
from unet.model.network import UNet

FP32_ENGINES = [
    "onnxruntime",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(
            not engines.installed("openvino"), reason="openvino not installed"
        ),
    ),
]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """One engines cache folder for the whole file (traced graphs are reused across tests)."""
    folder = tmp_path_factory.getbasetemp() / "engines-cache"
    monkeypatch.setenv("UNET_CACHE_DIR", str(folder))
    return folder


def tiny_net(padding: str, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(depth=2, base_channels=4, padding=padding, batch_norm=True, dropout=0.0).eval()


# tiles small enough for a 700x900 image to need several tile shapes (the last ones smaller)
TILES = {"valid": 284, "same": 256}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(700, 900)).astype(np.float32)


def test_a_graph_traced_during_a_bf16_prediction_stays_fp32(tmp_path):
    """A bf16 prediction runs the engine inside autocast; the cached ONNX graph (which an
    fp32 run reuses) must not be traced in bf16, and an instance-norm net must load."""
    import onnx

    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=4, batch_norm=False, instance_norm=True).eval()
    x = torch.randn(1, 1, 92, 92)
    engine = EngineNet(net, "onnxruntime", cache=tmp_path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine(x)
    (graph,) = tmp_path.glob("*/*.onnx")
    model = onnx.load(str(graph))
    bf16 = onnx.TensorProto.BFLOAT16
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert not [n for n in casts if any(a.i == bf16 for a in n.attribute)], "bf16 casts"
    assert all(w.data_type != bf16 for w in model.graph.initializer)
    torch.testing.assert_close(
        EngineNet(net, "onnxruntime", cache=tmp_path)(x), net(x), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("engine", FP32_ENGINES)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_fp32_engines_reproduce_pytorch_on_a_tiled_image(engine, padding, image):
    net = tiny_net(padding)
    tiler = Tiler(tile_size=TILES[padding], batch_size=2)
    assert len(tiler.plan(net, image.shape).tile_shapes()) >= 3  # smaller last tiles too
    reference = predict_image(net, image, tiler)
    prob = predict_image(engine_network(net, engine), image, tiler)
    assert prob.shape == reference.shape == (2, 700, 900)
    assert np.abs(prob - reference).max() <= engines.TOLERANCE
    post = PostProcessing(threshold=0.5)
    np.testing.assert_array_equal(post(prob[1]), post(reference[1]))


def test_a_missing_engine_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails
    with pytest.raises(EngineError) as err:
        engine_network(tiny_net("valid"), "openvino")
    message = str(err.value)
    assert "\n" not in message and "openvino is not installed" in message
    assert "pip install '.[engines]'" in message


def test_unsupported_precisions_are_refused_in_one_line(monkeypatch):
    net = tiny_net("valid")
    with pytest.raises(EngineError, match="fp32 only") as err:
        engine_network(net, "onnxruntime", "bf16")
    assert "\n" not in str(err.value)
    with pytest.raises(InferenceSettingError, match="expected 32 or bf16"):
        engine_network(net, "openvino", "16")
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    for engine in ("torch", "openvino"):
        with pytest.raises(EngineError, match="no native bf16") as err:
            engine_network(net, engine, "bf16")
        assert "\n" not in str(err.value) and "precision=32" in str(err.value)
    assert engine_network(net, "torch", "32") is net  # fp32 PyTorch: the network itself


def test_the_engine_setting_is_validated(compose_predict):
    cfg = compose_predict(["ckpt_path=x.ckpt", "input=a.tif", "output=out", "engine=tensorrt"])
    with pytest.raises(ConfigError, match="engine"):
        check_config(cfg)
    good = compose_predict(["ckpt_path=x.ckpt", "input=a.tif", "output=out"])
    assert good.engine == "torch"
    check_config(good)


def test_the_cache_is_keyed_by_weights_and_tile_shape(monkeypatch, tmp_path):
    traced = []
    export = engines.export_onnx

    def counting(network, shape, path):
        traced.append(shape)
        export(network, shape, path)

    monkeypatch.setattr(engines, "export_onnx", counting)

    def run(net, side):
        x = torch.randn(1, 1, side, side)
        out = EngineNet(net, "onnxruntime", cache=tmp_path)(x)  # a new process's engine
        torch.testing.assert_close(out, net(x), atol=1e-4, rtol=0)

    first, second = tiny_net("valid", seed=0), tiny_net("valid", seed=1)
    run(first, 92)
    run(first, 92)  # cached: no new trace
    assert len(traced) == 1
    run(first, 108)  # another tile size
    assert len(traced) == 2
    run(second, 92)  # other weights
    assert len(traced) == 3
    assert len(list(tmp_path.glob("*/*.onnx"))) == 3


def test_auto_picks_an_exact_engine_and_remembers_it(monkeypatch, cache, image):
    net = tiny_net("same", seed=2)
    tiler = Tiler(tile_size=256, batch_size=2)
    chosen = engine_network(net, "auto")
    prob = predict_image(chosen, image[:300, :300], tiler)
    reference = predict_image(net, image[:300, :300], tiler)
    assert np.abs(prob - reference).max() <= engines.TOLERANCE
    stored = json.loads((cache / "auto.json").read_text())
    (entry,) = [v for k, v in stored.items() if chosen.folder.name in k]
    assert entry["engine"] == chosen.chosen
    assert entry["max_difference"][chosen.chosen] <= engines.TOLERANCE
    assert entry["seconds"][chosen.chosen] == min(
        t for e, t in entry["seconds"].items() if entry["max_difference"][e] <= engines.TOLERANCE
    )

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(engines, "measure", no_measuring)
    again = engine_network(net, "auto")
    predict_image(again, image[:300, :300], tiler)
    assert again.chosen == chosen.chosen


def test_training_precision_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert precision.resolve_precision("auto", "cpu") == "32-true"
    net = UNet(depth=2, base_channels=2, dropout=0.0)
    choice = precision.choose_training(net, (1, 1, 92, 92), "auto", "cpu", "auto")
    assert choice.precision == "32-true" and isinstance(choice.channels_last, bool)
    assert choice.step_seconds > 0
    fixed = precision.choose_training(net, (1, 1, 92, 92), "32-true", "cpu", True)
    assert fixed == precision.TrainingChoice("32-true", True, None)  # nothing timed


NATIVE = {True: "bf16-mixed", False: "32-true"}  # faked native bf16 -> the precision


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "avx2-only"])
@pytest.mark.parametrize("group", ["cpu", "gpu"])
def test_the_default_trainer_configs_resolve_precision_auto(
    group, native, monkeypatch, compose_train, tmp_path
):
    from unet.config.checks import build

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    cfg = compose_train([f"trainer={group}"], tmp_path)
    assert cfg.trainer.precision == "auto"  # the default, not an override
    if group == "gpu":
        if not torch.cuda.is_available():  # no GPU: the CPU's answer for the same config
            cfg.trainer.accelerator = "cpu"
        else:
            native = torch.cuda.is_bf16_supported()
    trainer = build(cfg, "trainer", logger=False, enable_progress_bar=False)
    assert trainer.precision == NATIVE[native]
    # an explicit precision is never changed
    cfg.trainer.precision = "32-true"
    assert build(cfg, "trainer", logger=False).precision == "32-true"


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "avx2-only"])
def test_the_run_record_holds_the_training_choice(
    native, monkeypatch, compose_train, small_overrides, data_dir, tmp_path
):
    from unet.training.task import train

    if native and not precision.cpu_has_native_bf16():
        pytest.skip("bf16 is emulated on this CPU (about 20x slower)")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    overrides = ["debug=fast_dev_run", "trainer.enable_progress_bar=false"]
    overrides += ["trainer=cpu", "model.channels_last=auto"]  # precision: the default auto
    cfg = compose_train([*overrides, *small_overrides], tmp_path, data_dir)
    metrics = train(cfg)
    assert metrics["precision"] == cfg.trainer.precision == NATIVE[native]
    assert metrics["channels_last"] is cfg.model.channels_last
    assert metrics["step_seconds"] > 0


def test_torchscript_only_weights_name_the_engine_that_runs_them():
    from unet.inference.formats.loading import ExportedNet

    net = tiny_net("valid")
    onnx_model = ExportedNet(net.config, session=object())
    assert engine_network(onnx_model, "onnxruntime") is onnx_model  # its own session
    for engine in ("onnxruntime", "openvino", "auto"):
        with pytest.raises(EngineError, match="TorchScript only") as err:
            engine_network(ExportedNet(net.config, module=net), engine)
        assert "\n" not in str(err.value) and "use engine=torch" in str(err.value)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, compose_export, save_checkpoint) -> dict[str, Path]:
    """A tiny net's checkpoint exported as a package with ONNX weights and as an .onnx file."""
    pytest.importorskip("bioimageio.spec")
    from unet.export.task import export

    folder = tmp_path_factory.mktemp("exported")
    net = tiny_net("valid", seed=3)
    ckpt = folder / "tiny.ckpt"
    save_checkpoint(net, ckpt)
    image = folder / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(1).normal(size=(92, 92)).astype(np.float32))
    files = {"bioimageio": folder / "model.zip", "onnx": folder / "model.onnx"}
    package = ["training_data=isbi", f"image={image}", "onnx=true", 'authors=["Test Author"]']
    package.append("any_size=false")  # tile-by-tile ONNX weights (any-size ones pad whole images)
    for fmt, path in files.items():
        extra = package if fmt == "bioimageio" else []
        export(compose_export([f"ckpt_path={ckpt}", f"format={fmt}", f"output={path}", *extra]))
    return files


@pytest.mark.parametrize("engine", FP32_ENGINES)
def test_an_exported_onnx_package_runs_on_the_other_engines(engine, exported, image):
    from unet.inference.formats.loading import load_for_prediction

    trained = load_for_prediction(exported["bioimageio"])
    assert trained.net.module is not None  # PyTorch runs the package's TorchScript weights
    tiler = Tiler(tile_size=TILES["valid"], batch_size=2)
    reference = predict_image(trained.net, image[:400, :500], tiler)
    prob = predict_image(engine_network(trained.net, engine), image[:400, :500], tiler)
    assert prob.shape == reference.shape == (2, 400, 500)
    assert np.abs(prob - reference).max() <= engines.TOLERANCE


def test_auto_on_an_exported_onnx_file_picks_an_exact_engine(exported, cache, image):
    from unet.inference.formats.loading import load_for_prediction

    net = load_for_prediction(exported["onnx"]).net
    tiler = Tiler(tile_size=TILES["valid"], batch_size=2)
    chosen = engine_network(net, "auto")
    prob = predict_image(chosen, image[:300, :300], tiler)
    assert chosen.chosen in ("onnxruntime", "openvino")
    assert np.abs(prob - predict_image(net, image[:300, :300], tiler)).max() <= engines.TOLERANCE
    stored = json.loads((cache / "auto.json").read_text())
    (entry,) = [v for k, v in stored.items() if chosen.folder.name in k]
    assert entry["max_difference"][chosen.chosen] <= engines.TOLERANCE
    # measured against ONNX Runtime (the weights' own runtime), never against PyTorch
    assert set(entry["seconds"]) == {e for e in ("onnxruntime", "openvino") if engines.installed(e)}
