"""Reader faults of every prediction route, caught at the reader as one line (exit 2);
progress lines a log file can show; a TIFF that tifffile reads as one RGB image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import truncate_file

zarr = pytest.importorskip("zarr")
ome_zarr_writer = pytest.importorskip("ome_zarr.writer")

from unet.config.cli import run_or_exit  # noqa: E402
from unet.io.progress import LineProgress  # noqa: E402
from unet.predict.task import predict  # noqa: E402

SHAPE = (100, 90)


def image(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, shape).astype(np.uint16)


def write_ome_zarr(path: Path, array: np.ndarray, levels: int = 1) -> Path:
    group = zarr.open_group(str(path), mode="w")
    ome_zarr_writer.write_image(
        array,
        group,
        scale_factors=[2**k for k in range(1, levels)],
        axes=["z", "y", "x"][-array.ndim :],
        storage_options={"chunks": (1, 64, 64)[-array.ndim :]},
    )
    return path


@pytest.fixture
def predict_cfg(compose_entry):
    """``predict_cfg(ckpt, source, output, *overrides)``: the prediction config."""

    def compose(ckpt: Path, source: Path, output: Path, *overrides: str):
        overrides = (f"ckpt_path={ckpt}", f"input={source}", f"output={output}", *overrides)
        return compose_entry("predict", list(overrides))

    return compose


def exit_line(cfg, capsys) -> str:
    """The entry point's answer to ``cfg``: exit code 2 and one ``error:`` line."""
    with pytest.raises(SystemExit) as stop:
        run_or_exit(predict, cfg)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


STORE = ["zarr.chunk=64", "tiler.tile_size=92", "labels=false", "progress=false", "device=cpu"]


def _truncated_stack(d: Path) -> Path:
    tifffile.imwrite(
        d / "stack.tif", np.stack([image(k) for k in range(30)]), photometric="minisblack"
    )
    truncate_file(d / "stack.tif")
    return d / "stack.tif"


def _corrupt_chunk(d: Path) -> Path:
    store = write_ome_zarr(d / "in.zarr", image())
    truncate_file(store / "s0" / "c" / "1" / "0")
    return store


def _missing_level(d: Path) -> Path:
    store = write_ome_zarr(d / "in.zarr", image(), levels=2)
    shutil.rmtree(store / "s1")
    return store


def _plain_4d(d: Path) -> Path:
    zarr.create_array(str(d / "plain.zarr"), shape=(1, 2, *SHAPE), dtype="uint16")
    return d / "plain.zarr"


FAULTS = {  # name -> (make the input, extra settings, words the line holds)
    "truncated stack": (_truncated_stack, [], ["stack.tif", "truncated", "promises 30 pages"]),
    "corrupt chunk": (_corrupt_chunk, [], ["in.zarr/s0", "chunk c/1/0", "cannot be decoded"]),
    "missing level": (_missing_level, ["zarr.level=1"], ["at 's1'", "arrays found: s0"]),
    "plain 4D array": (_plain_4d, [], ["plain.zarr", "(1, 2, 100, 90)", "expected (y, x)"]),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_reader_fault_into_zarr_is_one_line_and_keeps_the_earlier_store(
    case, tiny_valid_ckpt, tmp_path, capsys, predict_cfg
):
    make, extra, words = FAULTS[case]
    out = tmp_path / "out.zarr"
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, image(5))
    predict(predict_cfg(tiny_valid_ckpt, good, out, *STORE))
    before = zarr.open_array(str(out / "0"), mode="r")[:]
    source = make(tmp_path)
    # a fault the reader finds in the headers is refused before overwrite=true replaces the
    # earlier store; an undecodable chunk shows only when read, so it goes to a new store
    header = case != "corrupt chunk"
    target = out if header else tmp_path / "new.zarr"
    settings = [*STORE, "overwrite=true", *extra]
    err = exit_line(predict_cfg(tiny_valid_ckpt, source, target, *settings), capsys)
    assert all(word in err for word in words), err
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[:], before)
    if not header:  # no chunk row of the damaged input is marked as written
        assert not list((target / "unet-progress").rglob("[0-9]*"))


def test_corrupt_chunk_in_a_later_section_keeps_the_sections_written(
    tiny_valid_ckpt, tmp_path, capsys, predict_cfg
):
    sections = np.stack([image(k) for k in range(2)])
    store = write_ome_zarr(tmp_path / "in.zarr", sections)
    truncate_file(store / "s0" / "c" / "1" / "1" / "0")  # section 1
    out = tmp_path / "out.zarr"
    err = exit_line(predict_cfg(tiny_valid_ckpt, store, out, *STORE), capsys)
    assert "chunk c/1/1/0" in err, err
    done = sorted(p.name for p in (out / "unet-progress" / "0").iterdir() if p.name.isdigit())
    assert done == ["0", "1"]  # section 0's chunk rows are written and kept for a rerun
    assert not (out / "unet-progress" / "1").exists() or not any(
        p.name.isdigit() for p in (out / "unet-progress" / "1").iterdir()
    )


