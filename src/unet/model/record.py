"""The model record: how a trained model was validated, so that every use of it repeats that.

The post-processing stored in a checkpoint is chosen at the final validation on
probabilities made in one way (test-time augmentation, precision, standardisation, tiles);
labels made from probabilities of another way are not what was validated. The record
holds those settings as plain values, beside the post-processing (``unet.inference.checkpoint``),
and
``src/predict.py``, ``src/eval.py``, ``src/export.py`` and exported packages default to it
(an explicit setting wins and says so in one line).

Checkpoints written before records were stored load with :class:`ModelRecord`'s defaults
(the settings prediction used then), and a note says so once per file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from unet.errors import UserError

# how inputs are standardised (unet.data.samples.standardize): each image, each channel on
# its own, to zero mean and unit variance; the only rule this code has
NORMALIZATION = "per-image zero mean, unit variance"
TTA_CHOICES = ("none", "flips8", "paper7")
PRECISIONS = ("32", "bf16")


class ModelRecordError(UserError, ValueError):
    """A stored model record with unusable entries."""


@dataclass(frozen=True)
class ModelRecord:
    """How a model was validated; the defaults are what prediction did before records.

    Attributes:
        tta: test-time augmentation of the final validation (``unet.inference.tta``).
        precision: ``32`` or ``bf16`` (autocast) of the final validation's forward passes.
        normalization: how inputs were standardised (:data:`NORMALIZATION`).
        tile_size: the validation tiler's tile side (None: automatic).
        overlap: the validation tiler's overlap (None: exact stitching).
        pixel_size: micrometres per pixel of the training images; None until read from them.
    """

    tta: str = "none"
    precision: str = "32"
    normalization: str = NORMALIZATION
    tile_size: int | list[int] | None = None
    overlap: int | None = None
    pixel_size: float | None = None

    def to_dict(self) -> dict:
        """Plain values (``torch.load(weights_only=True)``, JSON and YAML can hold them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict, where: str | Path) -> ModelRecord:
        """The record of a dict written by :meth:`to_dict`; unknown keys are ignored (a newer
        version's), unusable values raise a ModelRecordError naming ``where``."""
        if not isinstance(stored, dict):
            raise ModelRecordError(
                f"{where}: expected a model record (a dict), found {type(stored).__name__}"
            )
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in stored.items() if k in names})
        problems = []
        if record.tta not in TTA_CHOICES:
            problems.append(f"tta={record.tta!r} (expected {', '.join(TTA_CHOICES)})")
        if canonical_precision(record.precision) not in PRECISIONS:
            problems.append(f"precision={record.precision!r} (expected 32 or bf16)")
        if record.normalization != NORMALIZATION:
            problems.append(f"normalization={record.normalization!r} (expected {NORMALIZATION!r})")
        if problems:
            raise ModelRecordError(
                f"{where}: its model record cannot be used: {'; '.join(problems)}; use a model "
                "written by this version's training or export"
            )
        return record


def stored_record(stored: dict | None, chosen_on: dict, where: str | Path) -> ModelRecord | None:
    """The record stored with a model (``stored``, a :meth:`ModelRecord.to_dict`). A model
    written before records were stored has none; where its post-processing note
    (``chosen_on``) names the test-time augmentation it was chosen with, that is its record
    (those final validations predicted at full precision with automatic tiles); else None."""
    if stored is not None:
        return ModelRecord.from_dict(stored, where)
    if chosen_on.get("tta") in TTA_CHOICES:
        return ModelRecord(tta=chosen_on["tta"])
    return None


def canonical_precision(precision: str | int) -> str:
    """``32`` for 32, ``"32-true"``...; ``bf16`` for ``"bf16-mixed"``...: one spelling each."""
    return str(precision).removesuffix("-true").removesuffix("-mixed")


_TOLD: set[str] = set()  # files whose missing record was already noted (once per process)


def record_or_default(record: ModelRecord | None, where: str | Path | None) -> ModelRecord:
    """``record``; or, for a model stored without one, the defaults and a note (once per
    file) that they are assumed."""
    if record is not None:
        return record
    if str(where) not in _TOLD:
        _TOLD.add(str(where))
        print(
            f"note: {where} holds no model record (how it was validated): it was written "
            "before records were stored; using tta=none, precision=32 as then"
        )
    return ModelRecord()


def choose(name: str, given, validated, same=lambda a, b: str(a) == str(b)):
    """``given`` if set (printing one line when it differs from ``validated``), else
    ``validated``: an explicit setting wins over the model record."""
    if given is None:
        return validated
    if not same(given, validated):
        print(f"{name}={given} overrides the model's validated {name}={validated}")
    return given


def settings_for(record: ModelRecord, tta: str | None, precision: str | int | None):
    """(tta, precision) to predict with: the given ones, or the record's where None."""

    def same_precision(a, b) -> bool:  # 32 and "32-true" are one setting
        return canonical_precision(a) == canonical_precision(b)

    return (
        choose("tta", tta, record.tta),
        choose("precision", precision, record.precision, same_precision),
    )
