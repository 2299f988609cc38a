"""Outputs never destroy inputs; faults of the environment on the write side are one line.

Each case runs ``predict`` (or ``export``, or the checkpoint writer) the way the entry
points do and asserts the refusal (a one-line :class:`unet.errors.UserError`, exit 2; Ctrl-C
exit 130) and that every file that existed before is byte-identical afterwards, with no
partial file left (:mod:`unet.io.output_safety`).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import tifffile

import unet.io.output_safety
import unet.predict.files
import unet.predict.output_folder
from unet.config.cli import INTERRUPTED, run_or_exit
from unet.errors import UserError
from unet.io.output_safety import MARKER, lock_path, output_lock
from unet.predict.task import predict
from unet.training.checkpoint_io import AtomicCheckpointIO

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def ckpt(tiny_valid_ckpt, tmp_path_factory) -> Path:
    """The shared tiny checkpoint, copied into a folder of its own: cases here point
    outputs at the checkpoint's folder."""
    return Path(shutil.copy(tiny_valid_ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"))


def files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (by relative path), and every folder's name."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def exits_with_one_line(cfg, capsys, code: int = 2, kept: str | None = None) -> str:
    """Run ``predict(cfg)`` as ``src/predict.py`` does; the single stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_or_exit(predict, cfg, kept=kept)
    assert info.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write_stack(path: Path, frames: int = 2) -> Path:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (frames, 40, 48)).astype(np.uint8)
    tifffile.imwrite(path, image, photometric="minisblack")
    return path


def write_frames(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for t in range(2):
        tifffile.imwrite(folder / f"t{t:03d}.tif", rng.integers(0, 255, (40, 48), np.uint8))
    return folder


def write_zarr(path: Path) -> Path:
    zarr = pytest.importorskip("zarr")
    writer = pytest.importorskip("ome_zarr.writer")
    image = np.random.default_rng(3).integers(0, 255, (64, 64)).astype(np.uint8)
    group = zarr.open_group(str(path), mode="w")
    writer.write_image(image, group, scale_factors=[], axes="yx")
    return path


INPUTS = {"folder": write_frames, "tiff": write_stack, "zarr": write_zarr}
RELATIONS = {  # the output for an input at data/<name>
    "is": lambda inp: inp,
    "inside": lambda inp: inp / "out.zarr" if inp.suffix == ".zarr" else inp / "out",
    "contains": lambda inp: inp.parent,
}


@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("kind", list(INPUTS))
def test_output_that_is_inside_or_contains_the_input_is_refused(
    kind, relation, ckpt, tmp_path, capsys, compose_predict
):
    name = {"folder": "frames", "tiff": "s.tif", "zarr": "in.zarr"}[kind]
    (tmp_path / "data").mkdir()
    source = INPUTS[kind](tmp_path / "data" / name)
    (tmp_path / "data" / "notes.txt").write_text("unrelated, beside the input")
    output = RELATIONS[relation](source)
    before = files(tmp_path)
    cfg = compose_predict(
        [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", "overwrite=true"]
    )
    message = exits_with_one_line(cfg, capsys)
    assert f"output={output}" in message and "input" in message and str(source) in message
    assert files(tmp_path) == before


def test_symlinked_output_that_resolves_to_the_input_is_refused(
    ckpt, tmp_path, one_line, compose_predict
):
    source = write_frames(tmp_path / "frames")
    link = tmp_path / "link"
    link.symlink_to(source)
    before = files(source)
    cfg = compose_predict([f"ckpt_path={ckpt}", f"input={source}", f"output={link}"])
    with pytest.raises(UserError) as err:
        predict(compose_predict([*cfg_overrides(cfg), "overwrite=true"]))
    assert "is the input" in one_line(err) and files(source) == before


def cfg_overrides(cfg) -> list[str]:
    return [f"ckpt_path={cfg.ckpt_path}", f"input={cfg.input}", f"output={cfg.output}"]


def test_output_containing_the_checkpoint_is_refused(ckpt, tmp_path, one_line, compose_predict):
    source = write_stack(tmp_path / "s.tif")
    before = files(ckpt.parent)
    cfg = compose_predict(
        [f"ckpt_path={ckpt}", f"input={source}", f"output={ckpt.parent}", "overwrite=true"]
    )
    with pytest.raises(UserError) as err:
        predict(cfg)
    assert "contains the ckpt_path" in one_line(err) and files(ckpt.parent) == before


def test_export_onto_its_checkpoint_is_refused(tmp_path, one_line, compose_entry):
    from unet.export.task import export

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"a checkpoint someone named .pt")
    cfg = compose_entry(
        "export", [f"ckpt_path={ckpt}", "format=torchscript", f"output={ckpt}", "overwrite=true"]
    )
    with pytest.raises(UserError) as err:
        export(cfg)
    assert "is the ckpt_path" in one_line(err)
    assert ckpt.read_bytes() == b"a checkpoint someone named .pt"


# ---------------------------------------------------------------------------- the marker


def test_overwrite_replaces_only_folders_unet_wrote(ckpt, tmp_path, one_line, compose_predict):
    source = write_stack(tmp_path / "s.tif")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = files(mine)
    overwrite = [f"ckpt_path={ckpt}", f"input={source}", "overwrite=true"]
    with pytest.raises(UserError) as err:
        predict(compose_predict([*overwrite, f"output={mine}"]))
    message = one_line(err)
    assert "was not written by unet" in message and MARKER in message and str(mine) in message
    assert files(mine) == before

    ours = tmp_path / "ours"
    predict(compose_predict([*overwrite, f"output={ours}"]))
    assert (ours / MARKER).is_file()
    (ours / "labels" / "stale.tif").write_bytes(b"from an earlier run")
    predict(compose_predict([*overwrite, f"output={ours}"]))  # ours: replaced
    assert not (ours / "labels" / "stale.tif").exists() and (ours / MARKER).is_file()

    # a folder of an older version (no marker) holding only unet's files counts as ours
    (ours / MARKER).unlink()
    predict(compose_predict([*overwrite, f"output={ours}"]))
    assert len(tifffile.imread(ours / "probabilities.tif")) == 2


def test_store_overwrite_refuses_foreign_stores_and_files(ckpt, tmp_path, capsys, compose_predict):
    zarr = pytest.importorskip("zarr")
    source = write_stack(tmp_path / "s.tif")
    foreign = tmp_path / "theirs.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("0", shape=(4, 4), dtype="uint8")
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    before = files(tmp_path)
    base = [f"ckpt_path={ckpt}", f"input={source}", "zarr.chunk=64"]
    for output, words in ((foreign, "was not written by unet"), (a_file, "is a file")):
        for extra in (["overwrite=true"], []):
            cfg = compose_predict([*base, f"output={output}", *extra])
            message = exits_with_one_line(cfg, capsys)
            assert str(output) in message and (words in message or extra == []), message
    assert files(tmp_path) == before
    ours = tmp_path / "ours.zarr"
    for _ in range(2):  # a store unet wrote (its ``unet`` attributes) may be replaced
        predict(compose_predict([*base, f"output={ours}", "overwrite=true"]))
    assert zarr.open_group(str(ours), mode="r").attrs["unet"]["shape"] == [2, 40, 48]


# ---------------------------------------------------------------------------- one writer


@pytest.fixture
def other_process():
    """A live process of this host (the holder of a lock), ended after the test."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def hold_lock(output: Path, pid: int) -> Path:
    """The lock file a run with process id ``pid`` on this host holds on ``output``."""
    import json
    import socket

    lock = lock_path(output)
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": 0}))
    return lock


@pytest.mark.parametrize("output_name", ["out", "out.zarr"])
def test_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(
    output_name, ckpt, tmp_path, other_process, capsys, compose_predict
):
    if output_name.endswith(".zarr"):
        pytest.importorskip("zarr")
    source = write_stack(tmp_path / "s.tif")
    out = tmp_path / output_name
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}", "zarr.chunk=64"]
    predict(compose_predict(base))  # the first run's result
    before = files(tmp_path)
    lock = hold_lock(out, other_process.pid)  # a first writer, still running
    message = exits_with_one_line(compose_predict([*base, "overwrite=true"]), capsys)
    assert "is being written by another unet run" in message
    assert f"pid {other_process.pid}" in message
    assert files(tmp_path) == {**before, lock.name: files(tmp_path)[lock.name]}

    other_process.kill()
    other_process.wait()  # the writer died: its lock is stale
    predict(compose_predict([*base, "overwrite=true"]))
    assert "taking over the lock" in capsys.readouterr().err
    assert not lock.exists()


def test_lock_is_reentrant_within_a_process_and_released(tmp_path):
    out = tmp_path / "out"
    with output_lock(out) as lock, output_lock(out):
        assert lock.is_file()
    assert not lock.exists()


# ---------------------------------------------------------------------------- write faults


def failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "somewhere")

    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_fault_in_the_folder_route_is_one_line(
    code, ckpt, tmp_path, monkeypatch, capsys, compose_predict
):
    source = write_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    predict(compose_predict(base))
    before = files(tmp_path)
    monkeypatch.setattr(unet.predict.output_folder, "write_label_image", failing(code))
    message = exits_with_one_line(compose_predict([*base, "overwrite=true"]), capsys)
    assert str(out) in message and unet.io.output_safety.FAULTS[code] in message
    assert files(tmp_path) == before  # earlier output intact, nothing partial left


