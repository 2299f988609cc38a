"""The real command lines: one-line errors with exit code 2 from the entry points, and
the command-line check before Hydra composes.

Every case asserts the exit (a :class:`unet.errors.UserError` subclass, which the entry
points print as one line with exit code 2), a message that names the file or the config
key, and that no output was lost or left looking complete. The shared pieces (the synthetic
ISBI folder, the tiny checkpoint, ``one_line``, ``overriding``, ...) are fixtures of
tests/conftest.py. The README's "Reliability" section lists the cases.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from unet.config.cli import check_command_line


def test_command_lines_exit_2_with_one_line(
    synthetic_isbi, tiny_valid_ckpt, tmp_path, truncate, write_stack, run_cli
):
    """Three representative cases through the real entry points, run side by side."""
    stack = write_stack(tmp_path / "stack.tif", 30)
    truncate(stack)
    cache = tmp_path / "cache"
    runs = {
        "trainer.max_epochs='abc'": run_cli(
            "train",
            ["trainer.max_epochs=abc", f"hydra.run.dir={tmp_path / 't'}"],
            synthetic_isbi,
            cache,
        ),
        "stack.tif: truncated": run_cli(
            "predict",
            [f"ckpt_path={tiny_valid_ckpt}", f"input={stack}", f"output={tmp_path / 'p'}"],
            synthetic_isbi,
            cache,
        ),
        "data=foo: there is no 'data/foo' config": run_cli(
            "train", ["data=foo", f"hydra.run.dir={tmp_path / 'c'}"], synthetic_isbi, cache
        ),
        "split='test'": run_cli(
            "eval",
            [f"ckpt_path={tiny_valid_ckpt}", "split=test", f"hydra.run.dir={tmp_path / 'e'}"],
            synthetic_isbi,
            cache,
        ),
    }
    for words, process in runs.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 2, err[-2000:]
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("error: ") and words in err, err
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


# Mistakes Hydra itself cannot compose: (config, command line, words the one line must hold).
COMPOSITION_CASES = {
    "unknown choice": ("train", ["data=foo"], ["data=foo", "hela, isbi, u373"]),
    "unknown experiment": ("train", ["experiment=isbi"], ["experiment=isbi", "isbi_cpu"]),
    "misspelt key": ("train", ["trainer.max_epoch=2"], ["trainer.max_epochs", "+trainer"]),
    "unknown nested key": ("train", ["data.nosuch.deep=3"], ["'data.nosuch.deep'"]),
    "misspelt eval key": ("eval", ["splitt=val"], ["did you mean split?"]),
    "misspelt export key": ("export", ["formatt=onnx"], ["did you mean format?"]),
    "unreadable value": ("train", ["data.tile_size=[1"], ["data.tile_size=[1", "key=value"]),
    "sweep without -m": ("train", ["seed=1,2"], ["seed=1,2", "--multirun"]),
    "unknown sweeper": ("train", ["-m", "hydra/sweeper=optunaa"], ["basic, optuna"]),
}


@pytest.mark.parametrize("case", sorted(COMPOSITION_CASES))
def test_composition_mistake_is_one_line_exit_2(case, capsys, configs_dir):
    config, argv, words = COMPOSITION_CASES[case]
    with pytest.raises(SystemExit) as stop:
        check_command_line(configs_dir, config, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err


def test_export_entry_point_checks_its_command_line(tmp_path, repo_root):
    # src/export.py runs the same check as the other entry points, before Hydra starts
    command = [
        sys.executable,
        str(repo_root / "src" / "export.py"),
        "ckpt_path=x.ckpt",
        "formatt=onnx",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "did you mean format?" in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment=isbi_cpu", "seed=3", "hydra.run.dir=/tmp/x"],
        ["-m", "seed=1,2", "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))"],
        ["-m", "hydra/sweeper=optuna", "data=glob(*)"],
        ["+trainer.max_steps=2"],
        ["--help"],
    ],
)
def test_command_lines_hydra_accepts_pass_the_check(argv, configs_dir):
    check_command_line(configs_dir, "train", argv)  # no SystemExit
