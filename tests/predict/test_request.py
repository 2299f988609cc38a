"""The prediction request (unet.predict.request): src/predict.py's config read once into a
frozen, typed request that every route takes instead of the config."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from unet.config.checks import ConfigError
from unet.inference.engines import OPENVINO_MAX_TILE
from unet.inference.tiler import Tiler
from unet.io.output_safety import UnsafeOutputError
from unet.io.pixel_size import PixelSize
from unet.model.network import NetConfig
from unet.model.record import ModelRecord
from unet.predict.objects import ObjectOutputError
from unet.predict.request import (
    Outputs,
    PredictionSettingError,
    PredictRequest,
    TilerSettings,
    ZarrSettings,
)
from unet.predict.setup import with_model_record
from unet.predict.task import read_request

SRC = Path(__file__).resolve().parents[2] / "src" / "unet"
# every module of the prediction stage below its entry (unet/predict/task.py)
PREDICTION_STAGE = [
    *sorted(
        str(path.relative_to(SRC))
        for path in (SRC / "predict").rglob("*.py")
        if path.name != "task.py"
    ),
    "inference/engines.py",
]
CONFIG_WORDS = re.compile(r"\bcfg\b|DictConfig|OmegaConf")


def paths(tmp_path: Path, output: str = "out") -> list[str]:
    """ckpt_path, input and output settings of files that need not exist."""
    return [
        f"ckpt_path={tmp_path / 'model.ckpt'}",
        f"input={tmp_path / 'image.tif'}",
        f"output={tmp_path / output}",
    ]


def test_every_setting_is_read_into_typed_frozen_parts(tmp_path, compose_predict):
    settings = [
        "tta=flips8",
        "precision=bf16",
        "tiler.tile_size=92",
        "tiler.memory_gb=0.5",
        "postprocess.threshold=0.3",
        "postprocess.fill_holes=true",
        "measurements=true",
        "challenge_naming=true",
        "pixel_size=[0.5,0.25]",
        "zarr.chunk=256",
        "device=cpu",
        "overwrite=true",
    ]
    request = read_request(compose_predict([*paths(tmp_path), *settings]))
    assert request.checkpoint == str(tmp_path / "model.ckpt")
    assert request.output == str(tmp_path / "out") and not request.store
    assert (request.tta, request.precision, request.device) == ("flips8", "bf16", "cpu")
    assert request.tiler == TilerSettings(tile_size=92, memory_gb=0.5)
    assert request.tiler.tiler() == Tiler(tile_size=92, memory_gb=0.5)
    assert request.postprocess == {"threshold": 0.3, "fill_holes": True}  # nulls left out
    assert request.write == Outputs(challenge_naming=True, measurements=True)
    assert request.pixel_size == PixelSize(0.5, 0.25, "micrometer")
    assert request.zarr == ZarrSettings(chunk=256)
    assert request.overwrite and request.trainer is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.tta = "none"


def test_the_trainer_is_plain_settings_and_a_zarr_output_is_a_store(tmp_path, compose_predict):
    overrides = [*paths(tmp_path, "out.zarr"), "trainer=ddp", "trainer.accelerator=cpu"]
    request = read_request(compose_predict(overrides))
    assert request.store
    assert type(request.trainer) is dict  # not a config node: no route below sees one
    assert request.trainer["strategy"] == "ddp" and request.trainer["accelerator"] == "cpu"


@pytest.mark.parametrize(
    ("output", "settings", "error", "message"),
    [
        ("out.zarr", ["tta=flips8"], PredictionSettingError, "tta=flips8: a .zarr output is "),
        ("out.zarr", ["nonfinite=median"], PredictionSettingError, "nonfinite=median: a .zarr"),
        ("out.zarr", ["rois=true"], ObjectOutputError, "rois=true: ROI sets are written for "),
        (
            "out",
            ["trainer=ddp", "engine=onnxruntime"],
            PredictionSettingError,
            "engine=onnxruntime with trainer=ddp: prediction on a Trainer's ranks runs PyTorch",
        ),
        ("out", ["trainer=ddp", "measurements=true"], ObjectOutputError, "measurements=true: "),
        ("out", ["tiler.tile_size=0"], ConfigError, "tiler.tile_size=0: expected a valid input"),
        ("out", ["tta=flips4"], ConfigError, "tta='flips4': expected none, flips8 or paper7"),
        ("model.ckpt/out", [], UnsafeOutputError, "lies inside the ckpt_path"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_any_file_is_read(
    tmp_path, compose_predict, output, settings, error, message
):
    with pytest.raises(error) as caught:
        read_request(compose_predict([*paths(tmp_path, output), *settings]))
    assert str(caught.value).startswith(message) or message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_setting_is_named(tmp_path, compose_predict):
    with pytest.raises(ConfigError, match=r"missing required setting\(s\): pass input=\.\.\."):
        read_request(compose_predict([f"ckpt_path={tmp_path / 'm.ckpt'}", "output=o"]))


def test_the_model_record_fills_only_what_the_request_left_null():
    record = ModelRecord(tta="flips8", precision="32", tile_size=188, overlap=16)
    net = SimpleNamespace(config=NetConfig())
    trained = SimpleNamespace(record=record, path="model.ckpt", net=net)
    given = PredictRequest("model.ckpt", "in.tif", "out", tiler=TilerSettings(overlap=8))
    filled = with_model_record(given, trained)
    assert (filled.tta, filled.precision) == ("flips8", "32")
    assert filled.tiler == TilerSettings(tile_size=188, overlap=8)  # the given overlap wins
    assert given.tta is None and given.tiler.tile_size is None  # the request is left as it was
    streamed = with_model_record(given.but(output="out.zarr"), trained, streamed=True)
    assert streamed.tta == "none"


def test_a_compiled_runtime_gets_larger_tiles_of_a_valid_net_only():
    record = ModelRecord(tta="none", precision="32", tile_size=188, overlap=0)
    request = PredictRequest("model.ckpt", "in.tif", "out", engine="openvino")
    for config, tiler in [
        (NetConfig(), TilerSettings(None, 0, batch_size=1, max_tile=OPENVINO_MAX_TILE)),
        # measured on valid nets only; instance norm's result depends on the tile
        (NetConfig(padding="same"), TilerSettings(tile_size=188, overlap=0)),
        (NetConfig(instance_norm=True), TilerSettings(tile_size=188, overlap=0)),
    ]:
        net = SimpleNamespace(config=config)
        trained = SimpleNamespace(record=record, path="model.ckpt", net=net)
        assert with_model_record(request, trained).tiler == tiler
        # a tile size given wins, whatever the engine
        given = request.but(tiler=TilerSettings(tile_size=572))
        assert with_model_record(given, trained).tiler == TilerSettings(tile_size=572, overlap=0)


def test_no_module_below_the_task_entry_sees_the_config():
    found = {}
    for name in PREDICTION_STAGE:
        for number, line in enumerate((SRC / name).read_text().splitlines(), 1):
            if CONFIG_WORDS.search(line):
                found.setdefault(name, []).append(f"{number}: {line.strip()}")
    assert "predict/request.py" in PREDICTION_STAGE and "predict/setup.py" in PREDICTION_STAGE
    assert "predict/zarr/route.py" in PREDICTION_STAGE
    assert found == {}, f"the config reaches below src/unet/predict/task.py: {found}"
    # and the search can fail: the entry does read the config
    assert CONFIG_WORDS.search((SRC / "predict" / "task.py").read_text())


def test_the_routes_do_not_import_each_other_and_engines_not_the_streamed_route():
    code = (
        "import sys, unet.predict.files, unet.inference.engines, unet.predict.setup\n"
        "print(' '.join(m for m in ('unet.predict.ranks', 'unet.predict.zarr.route', "
        "'unet.predict.zarr.bands', 'unet.predict.task') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
