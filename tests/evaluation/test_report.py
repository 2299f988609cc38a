"""The run report (unet.evaluation.report): report.md and its PNGs after training and eval, and the
same panels in W&B and TensorBoard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from unet.evaluation.report import PAPER, linked_images, metric_table, read_curves, write_report
from unet.evaluation.task import evaluate
from unet.training.task import train


def png(path_or_bytes) -> np.ndarray:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return np.asarray(Image.open(source).convert("RGB"))


def tensorboard_images(folder: Path) -> dict[str, np.ndarray]:
    """The last image of each tag in a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in folder.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    return {tag: png(accumulator.Images(tag)[-1].encoded_image_string) for tag in tags}


def test_metric_table_puts_the_papers_figure_beside_ours_labelled_as_the_papers():
    table = metric_table({"val/seg": 0.5, "val/iou": 0.25, "tta": "none"}, "DIC-C2DH-HeLa", "val")
    assert "this run (val split)" in table and "paper (DIC-C2DH-HeLa test set)" in table
    assert "| val/seg | 0.5000 | 0.7756 (IOU, Table 2) |" in table
    assert "| val/iou | 0.2500 |  |" in table and "tta" not in table
    assert PAPER["isbi2012"]["val/warping_error"][0] == 0.000353


def test_report_without_curves_says_so_and_links_only_existing_pictures(tmp_path):
    picture = np.zeros((8, 8, 3), np.uint8)
    report = write_report(
        tmp_path, "t", {"val/seg": 0.5}, "PhC-C2DH-U373", "val", [("01/1", picture)]
    )
    assert "No learning curves" in report.read_text()
    (linked,) = linked_images(report)
    assert linked == tmp_path / "report" / "val_01-1.png" and png(linked).shape == (8, 8, 3)


def test_tiny_training_run_writes_the_report_and_the_loggers_hold_its_panels(
    tiny_run_overrides, compose_train, data_dir, tmp_path, wandb_offline, configs_dir
):
    run = tmp_path / "train"
    loggers = ["logger=[csv,tensorboard,wandb]", "logger.wandb.offline=true"]
    overrides = [*tiny_run_overrides, *loggers, "trainer.log_every_n_steps=1"]
    metrics = train(compose_train(overrides, run, data_dir))

    report = run / "report.md"
    text = report.read_text()
    assert "| val/pixel_error |" in text and "0.0611 (pixel error, Table 1)" in text
    images = linked_images(report)
    assert run / "report" / "curves.png" in images
    panels = {p.stem.removeprefix("val_"): png(p) for p in images if p.name.startswith("val_")}
    assert len(panels) == 5  # ISBI: the last 5 slices are the validation split
    for path in images:
        assert path.is_file() and path.stat().st_size > 0 and png(path).size > 0
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.tmp*"))
    curves = read_curves([run / "csv" / "metrics.csv"])
    assert "train/loss" in curves and any(name.startswith("lr-") for name in curves)

    # the same pictures in TensorBoard (one tag per image) ...
    board = tensorboard_images(run / "tensorboard")
    for name, picture in panels.items():
        assert np.array_equal(board[f"report/val/{name}"], picture)
    # ... and in the offline W&B run (one image panel, files under media/)
    media = sorted((run / "wandb").glob("offline-run-*/files/media/images/report/val_*.png"))
    assert len(media) == len(panels)
    logged = [png(p) for p in media]
    for picture in panels.values():
        assert any(x.shape == picture.shape and np.array_equal(x, picture) for x in logged)
    assert (
        metrics["val/pixel_error"]
        == json.loads((run / "metrics.json").read_text())["val/pixel_error"]
    )

    # src/eval.py writes its own report, without curves
    with initialize_config_dir(str(configs_dir), version_base="1.3"):
        ecfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                "data.crop=96",
                f"data.data_dir={data_dir}",
            ],
        )
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "eval")
        ecfg.data.cache_dir = str(tmp_path / "cache")
    (tmp_path / "eval").mkdir()
    evaluate(ecfg)
    eval_report = tmp_path / "eval" / "report.md"
    assert "No learning curves" in eval_report.read_text()
    assert len(linked_images(eval_report)) == 5
    assert all(p.stat().st_size > 0 for p in linked_images(eval_report))


@pytest.mark.parametrize("dataset", ["DIC-C2DH-HeLa", "PhC-C2DH-U373"])
def test_cell_data_report_has_the_papers_seg(dataset, tmp_path):
    report = write_report(tmp_path, "t", {"val/seg": 0.9}, dataset, "val", [])
    assert str(PAPER[dataset]["val/seg"][0]) in report.read_text()
    assert "false merge" in report.read_text()