def test_too_little_free_space_is_refused_before_writing(
    ckpt, tmp_path, monkeypatch, capsys, compose_predict
):
    source = write_stack(tmp_path / "s.tif")
    before = files(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(unet.io.output_safety.shutil, "disk_usage", lambda p: usage(1, 1, 1000))
    for output in ("out", "out.zarr"):
        cfg = compose_predict(
            [f"ckpt_path={ckpt}", f"input={source}", f"output={tmp_path / output}"]
        )
        if output.endswith(".zarr"):
            pytest.importorskip("zarr")
        message = exits_with_one_line(cfg, capsys)
        assert "MiB are free" in message and output in message
    assert files(tmp_path) == before


def test_write_fault_in_the_store_route_is_one_line(
    ckpt, tmp_path, monkeypatch, capsys, compose_predict
):
    pytest.importorskip("zarr")
    from unet.predict.zarr.store import Plane

    source = write_stack(tmp_path / "s.tif")
    out = tmp_path / "out.zarr"
    monkeypatch.setattr(Plane, "write_rows", failing(errno.ENOSPC))
    cfg = compose_predict([f"ckpt_path={ckpt}", f"input={source}", f"output={out}"])
    message = exits_with_one_line(cfg, capsys)
    assert "out.zarr" in message and "disk is full" in message
    assert not lock_path(out).exists()


def test_write_fault_in_export_is_one_line(ckpt, tmp_path, monkeypatch, one_line, compose_entry):
    import unet.inference.formats.torchscript
    from unet.export.task import export

    monkeypatch.setattr(
        unet.inference.formats.torchscript, "write_torchscript", failing(errno.EROFS)
    )
    output = tmp_path / "model.pt"
    cfg = compose_entry("export", [f"ckpt_path={ckpt}", "format=torchscript", f"output={output}"])
    with pytest.raises(UserError) as err:
        export(cfg)
    assert "read-only" in one_line(err) and "model.pt" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch, one_line):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"the good one")
    monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC))
    with pytest.raises(UserError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, folder / "last.ckpt")
    assert "last.ckpt" in one_line(err) and "disk is full" in one_line(err)
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
    assert (folder / "last.ckpt").read_bytes() == b"the good one"


