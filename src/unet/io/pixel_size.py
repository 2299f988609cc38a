"""The physical size of a pixel: read from inputs, recorded with a model, written to outputs.

Where a pixel size is found (:func:`read_pixel_size`, :func:`read_tiff_pixel_size`):

- an ImageJ TIFF: the ``unit`` of its ImageJ description and the XResolution/YResolution
  tags (pixels per unit);
- an OME-TIFF: ``PhysicalSizeX``/``PhysicalSizeY`` and their units (micrometer where the
  file names none, as the OME schema says);
- any other TIFF whose ResolutionUnit is centimeter (what our own outputs write);
- an OME-Zarr image: its scale and axis units, read by ``unet.predict.zarr.source`` with the image;
- a folder of frames: its first TIFF frame.

Units are stored under their OME-NGFF names (``micrometer``, ``nanometer``, ...);
``PixelSize(1, 1, "pixel")`` stands for an unknown size where a value is needed (the
measurements table). Training records the training data's pixel size in the checkpoint
(``checkpoint["pixel_size"]``, plain values) and export carries it on; prediction warns
when an input's pixel size differs from it by more than :data:`MISMATCH_FACTOR`
(:func:`mismatch_warning`).

Choices: TIFF outputs get the TIFF-standard resolution in pixels per centimeter (one
convention for every page and series, which Fiji, QuPath and tifffile read); a TIFF with an
inch resolution unit counts as unknown (72 dpi is a common default that means nothing).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

KEY = "pixel_size"  # the checkpoint's and the export record's entry
MISMATCH_FACTOR = 1.25  # warn above this ratio of input to training pixel size
# NGFF unit name -> micrometers; the lengths a pixel size can be compared and written in
MICROMETERS = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
ALIASES = {
    "a": "angstrom",
    "\u00c5": "angstrom",
    "nm": "nanometer",
    "um": "micrometer",
    "\u00b5m": "micrometer",  # micro sign
    "\u03bcm": "micrometer",  # Greek mu
    "\\u00b5m": "micrometer",  # as ImageJ escapes it in its ASCII description
    "micron": "micrometer",
    "microns": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}
SYMBOLS = {"micrometer": "um", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm"}
TIFF_UNITS = {3: "centimeter", 4: "millimeter", 5: "micrometer"}  # ResolutionUnit values


@dataclass(frozen=True)
class PixelSize:
    """The size of one pixel along y and x, in ``unit`` (1 ``pixel`` where unknown)."""

    y: float = 1.0
    x: float = 1.0
    unit: str = "pixel"

    @classmethod
    def of(cls, scale: tuple[float, float], units: tuple[str | None, str | None]) -> PixelSize:
        """From a reader's (y, x) scale and units (``unet.predict.zarr.source.Sections``). Without a
        unit: ``pixel`` for a scale of 1, else ``unknown`` (a scale whose unit nobody wrote)."""
        y, x = float(scale[0]), float(scale[1])
        unit = units[-1] or units[0] or ("pixel" if (y, x) == (1.0, 1.0) else "unknown")
        return cls(y, x, unit)

    @property
    def known(self) -> bool:
        """Whether this is a physical length (not ``pixel`` or ``unknown``)."""
        return self.unit in MICROMETERS

    def micrometers(self) -> tuple[float, float]:
        """(y, x) in micrometers (only for a :attr:`known` size)."""
        return self.y * MICROMETERS[self.unit], self.x * MICROMETERS[self.unit]

    def text(self) -> str:
        """For messages: ``0.1 um``, or ``0.5 x 0.25 um`` (y x) where they differ."""
        size = f"{self.y:.4g}" if self.y == self.x else f"{self.y:.4g} x {self.x:.4g}"
        return f"{size} {SYMBOLS.get(self.unit, self.unit)}"

    def to_record(self) -> dict:
        """Plain values, for a checkpoint or an export record."""
        return {"y": float(self.y), "x": float(self.x), "unit": self.unit}


PIXELS = PixelSize()  # the pixel size where none is known: 1 pixel


def unit_name(text: str | None) -> str | None:
    """The NGFF name of a length unit as files write it (``micron``, ``\u00b5m``, ``um``,
    ``micrometer``, ...); None for no unit or one that is not a length (``pixel``)."""
    key = str(text or "").strip()
    name = ALIASES.get(key, ALIASES.get(key.lower(), key.lower()))
    return name if name in MICROMETERS else None


def physical(y: float, x: float, unit: str | None) -> PixelSize | None:
    """A known pixel size, or None where the unit is no length or a size is not positive."""
    name = unit_name(unit)
    if name is None or not (y > 0 and x > 0):
        return None
    return PixelSize(float(f"{y:.10g}"), float(f"{x:.10g}"), name)  # rationals read back


def from_record(record: dict | None) -> PixelSize | None:
    """The pixel size of a checkpoint's or export record's ``pixel_size`` entry, or None."""
    if not isinstance(record, dict):
        return None
    try:
        return physical(float(record["y"]), float(record["x"]), record.get("unit"))
    except (KeyError, TypeError, ValueError):
        return None


def pixel_size_setting(value) -> PixelSize | None:
    """The ``pixel_size`` setting of predict: null, or [y, x] in micrometers (checked by
    ``unet.config.checks``)."""
    if value is None:
        return None
    y, x = (float(v) for v in value)
    return PixelSize(y, x, "micrometer")


def _per_unit(page, name: str) -> float | None:
    """A resolution tag (pixels per unit) as a number, or None where absent or zero."""
    tag = page.tags.get(name)
    if tag is None:
        return None
    value = tag.value
    number = value[0] / value[1] if isinstance(value, tuple) and value[1] else value
    return float(number) if isinstance(number, int | float) and number > 0 else None


def _from_tags(page, unit: str | None) -> PixelSize | None:
    """The pixel size of a page's resolution tags in ``unit``."""
    x, y = _per_unit(page, "XResolution"), _per_unit(page, "YResolution")
    if x is None or y is None:
        return None
    return physical(1 / y, 1 / x, unit)


