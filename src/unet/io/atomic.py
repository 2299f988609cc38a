"""Atomic outputs: a file or folder appears under its name only once it is complete.

Everything is first written under a temporary name beside its destination (same folder,
so the final rename never crosses file systems) and renamed when the writing code
finished without an error. An interrupted program (an exception, Ctrl-C, a kill) leaves at
most a ``*.partial`` file or folder, which no reader mistakes for a result.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unet.errors import OutputExistsError

PARTIAL = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before it is complete: ``<name>.partial`` beside it."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL)


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden name beside ``path`` for writing it: ``.<name>.<pid>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{PARTIAL}")


@contextmanager
def atomic_file(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block ends normally.

    Args:
        path: the final file.
        replace: replace an existing ``path``; if False an existing file raises
            ``FileExistsError`` and is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: never replaces a file written meanwhile
            tmp.unlink()
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, replace) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


class StagedFolder:
    """A folder filled under a temporary name that becomes ``final`` when complete.

    The folder is created as ``<final>.partial`` (``path``) and renamed to ``final`` when
    the ``with`` block ends normally (or :meth:`commit` is called). With ``replace`` an
    existing ``final`` is swapped out only then and deleted, so an interrupted run keeps
    the earlier output whole and a finished one leaves no stale file of it. After an
    exception the partial folder is deleted; after a kill it stays behind, and
    :func:`unet.predict.files.prepare_output` refuses to start over it unless asked to.

    Args:
        final: the folder to produce.
        replace: replace an existing ``final`` (and a leftover partial folder).
    """

    def __init__(self, final: str | os.PathLike, replace: bool = False):
        self.final, self.replace = Path(final), replace
        self.path = partial_path(self.final)
        if self.path.exists():
            if not replace:
                raise FileExistsError(f"{self.path} exists; not replacing it")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def commit(self) -> Path:
        """Give the filled folder its final name; returns it."""
        if self.final.exists():
            if not self.replace:
                raise FileExistsError(f"{self.final} appeared while it was being written")
            old = self.final.with_name(f".{self.final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.final, old)
            try:
                os.replace(self.path, self.final)
            except BaseException:  # the earlier output goes back under its name
                os.replace(old, self.final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        return self.final

    def abort(self) -> None:
        """Delete the partial folder."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # a full or read-only disk at the rename: nothing partial
                self.abort()
                raise
        else:
            self.abort()


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON to a new file, atomically; an existing file is never replaced
    (:class:`unet.errors.OutputExistsError`)."""
    path = Path(path)
    if path.exists():
        raise OutputExistsError(f"{path} already exists; not overwriting it")
    try:
        write_text(path, json.dumps(data, indent=2) + "\n", replace=False)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists; not overwriting it") from None
