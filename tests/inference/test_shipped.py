"""Shipped models (models/<name>/): used by name, checked by checksum, and giving what their
model card records."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from omegaconf import OmegaConf

from unet.config.models import with_shipped_models
from unet.inference.shipped import (
    MODELS_DIR,
    ShippedModelError,
    check_frame,
    names_hint,
    resolve_model,
    sha256_of,
    shipped_models,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(shipped_models())


def fake_models(tmp_path: Path, payload: bytes = b"weights") -> Path:
    folder = tmp_path / "models" / "cells"
    folder.mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(payload)
    digest = sha256_of(folder / "model.ckpt")
    (folder / "model.yaml").write_text(
        yaml.safe_dump({"file": "model.ckpt", "sha256": digest, "data": "x", "summary": "s"})
    )
    return tmp_path / "models"


def test_a_name_gives_its_checked_file_and_a_path_stays_a_path(tmp_path, monkeypatch):
    models = fake_models(tmp_path)
    assert resolve_model("cells", models) == models / "cells" / "model.ckpt"
    # an unknown name or a path with folders is left to the caller's own message
    assert resolve_model("other", models) == Path("other")
    assert resolve_model("runs/cells", models) == Path("runs/cells")
    # a file of that name in the working folder wins
    monkeypatch.chdir(tmp_path)
    Path("cells").write_bytes(b"mine")
    assert resolve_model("cells", models) == Path("cells")
    assert names_hint(models) == "; shipped models: cells"


def test_a_changed_or_missing_file_is_one_line(tmp_path):
    models = fake_models(tmp_path)
    (models / "cells" / "model.ckpt").write_bytes(b"weightz")
    with pytest.raises(ShippedModelError, match="checksum .* differs from the recorded"):
        resolve_model("cells", models)
    (models / "cells" / "model.ckpt").unlink()
    with pytest.raises(ShippedModelError, match="model.ckpt is missing"):
        resolve_model("cells", models)
    (models / "cells" / "model.yaml").write_text("file: [")
    with pytest.raises(ShippedModelError, match="not a readable model entry"):
        resolve_model("cells", models)


def test_the_config_names_become_paths_once():
    if not SHIPPED:
        pytest.skip("no shipped model in models/")
    name = SHIPPED[0]
    cfg = OmegaConf.create({"ckpt_path": name, "model": {"init_from": "last"}})
    cfg = with_shipped_models(cfg)
    assert cfg.ckpt_path == str(MODELS_DIR / name / "model.ckpt")
    assert cfg.model.init_from == "last"


def test_the_repository_ships_models_with_cards():
    assert SHIPPED, "models/ holds no shipped model"
    for name in SHIPPED:
        folder = MODELS_DIR / name
        card = (folder / "README.md").read_text()
        entry = yaml.safe_load((folder / "model.yaml").read_text())
        assert entry["sha256"] in card and entry["validation"]
        assert sha256_of(folder / entry["file"]) == entry["sha256"]
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total < 50e6, f"models/ holds {total / 1e6:.1f} MB"


# what the README's table of shipped models shows of each card, per data set
README_FIGURES = {
    "PhC-C2DH-U373": ("val/seg", "val/seg_heldout"),
    "DIC-C2DH-HeLa": ("val/seg", "val/seg_heldout"),
    "isbi2012": ("val/labels_rand_error_heldout", "val/labels_v_rand_heldout"),
}


def test_the_readme_lists_every_shipped_model_with_its_cards_figures():
    readme = (ROOT / "README.md").read_text()
    for name in SHIPPED:
        entry = yaml.safe_load((MODELS_DIR / name / "model.yaml").read_text())
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"README.md: no row for the shipped model {name}"
        for key in README_FIGURES[entry["data"]]:
            assert f"{entry['validation'][key]:.3f}" in rows[0], (name, key)


def predict_cli(
    args: list[str], cwd: Path, root: Path = ROOT, timeout: int = 900
) -> subprocess.CompletedProcess:
    """``src/predict.py`` of the checkout at ``root``, run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, str(root / "src" / "predict.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_predicts_what_its_card_records(name, data_dir, tmp_path):
    """``src/predict.py ckpt_path=<name>`` on the card's validation frame, from another
    working folder, gives the numbers recorded when the model was shipped."""
    entry = yaml.safe_load((MODELS_DIR / name / "model.yaml").read_text())
    check = entry["check"]
    frame = Path(data_dir) / check["frame"]
    if not frame.is_file():
        pytest.skip(f"{frame} not here")
    frame = check_frame(frame, check.get("slice"), tmp_path)  # a stack: its slice, as shipped
    out = tmp_path / "out"
    result = predict_cli(
        [
            f"ckpt_path={name}",
            f"input={frame}",
            f"output={out}",
            "overlays=false",
            "progress=false",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probabilities = tifffile.imread(out / "probabilities.tif").astype(np.float64)
    foreground = probabilities[-1] if probabilities.ndim == 3 else probabilities
    labels = [tifffile.imread(p) for p in sorted((out / "labels").glob("*.tif"))]
    assert abs(foreground.mean() - check["mean_probability"]) < 1e-4
    assert sum(len(np.unique(lab[lab > 0])) for lab in labels) == check["objects"]
    fraction = np.mean([np.mean(lab > 0) for lab in labels])
    assert abs(fraction - check["labelled_fraction"]) < 1e-4


def test_a_damaged_shipped_model_is_refused_in_one_line(tmp_path):
    if not SHIPPED:
        pytest.skip("no shipped model in models/")
    # a copy of the repository's entry points and one model, its file damaged
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copytree(ROOT / "configs", copy / "configs")
    name = SHIPPED[0]
    shutil.copytree(MODELS_DIR / name, copy / "models" / name)
    with open(copy / "models" / name / "model.ckpt", "r+b") as file:
        file.seek(1000)
        file.write(b"\0\0\0\0")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    args = [f"ckpt_path={name}", f"input={image}", f"output={tmp_path / 'out'}"]
    result = predict_cli(args, cwd=tmp_path, root=copy, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "checksum" in lines[0] and name in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_eval_of_a_shipped_model_gives_its_card(name, data_dir, tmp_path):
    """The full check: ``src/eval.py ckpt_path=<name>`` on its validation split gives the
    model card's validation numbers."""
    entry = yaml.safe_load((MODELS_DIR / name / "model.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "UNET_DATA_DIR": str(data_dir)}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "eval.py"),
            f"ckpt_path={name}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("val/seg", "val/pixel_error", "val/rand_error", "val/iou"):
        if key in entry["validation"] and key in metrics:
            assert abs(metrics[key] - entry["validation"][key]) < 1e-3, key


@pytest.mark.parametrize("name", [n for n in SHIPPED if n in ("u373", "hela")])
def test_the_own_data_recipe_fine_tunes_from_the_shipped_cell_model(name, compose_train, tmp_path):
    """``experiment=folder_cpu model.init_from=<cell model>``: every weight fits."""
    import torch

    from unet.inference.checkpoint import init_from_checkpoint
    from unet.model.network import UNet
    from unet.training.start_from import adopt_start_architecture

    cfg = compose_train(["experiment=folder_cpu", f"model.init_from={name}"], tmp_path)
    cfg = with_shipped_models(cfg, ("model.init_from",))
    adopt_start_architecture(cfg)  # as training does: the shipped model's normalisation
    net_settings = {k: v for k, v in cfg.model.net.items() if k != "_target_"}
    net = UNet(**net_settings)
    assert init_from_checkpoint(net, cfg.model.init_from) == []  # nothing left as it was
    stored = torch.load(cfg.model.init_from, weights_only=True)["state_dict"]
    first = next(k for k in stored if k.startswith("net."))
    assert torch.equal(net.state_dict()[first[4:]], stored[first])


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_the_bioimageio_package_of_a_shipped_model_passes_bioimageio_core(
    name, data_dir, compose_export, tmp_path
):
    """``src/export.py ckpt_path=<name>`` (no authors needed: the card names them), then
    bioimageio.core's own test of the package, every weight format."""
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import test_model

    from unet.export.task import export

    package = tmp_path / f"{name}.zip"
    cfg = compose_export([f"ckpt_path={name}", f"output={package}", f"paths.data_dir={data_dir}"])
    export(with_shipped_models(cfg))
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