# ---------------------------------------------------------------------------- Ctrl-C


def entry_point_kept(name: str) -> str:
    """What ``src/<name>.py`` says an interrupted run keeps."""
    spec = importlib.util.spec_from_file_location(f"{name}_entry", SRC / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KEPT


def test_ctrl_c_during_prediction_exits_130_in_one_line(
    ckpt, tmp_path, monkeypatch, capsys, compose_predict
):
    source = write_stack(tmp_path / "s.tif", 3)
    out = tmp_path / "out"
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    predict(compose_predict(base))
    before = files(tmp_path)
    calls = []
    original = unet.predict.files.predict_image

    def interrupt_second(*args, **kwargs):  # Ctrl-C while the second frame's tiles run
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(unet.predict.files, "predict_image", interrupt_second)
    kept = entry_point_kept("predict")
    cfg = compose_predict([*base, "overwrite=true"])
    line = exits_with_one_line(cfg, capsys, code=INTERRUPTED, kept=kept)
    assert line.startswith("interrupted; ") and "earlier output is kept" in line
    assert files(tmp_path) == before


def test_fault_at_the_final_rename_keeps_the_earlier_output(
    ckpt, tmp_path, monkeypatch, capsys, compose_predict
):
    from unet.io.atomic import partial_path

    source = write_stack(tmp_path / "s.tif")
    out = tmp_path / "out"
    base = [f"ckpt_path={ckpt}", f"input={source}", f"output={out}"]
    predict(compose_predict(base))
    before = files(tmp_path)
    replace = os.replace

    def read_only_at_the_rename(src, dst):  # the folder output's last write
        if Path(src) == partial_path(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only_at_the_rename)
    message = exits_with_one_line(compose_predict([*base, "overwrite=true"]), capsys)
    assert "read-only" in message and str(out) in message
    assert files(tmp_path) == before


def test_eval_output_inside_the_scored_predictions_is_refused(tmp_path, one_line, compose_entry):
    from omegaconf import open_dict

    from unet.evaluation.task import evaluate

    predictions = write_frames(tmp_path / "labels")
    before = files(tmp_path)
    cfg = compose_entry("eval", [f"predictions={predictions}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(predictions / "eval")
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert "paths.output_dir=" in one_line(err) and "lies inside the predictions" in one_line(err)
    assert files(tmp_path) == before


def test_run_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, configs_dir):
    import unet.config.cli
    from unet.config.cli import command_line_error

    (tmp_path / "a_file").write_text("x")
    message = command_line_error(
        configs_dir, "train", [f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"]
    )
    assert "a_file is a file" in message and "hydra.run.dir=" in message
    monkeypatch.setattr(
        unet.config.cli.os, "access", lambda *args: False
    )  # read-only (root ignores chmod)
    message = command_line_error(configs_dir, "eval", [f"hydra.run.dir={tmp_path / 'run'}"])
    assert f"{tmp_path} is not writable" in message


def test_outputs_of_older_versions_are_recognised_by_their_contents(tmp_path):
    import json
    import zipfile

    from unet.io.output_safety import is_ours

    def make(name: str, entries: dict[str, bytes]) -> Path:
        for rel, data in entries.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_bytes(data)
        return tmp_path / name

    unet_attrs = json.dumps({"attributes": {"unet": {"shape": [4, 4]}}}).encode()
    assert is_ours(make("old", {"probabilities.tif": b"", "labels/t0.tif": b""}))
    assert is_ours(make("out.partial", {"labels/t0.tif": b"", ".probabilities.tif.7.partial": b""}))
    assert is_ours(make("old.zarr", {"zarr.json": unet_attrs, "0/zarr.json": b"{}"}))
    assert not is_ours(make("thesis", {"probabilities.tif": b"", "chapter1.tex": b""}))
    assert not is_ours(make("labels_only", {"labels/t0.tif": b""}))
    assert not is_ours(make("theirs.zarr", {"zarr.json": b'{"attributes": {}}'}))
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:  # TorchScript's layout
        archive.writestr("model/extra/unet.json", json.dumps({"net_config": {}}))
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("other/data.pkl", b"weights")
    (tmp_path / "other.onnx").write_bytes(b"\x08\x07 an ONNX file of someone else")
    assert is_ours(tmp_path / "model.pt")
    assert not is_ours(tmp_path / "other.pt") and not is_ours(tmp_path / "other.onnx")
