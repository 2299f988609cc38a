"""Checkpoints written atomically beside their final name.

Lightning writes a checkpoint to a temporary file from ``tempfile.mkstemp()`` (the system
temp folder) and moves it into place. When that folder is on another file system than the
run folder (a node's local /tmp and a shared cluster disk), the move is a copy into the
final name, and a job killed during the copy leaves a truncated ``last.ckpt`` in place of
the good one. Here the temporary file is made in the checkpoint's own folder, so the final
step is always a rename.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from unet.io.atomic import atomic_file
from unet.io.output_safety import write_faults


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` for local paths with a same-folder rename at the end;
    remote URLs (``s3://`` ...) are left to Lightning."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        # serialised in memory first: torch.save reports a full disk as a RuntimeError,
        # a plain write as the OSError (ENOSPC) that becomes one line
        data = io.BytesIO()
        torch.save(checkpoint, data)
        with write_faults(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp, open(tmp, "wb") as f:
                f.write(data.getbuffer())
                f.flush()
                os.fsync(f.fileno())
