"""Predicting files: src/predict.py, unet.predict.files and unet.io.writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet.config.checks import ConfigError
from unet.config.cli import run_or_exit
from unet.data.readers import DataError
from unet.errors import UserError
from unet.inference.checkpoint import CheckpointError, load_network, load_trained
from unet.inference.postprocess import PostProcessing, postprocessing_for
from unet.inference.precision import cpu_has_native_bf16
from unet.inference.tiler import Tiler
from unet.io.panels import GAP, HEADER
from unet.io.writers import overlay
from unet.model.network import UNet
from unet.predict.files import predict_files
from unet.predict.output_folder import mask_name
from unet.predict.request import PredictionSettingError
from unet.predict.task import predict
from unet.training.task import OutputExistsError, train


@pytest.fixture(scope="module")
def trained_ckpt(data_dir, tmp_path_factory, compose_train, small_overrides) -> Path:
    """A small U-Net trained for 20 steps on 96x96 crops of the real ISBI slices."""
    run = tmp_path_factory.mktemp("train")
    overrides = [
        "debug=limit",
        "trainer.limit_train_batches=10",
        "callbacks=default",
        "callbacks.progress_bar=null",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "model.net.dropout=0.0",
        "validate=false",
        *small_overrides,
    ]
    train(compose_train(overrides, run, data_dir))
    return run / "checkpoints" / "last.ckpt"


def test_isbi_stack_end_to_end(trained_ckpt, compose_predict, data_dir, tmp_path):
    isbi = data_dir / "isbi2012"
    # a test-volume.tif-shaped input: 3 slices of 96x96 from the real test volume
    test_stack = tmp_path / "test-volume.tif"
    tifffile.imwrite(
        test_stack,
        tifffile.imread(isbi / "test-volume.tif")[:3, :96, :96],
        photometric="minisblack",  # 3 pages, not one RGB image
    )
    out = tmp_path / "out"
    summary = predict(
        compose_predict([f"ckpt_path={trained_ckpt}", f"input={test_stack}", f"output={out}"])
    )
    prob = tifffile.imread(out / "probabilities.tif")
    assert summary["frames"] == 3
    assert prob.shape == (3, 96, 96) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    labels = sorted((out / "labels").iterdir())
    assert [p.name for p in labels] == [f"test-volume_{i:03d}.tif" for i in range(3)]
    assert tifffile.imread(labels[0]).dtype == np.uint16
    assert len(list((out / "overlays").glob("*.png"))) == 3
    # a stack also gets one picture of all its frames: 2 x 2 thumbnails of 96 px
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (2 * (160 + HEADER), 2 * (160 + GAP), 3)
    first = np.asarray(Image.open(out / "overlays" / "test-volume_000.png"))
    assert np.array_equal(sheet[HEADER : HEADER + 96, :96], first)

    # polarity (ISBI submission): 1 = cell interior, 0 = membrane; checked on labelled slices
    train_stack = tmp_path / "train.tif"
    tifffile.imwrite(
        train_stack,
        tifffile.imread(isbi / "train-volume.tif")[:3, :96, :96],
        photometric="minisblack",
    )
    truth = tifffile.imread(isbi / "train-labels.tif")[:3, :96, :96]
    predict(
        compose_predict(
            [f"ckpt_path={trained_ckpt}", f"input={train_stack}", f"output={tmp_path / 'train'}"]
        )
    )
    prob = tifffile.imread(tmp_path / "train" / "probabilities.tif")
    assert prob[truth == 255].mean() > prob[truth == 0].mean() + 0.05


def test_entry_point_runs(tiny_valid_ckpt, repo_root, tmp_path):
    frame = tmp_path / "image.png"
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(frame)
    result = subprocess.run(
        [
            sys.executable,
            "src/predict.py",
            f"ckpt_path={tiny_valid_ckpt}",
            f"input={frame}",
            f"output={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert tifffile.imread(tmp_path / "out" / "probabilities.tif").shape == (40, 50)
    assert (tmp_path / "out" / "overlays" / "image.png").is_file()
    assert not (tmp_path / "out" / "contact_sheet.png").exists()  # one frame: no sheet


def test_folder_of_frames_with_challenge_naming_and_mixed_sizes(
    tiny_valid_ckpt, compose_predict, tmp_path
):
    frames = tmp_path / "01"
    frames.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (40, 50), (33, 61)]
    for t, size in enumerate(sizes):
        tifffile.imwrite(frames / f"t{t:03d}.tif", rng.integers(0, 255, size, dtype=np.uint8))
    (frames / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    summary = predict(
        compose_predict(
            [
                f"ckpt_path={tiny_valid_ckpt}",
                f"input={frames}",
                f"output={out}",
                "challenge_naming=true",
            ]
        )
    )
    assert summary["frames"] == 3 and summary["series"] == 2
    for t, size in enumerate(sizes):  # each frame is predicted at its own size
        assert tifffile.imread(out / "labels" / f"mask{t:03d}.tif").shape == size
    with tifffile.TiffFile(out / "probabilities.tif") as tif:
        assert [s.shape for s in tif.series] == [(2, 40, 50), (33, 61)]


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 is refused where it is emulated")
def test_bf16_autocast_and_tta_run_on_cpu(tiny_valid_ckpt, tmp_path):
    frame = tmp_path / "image.tif"
    tifffile.imwrite(frame, np.random.default_rng(0).normal(size=(37, 45)).astype(np.float32))
    net = load_network(tiny_valid_ckpt)
    results = {}
    for precision in ("32", "bf16"):
        out = tmp_path / precision
        predict_files(
            net, frame, out, precision=precision, tta="flips8", tiler=Tiler(), progress=False
        )
        results[precision] = tifffile.imread(out / "probabilities.tif")
    assert results["bf16"].dtype == np.float32
    np.testing.assert_allclose(results["bf16"], results["32"], atol=0.05)


def test_default_labels_and_mask_names():
    prob = np.zeros((10, 12), np.float32)
    prob[1:4, 1:4] = 0.9  # a cell
    prob[4:7, 4:7] = 0.8  # touches the first only at a corner: a second cell (4-connected)
    prob[8, 10] = 0.7  # a speck
    labels = PostProcessing(threshold=0.5)(prob)
    assert labels.max() == 3 and labels[2, 2] != labels[5, 5]
    kept = PostProcessing(threshold=0.5, min_area=2)(prob)
    assert kept.max() == 2 and kept[8, 10] == 0 and set(np.unique(kept)) == {0, 1, 2}
    assert mask_name("t013", 5) == "mask013.tif" and mask_name("frame", 7) == "mask007.tif"


def test_bad_inputs_give_one_clear_line(
    tiny_valid_ckpt, compose_predict, tmp_path, capsys, save_checkpoint
):
    def fails(overrides, error, match):
        cfg = compose_predict(
            [f"ckpt_path={tiny_valid_ckpt}", f"output={tmp_path / 'out'}", *overrides]
        )
        with pytest.raises(error, match=match):
            predict(cfg)

    (tmp_path / "notes.txt").write_text("not an image")
    fails([f"input={tmp_path / 'notes.txt'}"], DataError, "unsupported file type '.txt'")
    (tmp_path / "junk.tif").write_bytes(b"junk")
    fails([f"input={tmp_path / 'junk.tif'}"], DataError, "junk.tif: cannot be read as an image")
    fails([f"input={tmp_path / 'missing.tif'}"], DataError, "does not exist")
    (tmp_path / "empty").mkdir()
    fails([f"input={tmp_path / 'empty'}"], DataError, "no image files")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    fails([f"input={tmp_path / 'colour.png'}"], DataError, "colour image")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "gray.png")
    gray = f"input={tmp_path / 'gray.png'}"
    fails([gray, f"output={tmp_path / 'x.tif'}"], PredictionSettingError, "expected a folder")
    fails([gray, "precision=16"], ConfigError, "precision=16: expected 32 or bf16")
    fails([gray, "postprocess.min_area=-3"], UserError, "postprocess.min_area=-3: expected")
    fails([gray, "tiler.tile_size=50"], UserError, "nearest valid sizes: 48, 52")
    if not torch.cuda.is_available():
        fails([gray, "device=cuda"], PredictionSettingError, "no GPU is visible")

    # a checkpoint whose weights belong to another architecture
    torch.manual_seed(0)
    other = save_checkpoint(
        UNet(base_channels=4, depth=2),
        tmp_path / "other.ckpt",
        net_config=UNet(base_channels=2).config.to_dict(),
    )
    fails([gray, f"ckpt_path={other}"], CheckpointError, "weights do not fit")

    # an existing output folder is not overwritten unless asked to
    (tmp_path / "out").mkdir(exist_ok=True)
    fails([gray], OutputExistsError, "already exists; pass overwrite=true")
    predict(
        compose_predict(
            [f"ckpt_path={tiny_valid_ckpt}", gray, f"output={tmp_path / 'out'}", "overwrite=true"]
        )
    )
    assert (tmp_path / "out" / "probabilities.tif").is_file()

    # every one of these is a UserError: the entry point prints one line and exits with 2
    cfg = compose_predict([f"ckpt_path={tiny_valid_ckpt}", gray, f"output={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(predict, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_overlay_tints_objects_only():
    image = np.tile(np.linspace(0, 200, 16, dtype=np.float32), (8, 1))
    labels = np.zeros((8, 16), np.int64)
    labels[2:5, 3:9] = 1
    rgb = overlay(image, labels)
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    background = rgb[labels == 0]
    assert (background == background[:, :1]).all()  # gray
    assert (rgb[labels == 1].std(axis=-1) > 0).any()  # tinted


def test_settings_stored_in_the_checkpoint_are_used_unless_overridden(
    tiny_valid_ckpt, compose_predict, tmp_path
):
    from unet.inference.checkpoint import store_postprocessing

    ckpt = tmp_path / "validated.ckpt"
    ckpt.write_bytes(tiny_valid_ckpt.read_bytes())
    assert load_trained(ckpt).postprocess is None  # nothing validated: the plain defaults
    assert postprocessing_for(None, {"min_area": None}) == PostProcessing()
    chosen = PostProcessing(threshold=0.7, min_area=5, regrow="probability", grow_threshold=0.3)
    store_postprocessing(ckpt, chosen, {"split": "val", "score": "seg", "value": 0.8})
    trained = load_trained(ckpt)
    assert trained.postprocess == chosen and trained.chosen_on["score"] == "seg"
    cfg = compose_predict([f"ckpt_path={ckpt}", "input=x", "output=y"])
    assert postprocessing_for(trained.postprocess, cfg.postprocess) == chosen
    cfg = compose_predict([f"ckpt_path={ckpt}", "input=x", "output=y", "postprocess.min_area=9"])
    assert postprocessing_for(trained.postprocess, cfg.postprocess) == chosen.replace(min_area=9)

    # predict.py writes the labels of the stored settings: a speck of 4 px is dropped
    frame = np.zeros((40, 40), np.float32)
    frame[10:12, 10:12] = 1.0
    tifffile.imwrite(tmp_path / "frame.tif", frame)
    seen = []

    def spy(probability):
        seen.append(probability)
        return chosen(probability)

    out = tmp_path / "out"
    net = load_network(ckpt)
    predict_files(net, tmp_path / "frame.tif", out, postprocess=spy, progress=False, overlays=False)
    np.testing.assert_array_equal(
        tifffile.imread(out / "labels" / "frame.tif"), chosen(seen[0]).astype(np.uint16)
    )
