"""Trained models that ship with the repository, used by a short name (``ckpt_path=u373``).

Each lives in ``models/<name>/``: the weights and records of one checkpoint
(``model.ckpt``, optimizer state removed), ``model.yaml`` (what it is, its file's SHA-256)
and a model card (``README.md``). Every route that takes a checkpoint path (predict, eval,
export, ``model.init_from`` for fine-tuning) also takes such a name; a file of that name in
the working folder wins over the shipped model. The checksum is checked before the file is
read, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from unet.errors import UserError
from unet.io.checksum import sha256_of

# the repository's models/ folder (src/unet/inference/shipped.py -> the repository root)
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
CARD = "model.yaml"


class ShippedModelError(UserError, ValueError):
    """A shipped model whose file is missing or differs from its recorded checksum."""


def check_frame(frame: Path, index: int | None, folder: Path) -> Path:
    """The image a model card's check predicts: ``frame`` itself, or, for a stack (ISBI
    2012's ``train-volume.tif``), its slice ``index`` written alone to ``folder``. Used when
    a model is shipped and by the test that predicts the check again."""
    if index is None:
        return frame
    import tifffile  # only for a stack's check: not at every command's start

    path = Path(folder) / f"{frame.stem}_z{index:03d}.tif"
    tifffile.imwrite(path, tifffile.imread(frame)[index])
    return path


@dataclass(frozen=True)
class ShippedModel:
    """One entry of ``models/``: its name, checkpoint file, checksum and data set."""

    name: str
    path: Path
    sha256: str
    data: str
    summary: str
    authors: tuple[str, ...] = ()


def read_entry(card: Path) -> ShippedModel:
    """A ``models/<name>/model.yaml`` read into a :class:`ShippedModel`."""
    try:
        info = yaml.safe_load(card.read_text())
        return ShippedModel(
            name=card.parent.name,
            path=card.parent / str(info["file"]),
            sha256=str(info["sha256"]),
            data=str(info.get("data", "")),
            summary=str(info.get("summary", "")),
            authors=tuple(str(a) for a in info.get("authors") or ()),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ShippedModelError(
            f"{card}: not a readable model entry ({type(err).__name__}: {err}); expected "
            "keys file, sha256, data, summary"
        ) from None


def shipped_models(models_dir: Path | None = None) -> dict[str, ShippedModel]:
    """The shipped models by name (none when the folder is absent, as in an installed wheel)."""
    root = MODELS_DIR if models_dir is None else models_dir
    if not root.is_dir():
        return {}
    cards = sorted(root.glob(f"*/{CARD}"))
    return {card.parent.name: read_entry(card) for card in cards}


@cache
def verified(path: Path, sha256: str, mtime_ns: int, size: int) -> None:
    """Check a file's checksum once per (file, version) in this process."""
    found = sha256_of(path)
    if found != sha256:
        raise ShippedModelError(
            f"{path}: checksum {found[:12]}... differs from the recorded {sha256[:12]}... "
            f"(in {path.parent / CARD}); the file is damaged or was replaced: restore it "
            "with `git checkout -- models/`"
        )


def resolve_model(name_or_path: str | Path, models_dir: Path | None = None) -> Path:
    """A checkpoint path for a path or a shipped model's name.

    An existing file is returned as given; a shipped model's name gives its checked file;
    anything else is returned as a path, for the caller's own "not found" message.

    Raises:
        ShippedModelError: the named model's file is missing or its checksum differs.
    """
    path = Path(str(name_or_path))
    if path.exists() or len(path.parts) != 1:
        return path
    model = shipped_models(models_dir).get(str(name_or_path))
    if model is None:
        return path
    if not model.path.is_file():
        raise ShippedModelError(
            f"shipped model {model.name!r}: {model.path} is missing; expected the checkpoint "
            f"that {model.path.parent / CARD} records (restore it with `git checkout -- models/`)"
        )
    stat = model.path.stat()
    verified(model.path, model.sha256, stat.st_mtime_ns, stat.st_size)
    return model.path


def shipped_model_at(path: str | Path, models_dir: Path | None = None) -> ShippedModel | None:
    """The shipped model whose checkpoint is ``path`` (None for any other file)."""
    target = Path(str(path)).resolve()
    for model in shipped_models(models_dir).values():
        if model.path.resolve() == target:
            return model
    return None


def names_hint(models_dir: Path | None = None) -> str:
    """``"; shipped models: hela, isbi, u373"`` for not-found messages (empty if none)."""
    names = sorted(shipped_models(models_dir))
    return f"; shipped models: {', '.join(names)}" if names else ""
