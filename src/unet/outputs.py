"""Writing run outputs (metrics) without ever replacing an existing file."""

from __future__ import annotations

import json
from pathlib import Path

from unet.errors import OutputExistsError


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to a new file; an existing file is never overwritten."""
    if path.exists():
        raise OutputExistsError(f"{path} already exists; not overwriting it")
    with open(path, "x") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
