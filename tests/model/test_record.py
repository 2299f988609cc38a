"""The model record (unet.model.record): how a model was validated travels with it, and
predict, eval and exported packages default to it; reports that know their data."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from unet.config.checks import build
from unet.evaluation.report import dataset_name, shown_metrics, write_report
from unet.evaluation.task import evaluate
from unet.export.task import export
from unet.inference.checkpoint import load_trained, store_validation
from unet.inference.formats.loading import load_for_prediction
from unet.model.fingerprint import record_probe
from unet.model.network import UNet
from unet.model.record import ModelRecord, record_or_default
from unet.predict.files import predict_files
from unet.predict.task import predict
from unet.training.task import final_validation

ISBI_FIGURES = ("0.0611", "0.0382", "0.000353")


def save_net(path: Path, net: UNet, record: ModelRecord | None = None) -> Path:
    """A checkpoint as training writes it; with ``record``, as its final validation ends."""
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    checkpoint = {"state_dict": state, "net_config": net.config.to_dict()}
    torch.save(checkpoint | {"net_probe": record_probe(net)}, path)
    if record is not None:
        store_validation(path, record)
    return path


@pytest.fixture(scope="module")
def flips8_ckpt(tmp_path_factory) -> Path:
    """A tiny random net whose record says it was validated with tta=flips8."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=2, dropout=0.0)
    folder = tmp_path_factory.mktemp("ckpt")
    return save_net(folder / "flips8.ckpt", net, ModelRecord(tta="flips8"))


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "frame.tif"
    tifffile.imwrite(path, np.random.default_rng(0).normal(100, 20, (44, 52)).astype(np.float32))
    return path


def predicted(compose_predict, ckpt, frame, out: Path, *overrides) -> np.ndarray:
    cfg = compose_predict([f"ckpt_path={ckpt}", f"input={frame}", f"output={out}", *overrides])
    predict(cfg)
    return tifffile.imread(out / "probabilities.tif")


def test_predict_defaults_to_the_validated_tta_and_an_override_says_so(
    flips8_ckpt, frame, compose_predict, tmp_path, capsys
):
    assert load_trained(flips8_ckpt).record == ModelRecord(tta="flips8")
    default = predicted(compose_predict, flips8_ckpt, frame, tmp_path / "a")
    assert "overrides" not in capsys.readouterr().out
    flips8 = predicted(compose_predict, flips8_ckpt, frame, tmp_path / "b", "tta=flips8")
    none = predicted(compose_predict, flips8_ckpt, frame, tmp_path / "c", "tta=none")
    np.testing.assert_array_equal(default, flips8)
    assert np.abs(default - none).max() > 1e-4  # a random net is not flip-invariant
    assert "tta=none overrides the model's validated tta=flips8" in capsys.readouterr().out


def test_the_final_validation_stores_its_record_in_the_checkpoint(
    small_overrides, compose_train, data_dir, tmp_path
):
    overrides = [*small_overrides, "tta=flips8", "choose_postprocess=false", "data.crop=64"]
    overrides += ["model.net.depth=2", "model.net.base_channels=2"]
    cfg = compose_train(overrides, tmp_path / "run", data_dir)
    module, datamodule = build(cfg, "model"), build(cfg, "data")
    best = save_net(tmp_path / "best.ckpt", module.net)
    metrics, _, _ = final_validation(cfg, module, datamodule, str(best))
    assert metrics["tta"] == "flips8"
    assert load_trained(best).record == ModelRecord(tta="flips8", precision="32")


def test_a_zarr_output_leaves_the_validated_tta_out_with_a_note(flips8_ckpt, compose_predict):
    from unet.predict.setup import with_model_record
    from unet.predict.task import read_request

    cfg = compose_predict([f"ckpt_path={flips8_ckpt}", "input=x", "output=y.zarr"])
    trained = load_trained(flips8_ckpt)
    request = read_request(cfg)
    assert with_model_record(request, trained).tta == "flips8"
    assert with_model_record(request, trained, streamed=True).tta == "none"
    assert cfg.tta is None  # the entry's config is left as it was


def test_an_old_checkpoint_without_a_record_predicts_as_before(
    frame, compose_predict, tmp_path, capsys
):
    torch.manual_seed(1)
    net = UNet(base_channels=2, depth=2, dropout=0.0)
    ckpt = save_net(tmp_path / "old.ckpt", net)
    trained = load_trained(ckpt)
    assert trained.record is None
    found = predicted(compose_predict, ckpt, frame, tmp_path / "new")
    predict_files(trained.net, frame, tmp_path / "before", progress=False, overlays=False)
    np.testing.assert_array_equal(found, tifffile.imread(tmp_path / "before/probabilities.tif"))
    assert record_or_default(None, ckpt) == ModelRecord()
    assert capsys.readouterr().out.count(f"{ckpt} holds no model record") == 1  # once


def test_an_old_checkpoint_whose_post_processing_names_its_tta_gets_that_record(tmp_path):
    from unet.inference.checkpoint import store_postprocessing
    from unet.inference.postprocess import PostProcessing

    ckpt = save_net(tmp_path / "old.ckpt", UNet(base_channels=2, depth=2))
    store_postprocessing(ckpt, PostProcessing(threshold=0.6), {"split": "val", "tta": "flips8"})
    assert "model_record" not in torch.load(ckpt, weights_only=True)
    assert load_trained(ckpt).record == ModelRecord(tta="flips8")


