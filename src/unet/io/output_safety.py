"""Outputs that never destroy inputs, and write faults that end in one line.

What every route that deletes or writes an output (predict's folder, ``.zarr`` and ranks
routes, export, eval) checks first:

- :func:`check_apart`: the output is not an input, does not lie inside one and does not
  contain one (paths resolved, symlinks followed), so ``overwrite=true`` can never delete
  what it reads.
- :func:`check_replaceable`: ``overwrite=true`` replaces only what unet wrote: a folder
  holding the :data:`MARKER` file (written when it is created), a ``.zarr`` store with
  unet's ``unet`` attributes (its marker: zarr warns about foreign files in a store), a
  folder of an older version holding only the files unet writes (:func:`is_ours`), or an
  exported model carrying unet's record.
- :func:`output_lock`: one writer per output at a time (a lock file beside it, made with
  ``O_EXCL``, naming pid and host); a lock left by a dead process on this host is taken over.
- :func:`check_free_space` and :func:`write_faults`: a full disk, a read-only or forbidden
  location is one line naming the path (``OutputWriteError``), not a traceback.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import socket
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unet.errors import UserError

MARKER = ".unet-output"  # inside every folder or store unet writes: tool, version, time
# the files of a folder output (unet.predict.files); a folder of these alone, from a version
# that wrote no marker, is recognised as ours
FOLDER_ENTRIES = {"probabilities.tif", "labels", "overlays", "classes", "contact_sheet.png"}
EXPORT_SUFFIXES = (".zip", ".onnx", ".pt")
FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_held: dict[Path, int] = {}  # locks this process holds, with their nesting depth


class UnsafeOutputError(UserError, ValueError):
    """An output that would overlap an input, or replace something unet did not write."""


class OutputBusyError(UserError):
    """An output another run is writing now."""


class OutputWriteError(UserError):
    """An output that cannot be written: disk full, read-only, no permission."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def check_apart(
    output: str | os.PathLike,
    *,
    contains: bool = True,
    key: str = "output",
    **inputs: str | os.PathLike | None,
) -> None:
    """Refuse an ``output`` that is, lies inside, or (if ``contains``) contains one of
    ``inputs`` (given as ``name=path``; None is skipped), comparing resolved paths.
    ``contains=False`` for an output folder that only receives new files (eval's); ``key``
    is the setting that names the output."""
    out = _resolved(output)
    for name, given in inputs.items():
        if given is None:
            continue
        path = _resolved(given)
        if out == path:
            how = "is"
        elif out.is_relative_to(path):
            how = "lies inside"
        elif contains and path.is_relative_to(out):
            how = "contains"
        else:
            continue
        raise UnsafeOutputError(
            f"{key}={output} {how} the {name} {given} ("
            + (f"both are {out}" if how == "is" else f"resolved: {out} and {path}")
            + f"); writing it could destroy the {name}: choose an output apart from it"
        )


def write_marker(folder: str | os.PathLike, tool: str) -> None:
    """Mark ``folder`` as written by unet's ``tool`` (``predict``, ...)."""
    record = {"tool": tool, "version": _version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (Path(folder) / MARKER).write_text(json.dumps(record) + "\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unet")
    except PackageNotFoundError:
        return "unknown"


def is_ours(path: str | os.PathLike) -> bool:
    """Whether unet wrote ``path``: a folder or store with the marker; one of an older
    version (a folder of :data:`FOLDER_ENTRIES` only, a store with ``unet`` attributes);
    an exported model carrying unet's record."""
    path = Path(path)
    if path.is_file():
        return _our_export(path)
    if not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    # an older version's output, or the staged <output>.partial folder a kill left (with a
    # hidden temporary probabilities file and the ranks' scratch pages)
    entries = {p.name for p in path.iterdir()}
    entries -= {n for n in entries if n.startswith(".") and n.endswith((".partial", ".pages"))}
    staged = path.name.endswith(".partial")
    if entries <= FOLDER_ENTRIES and ("probabilities.tif" in entries or staged):
        return True
    try:
        return "unet" in json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def _our_export(path: Path) -> bool:
    """A bioimage.io zip or TorchScript file (zip archives) or an ONNX file with unet's
    record (``net_config``) in it."""
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        return False
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(("extra/unet.json", "rdf.yaml")):
                        return b"net_config" in archive.read(name)
            return False
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(b'"net_config"') >= 0
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace an existing ``path`` that unet did not write (:func:`is_ours`);
    an empty folder holds nothing to lose."""
    path = Path(path)
    empty = path.is_dir() and next(path.iterdir(), None) is None
    if path.exists() and not empty and not is_ours(path):
        raise UnsafeOutputError(
            f"{path} exists and was not written by unet (no {MARKER} marker); choose a new "
            "output or delete it yourself"
        )


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``: ``.<name>.unet-lock`` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name.rstrip('/')}.unet-lock")


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``output`` while the block writes it; an OutputBusyError if another
    live run holds it. Re-entrant within one process (ranks' rank 0 locks once)."""
    lock = _resolved(lock_path(output))
    if lock in _held:
        _held[lock] += 1
    else:
        with write_faults(lock):
            lock.parent.mkdir(parents=True, exist_ok=True)
            _acquire(lock, output)
        _held[lock] = 1
    try:
        yield lock
    finally:
        _held[lock] -= 1
        if not _held[lock]:
            del _held[lock]
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, output) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if not _stale(holder):
                raise OutputBusyError(_busy_message(output, lock, holder)) from None
            print(
                f"warning: taking over the lock {lock} of a finished process (pid "
                f"{holder.get('pid')}, {holder.get('host')})",
                file=sys.stderr,
            )
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise OutputBusyError(_busy_message(output, lock, _holder(lock)))


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):  # being written this instant, or damaged
        return {}


def _stale(holder: dict) -> bool:
    """Whether ``holder`` is a process of this host that no longer runs."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _busy_message(output, lock: Path, holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime(" since %H:%M:%S", time.localtime(since)) if since else ""
    return (
        f"output={output} is being written by another unet run (pid {holder.get('pid', '?')} "
        f"on {holder.get('host', '?')}{when}); wait for it to finish or choose another output "
        f"(if that run is gone, delete {lock})"
    )


def check_free_space(output: str | os.PathLike, need_bytes: int, what: str) -> None:
    """An OutputWriteError if the disk of ``output`` has less than ``need_bytes`` free
    (plus 5% and 16 MiB for the small files beside ``what``)."""
    existing = next(p for p in (_resolved(output), *_resolved(output).parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < need_bytes * 1.05 + 2**24:
        raise OutputWriteError(
            f"output={output}: {what} needs about {need_bytes / 2**20:.1f} MiB, only "
            f"{free / 2**20:.1f} MiB are free on that disk; free space or choose another output"
        )


def fault_message(path, err: OSError) -> str | None:
    """One line for a write fault of the environment (:data:`FAULTS`), None for others."""
    reason = FAULTS.get(err.errno)
    if reason is None:
        return None
    where = err.filename or path
    return (
        f"{where}: cannot write the output of {path} ({reason}); nothing partial is left and "
        "an earlier output is kept; free space or choose a writable output"
    )


@contextmanager
def write_faults(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write fault of the environment inside the block into an OutputWriteError
    naming ``path``; the block's own cleanup (staged folders, temporary files) has run."""
    try:
        yield
    except OSError as err:
        message = fault_message(path, err)
        if message is None:
            raise
        raise OutputWriteError(message) from None