def _from_ome(xml: str) -> PixelSize | None:
    """PhysicalSizeY/X of the first image of an OME-XML description."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    x = float(pixels.get("PhysicalSizeX"))
    y = float(pixels.get("PhysicalSizeY", x))
    unit = pixels.get("PhysicalSizeXUnit", "\u00b5m")  # the OME schema's default
    if pixels.get("PhysicalSizeYUnit", unit) != unit:
        return None  # y and x in two units: not worth guessing
    return physical(y, x, unit)


def read_tiff_pixel_size(tif) -> PixelSize | None:
    """The pixel size of an open ``tifffile.TiffFile`` (module docstring), or None."""
    page = tif.pages.first
    if tif.is_imagej and (tif.imagej_metadata or {}).get("unit"):
        return _from_tags(page, tif.imagej_metadata["unit"])
    if tif.is_ome and (found := _from_ome(tif.ome_metadata)) is not None:
        return found
    unit = page.tags.get("ResolutionUnit")
    found = _from_tags(page, TIFF_UNITS.get(int(unit.value))) if unit is not None else None
    # centimeters are the TIFF tag's convention, not the microscope's: micrometers
    return None if found is None else physical(*found.micrometers(), "um")


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size of a TIFF file, or of a folder's first TIFF frame; None where the
    input has none (PNG, a plain TIFF) or cannot be read (its reader then says why)."""
    import tifffile

    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        path = frames[0] if frames else path
    if not path.is_file() or path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return read_tiff_pixel_size(tif)
    except Exception:  # a damaged file: the image reader refuses it with a message
        return None


def tiff_resolution(pixel_size: PixelSize | None) -> dict:
    """tifffile ``write`` arguments that store ``pixel_size`` (pixels per centimeter); none
    for an unknown size."""
    if pixel_size is None or not pixel_size.known:
        return {}
    y, x = pixel_size.micrometers()
    return {"resolution": (1e4 / x, 1e4 / y), "resolutionunit": "CENTIMETER"}


def mismatch_warning(
    where: str,
    found: PixelSize | None,
    trained: PixelSize | None,
    factor: float = MISMATCH_FACTOR,
) -> str | None:
    """One line when ``found`` and the training data's pixel size differ by more than
    ``factor`` along y or x; None when they agree or either is unknown."""
    if found is None or trained is None or not (found.known and trained.known):
        return None
    pairs = zip(found.micrometers(), trained.micrometers(), strict=True)
    ratios = [max(a / b, b / a) for a, b in pairs]
    if max(ratios) <= factor:
        return None
    return (
        f"warning: {where}: pixel size {found.text()} differs from the training data's "
        f"{trained.text()} by {max(ratios):.2g}x; the network sees objects at another scale "
        "-- resample the image or fine-tune"
    )


def record_pixel_size(checkpoint: dict, pixel_size: PixelSize | None) -> None:
    """Store the training data's pixel size in a checkpoint (None: unknown)."""
    known = pixel_size is not None and pixel_size.known
    checkpoint[KEY] = pixel_size.to_record() if known else None


def warn_mismatch(where: str, found: PixelSize | None, trained: PixelSize | None) -> None:
    """Print :func:`mismatch_warning`'s line, if any."""
    if (line := mismatch_warning(where, found, trained)) is not None:
        print(line)


def input_pixel_size(path: str | Path, override=None) -> PixelSize | None:
    """The pixel size of a prediction input: predict's ``pixel_size`` setting where given
    (:func:`pixel_size_setting`), else the one the input says (:func:`read_pixel_size`)."""
    return pixel_size_setting(override) or read_pixel_size(path)