def compose_eval(configs_dir: Path, overrides: list[str], out: Path):
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.data.cache_dir = str(out / "cache")
    out.mkdir(parents=True)
    return cfg


def test_eval_defaults_to_the_validated_tta(flips8_ckpt, data_dir, configs_dir, tmp_path, capsys):
    isbi = [f"ckpt_path={flips8_ckpt}", "data.crop=64", f"data.data_dir={data_dir}"]
    runs = {
        name: evaluate(compose_eval(configs_dir, isbi + extra, tmp_path / name))
        for name, extra in (("default", []), ("flips8", ["tta=flips8"]), ("none", ["tta=none"]))
    }
    assert runs["default"]["tta"] == runs["flips8"]["tta"] == "flips8"
    assert runs["default"]["val/loss"] == runs["flips8"]["val/loss"]
    assert runs["none"]["tta"] == "none" and runs["none"]["val/loss"] != runs["default"]["val/loss"]
    assert "tta=none overrides the model's validated tta=flips8" in capsys.readouterr().out
    report = (tmp_path / "default" / "report.md").read_text()
    assert all(figure in report for figure in ISBI_FIGURES)  # ISBI keeps its paper's figures
    assert "missed membrane" in report


def test_export_carries_the_record_and_the_package_runner_defaults_to_it(
    flips8_ckpt, frame, compose_export, compose_predict, tmp_path
):
    pytest.importorskip("bioimageio.spec")
    package = tmp_path / "model.zip"
    extra = ["training_data=isbi", f"image={frame}", 'authors=["Test Author"]']
    export(
        compose_export(
            [f"ckpt_path={flips8_ckpt}", "format=bioimageio", f"output={package}", *extra]
        )
    )
    torchscript = tmp_path / "model.pt"
    export(
        compose_export([f"ckpt_path={flips8_ckpt}", "format=torchscript", f"output={torchscript}"])
    )
    for path in (package, torchscript):
        assert load_for_prediction(path).record == ModelRecord(tta="flips8")
    from bioimageio.spec import load_model_description

    descr = load_model_description(package)
    assert descr.config.unet["model_record"]["tta"] == "flips8"  # rdf.yaml's config section
    with zipfile.ZipFile(package) as archive:
        assert "test-time augmentation flips8" in archive.read("README.md").decode()
    default = predicted(compose_predict, package, frame, tmp_path / "a")
    flips8 = predicted(compose_predict, package, frame, tmp_path / "b", "tta=flips8")
    none = predicted(compose_predict, package, frame, tmp_path / "c", "tta=none")
    np.testing.assert_array_equal(default, flips8)
    assert np.abs(default - none).max() > 1e-4


def test_own_data_report_shows_no_paper_figures_and_names_pixel_errors(
    synthetic_rgb, configs_dir, tmp_path
):
    root = synthetic_rgb(tmp_path / "own", count=3, size=48)
    torch.manual_seed(2)
    net = UNet(in_channels=3, num_classes=3, base_channels=2, depth=2, dropout=0.0)
    ckpt = save_net(tmp_path / "own.ckpt", net, ModelRecord())
    overrides = [
        "data=folder",
        f"data.data_dir={root}",
        "data.in_channels=3",
        "data.num_classes=3",
        "data.summary=false",
        "data.num_workers=0",
        f"ckpt_path={ckpt}",
    ]
    cfg = compose_eval(configs_dir, overrides, tmp_path / "eval")
    assert dataset_name(cfg.data) == "own data"
    metrics = evaluate(cfg)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "isbi2012" not in report and "paper (" not in report
    assert not any(figure in report for figure in ISBI_FIGURES)
    assert "membrane" not in report and "false cell pixel" in report
    threshold = metrics["val/pixel_error_threshold"]
    assert ("val/pixel_error_threshold" in report) == (0.0 < threshold < 0.99)


def test_cell_data_reports_show_the_unet_papers_seg(configs_dir, tmp_path):
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        hela = compose("eval", overrides=["data=hela"]).data
        isbi = compose("eval", overrides=["data=isbi"]).data
    assert dataset_name(hela) == "DIC-C2DH-HeLa" and dataset_name(isbi) == "isbi2012"
    metrics = {"val/seg": 0.7, "val/pixel_error": 0.1, "val/pixel_error_threshold": 0.0}
    text = write_report(tmp_path, "t", metrics, dataset_name(hela), "val", []).read_text()
    assert "0.7756" in text and "false merge" in text and "membrane" not in text
    assert not any(figure in text for figure in ISBI_FIGURES)
    assert "pixel_error_threshold" not in text  # at the sweep's end it means nothing


def test_best_pixel_error_threshold_is_shown_only_inside_the_sweep():
    for threshold, shown in ((0.0, False), (0.99, False), (0.37, True)):
        metrics = {"val/pixel_error": 0.1, "val/pixel_error_threshold": threshold}
        assert ("val/pixel_error_threshold" in shown_metrics(metrics)) is shown
    assert shown_metrics({"val/seg": 0.5}) == {"val/seg": 0.5}