def test_plain_zarr_array_is_read_as_one_image(tiny_valid_ckpt, tmp_path, predict_cfg):
    plain = zarr.create_array(
        str(tmp_path / "plain.zarr"), shape=SHAPE, chunks=(64, 64), dtype="uint16"
    )
    plain[:] = image()
    tifffile.imwrite(tmp_path / "same.tif", image())
    for name, source in (("plain", tmp_path / "plain.zarr"), ("tiff", tmp_path / "same.tif")):
        predict(predict_cfg(tiny_valid_ckpt, source, tmp_path / f"out_{name}.zarr", *STORE))
    got, expected = (
        zarr.open_array(str(tmp_path / f"out_{n}.zarr/0"), mode="r")[:] for n in ("plain", "tiff")
    )
    assert got.shape == SHAPE
    np.testing.assert_array_equal(got, expected)


def test_missing_chunk_warns_naming_it(tiny_valid_ckpt, tmp_path, capsys, predict_cfg):
    store = write_ome_zarr(tmp_path / "in.zarr", image())
    os.remove(store / "s0" / "c" / "0" / "1")
    predict(predict_cfg(tiny_valid_ckpt, store, tmp_path / "out.zarr", *STORE))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "in.zarr/s0: 1 of 4 chunks are not in the store (c/0/1)" in warnings[0]


def test_invalid_rdf_yaml_is_one_line(tiny_valid_ckpt, tmp_path, capsys, predict_cfg):
    package = tmp_path / "package"
    package.mkdir()
    (package / "rdf.yaml").write_text("type: model\nformat_version: 0.5.3\nname: x\n")
    tifffile.imwrite(tmp_path / "in.tif", image())
    cfg = predict_cfg(package, tmp_path / "in.tif", tmp_path / "out")
    err = exit_line(cfg, capsys)
    assert "rdf.yaml: not a valid bioimage.io model 0.5 description: name:" in err, err
    assert "Field required" not in err and not (tmp_path / "out").exists()


def test_three_plane_tiff_is_refused_with_the_hint_and_read_as_frames_with_it(
    tiny_valid_ckpt, tmp_path, capsys, predict_cfg
):
    frames = np.stack([image(k, (40, 48)) for k in range(3)])
    tifffile.imwrite(tmp_path / "three.tif", frames)  # no photometric: saved as one RGB image
    for out in (tmp_path / "out", tmp_path / "out.zarr"):
        err = exit_line(
            predict_cfg(tiny_valid_ckpt, tmp_path / "three.tif", out, "device=cpu"), capsys
        )
        assert "3 planes" in err and "set input_axes=zyx" in err, err
    summary = predict(
        predict_cfg(tiny_valid_ckpt, tmp_path / "three.tif", tmp_path / "out", "input_axes=zyx")
    )
    assert summary["frames"] == 3
    # each frame predicted as the same frame saved as a gray stack
    tifffile.imwrite(tmp_path / "gray.tif", frames, photometric="minisblack")
    predict(predict_cfg(tiny_valid_ckpt, tmp_path / "gray.tif", tmp_path / "gray"))
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "out" / "probabilities.tif"),
        tifffile.imread(tmp_path / "gray" / "probabilities.tif"),
    )
    options = [*STORE, "input_axes=zyx"]
    predict(predict_cfg(tiny_valid_ckpt, tmp_path / "three.tif", tmp_path / "out.zarr", *options))
    assert zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r").shape == (3, 40, 48)


def test_predict_log_shows_progress_lines(tiny_valid_ckpt, tmp_path, repo_root):
    stack = np.stack([image(k, (64, 64)) for k in range(30)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    log = tmp_path / "predict.log"
    env = dict(os.environ, PYTHONPATH=str(repo_root / "src"))
    args = [
        f"ckpt_path={tiny_valid_ckpt}",
        f"input={tmp_path / 'stack.tif'}",
        f"output={tmp_path / 'out'}",
    ]
    args += ["device=cpu", "overlays=false", f"hydra.run.dir={tmp_path / 'run'}"]
    with open(log, "w") as stdout:
        subprocess.run(
            [sys.executable, "src/predict.py", *args],
            cwd=repo_root,
            env=env,
            stdout=stdout,
            check=True,
        )
    text = log.read_text()
    assert "\x1b[" not in text and "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("predict: frames ")]
    assert len(lines) >= 5, text  # a line per 10 % of the frames at least
    assert all("left" in line or "done in" in line for line in lines), lines
    assert "frames 30/30" in lines[-1]
    counts = [int(line.split()[2].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[0] < 30


def test_line_progress_prints_every_interval_without_terminal_codes():
    import io

    stream = io.StringIO()
    with LineProgress("predict", stream, every_seconds=0.0, every_percent=50) as bar:
        rows = bar.add_task("chunk rows", total=4)
        tiles = bar.add_task("tiles")
        for _ in range(4):
            bar.advance(tiles, 3)
            bar.advance(rows)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("predict: chunk rows 4/4, tiles 12, done in")
    assert "chunk rows/s" in lines[-2] and "0 s left" in lines[-2]
    assert len(lines) == 9  # every advance (every_seconds=0) and the last line
