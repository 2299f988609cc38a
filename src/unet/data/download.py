"""Download a benchmark dataset into the layout the readers open: ``python3 -m unet.data.download``.

    python3 -m unet.data.download isbi --to data    # -> data/isbi2012/train-volume.tif ...
    python3 -m unet.data.download hela --to data    # -> data/DIC-C2DH-HeLa/01/t000.tif ...
    python3 -m unet.data.download u373 --to data    # -> data/PhC-C2DH-U373/01_GT/SEG/...

Sources: ISBI 2012 (Cardona et al. 2010; Arganda-Carreras et al. 2015): ``train-volume.tif``,
``train-labels.tif`` and ``test-volume.tif`` from the challenge's download folder, the
best-known public location (the challenge site asks for a registration and parts of it are
gone, so a mirror may be needed). Cell Tracking Challenge (Maška et al. 2014; Ulman et al.
2017): the training sets ``DIC-C2DH-HeLa.zip`` and ``PhC-C2DH-U373.zip``; their use outside
the challenge needs the data providers' permission. ``--base-url`` or the environment
variables ``UNET_ISBI_BASE_URL`` / ``UNET_CTC_BASE_URL`` point at a mirror instead.

Checksums, plainly: this project could not download the official files when this module was
written, so it knows no checksum of them and invents none (:data:`KNOWN_SHA256` is empty
until someone verifies one). A download is checked against, in this order, a SHA-256 the
user passes (``--sha256``), a row of :data:`KNOWN_SHA256`, or a ``<file>.sha256`` the server
provides. When none exists the file is NOT verified: its computed SHA-256 is printed and
recorded in ``<dataset>/.download.json`` so that a user can compare it with a trusted one.

Resumable and atomic: all is written in ``<to>/<dataset>.partial/`` (a file as ``<file>.partial``
while it downloads, resumed by HTTP Range requests where the server allows them), checked,
unpacked there, then renamed to ``<to>/<dataset>/``. A failed run leaves at most that
``.partial`` folder, which no reader opens. A dataset folder whose manifest lists files that
are all present is skipped. Nothing here runs at training time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from unet.errors import UserError
from unet.io.checksum import sha256_of

MANIFEST = ".download.json"
PARTIAL = ".partial"
CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """One dataset: where it comes from and the folder the readers open."""

    folder: str  # <to>/<folder>/ is what the readers open
    files: tuple[str, ...]  # downloaded from <base_url>/<file>
    base_url: str
    env: str  # environment variable that overrides base_url
    needed: tuple[str, ...]  # paths (relative to folder) that must exist after unpacking


_ISBI_URL = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files"
_ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")
_CTC_URL = "https://data.celltrackingchallenge.net/training-datasets"
_CTC_NEEDED = ("01", "01_GT/SEG", "02", "02_GT/SEG")
SOURCES = {
    "isbi": Source("isbi2012", _ISBI_FILES, _ISBI_URL, "UNET_ISBI_BASE_URL", _ISBI_FILES),
    "hela": Source(
        "DIC-C2DH-HeLa", ("DIC-C2DH-HeLa.zip",), _CTC_URL, "UNET_CTC_BASE_URL", _CTC_NEEDED
    ),
    "u373": Source(
        "PhC-C2DH-U373", ("PhC-C2DH-U373.zip",), _CTC_URL, "UNET_CTC_BASE_URL", _CTC_NEEDED
    ),
}
# file name -> (size in bytes, SHA-256) of the official downloads, only once verified
# independently; empty because none could be downloaded here (see the module docstring).
KNOWN_SHA256: dict[str, tuple[int, str]] = {}


class DownloadError(UserError):
    """A download that could not be completed: unreachable, missing, cut short or wrong."""


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Transfer:
    """Request ``timeout`` (s), progress to ``out`` every ``interval`` s, ``--sha256`` by file."""

    timeout: float
    out: TextIO
    interval: float
    given: dict[str, str]


class Progress:
    """Progress lines (bytes, rate) at most every ``interval`` s; ``\\r`` only on a tty."""

    def __init__(self, name: str, total: int | None, done: int, t: Transfer):
        self.name, self.total, self.done, self.first, self.t = name, total, done, done, t
        self.start = self.last = time.monotonic()

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now, tty = time.monotonic(), self.t.out.isatty()
        if not final and now - self.last < self.t.interval:
            return
        self.last = now
        rate = (self.done - self.first) / max(now - self.start, 1e-6) / 1e6
        of = f" of {self.total / 1e6:.1f}" if self.total else ""
        line = f"{self.name}: {self.done / 1e6:.1f}{of} MB, {rate:.1f} MB/s"
        end = "\n" if final or not tty else ""
        print(("\r" if tty else "") + line, end=end, file=self.t.out, flush=True)


def _open(url: str, timeout: float, start: int = 0):
    """The response for ``url`` (from byte ``start``); one-line errors for what goes wrong."""
    request = urllib.request.Request(url, headers={"User-Agent": "unet-download"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the partial file is not a prefix we can extend
            return None
        raise DownloadError(
            f"{url}: the server answered HTTP {err.code} {err.reason}; expected the file. "
            "The source may have moved: pass --base-url with a mirror"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot reach {url}: {reason}; check the connection or pass --base-url with a mirror"
        ) from None


def _copy(response, target: Path, mode: str, progress: Progress, url: str) -> None:
    with open(target, mode) as f:
        try:
            while block := response.read(CHUNK):
                f.write(block)
                progress.update(len(block))
        except OSError as err:  # connection reset or timed out mid-file: keep it for resuming
            raise DownloadError(
                f"{url}: the transfer broke off after {progress.done} bytes ({err}); "
                f"{target} was kept: run the command again to resume"
            ) from None
    progress.update(0, final=True)


def fetch(url: str, target: Path, t: Transfer) -> None:
    """Download ``url`` into ``target`` (``<file>.partial``), resuming what it already holds;
    raises :class:`DownloadError` if fewer bytes arrive than the server announced."""
    start = target.stat().st_size if target.exists() else 0
    response = _open(url, t.timeout, start)
    if response is None:  # 416: start over
        target.unlink()
        start, response = 0, _open(url, t.timeout)
    with response:
        resumed = start > 0 and response.status == 206
        if start and not resumed:
            print(f"{target.name}: the server cannot resume; starting over", file=t.out)
        first = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = first + int(length) if length is not None else None
        progress = Progress(target.name.removesuffix(PARTIAL), total, first, t)
        _copy(response, target, "ab" if resumed else "wb", progress, url)
    size = target.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{url}: truncated: received {size} of {total} bytes (Content-Length); "
            f"{target} was kept: run the command again to resume"
        )


def expected_sha256(name: str, url: str, t: Transfer) -> tuple[str | None, str]:
    """The SHA-256 ``name`` must have and where it comes from (None, "nothing" if unknown)."""
    if name in t.given:
        return t.given[name], "--sha256"
    if name in KNOWN_SHA256:
        return KNOWN_SHA256[name][1], "the table of known checksums"
    try:
        with urllib.request.urlopen(url + ".sha256", timeout=t.timeout) as response:
            text = response.read(4096).decode("ascii", "replace")
    except urllib.error.HTTPError:  # most servers provide none
        return None, "nothing"
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot reach {url}.sha256: {getattr(err, 'reason', err)}") from None
    value = (text.split() or [""])[0].lower()
    if not _is_sha256(value):  # some sites answer a missing file with an HTML page
        print(f"{url}.sha256: not a SHA-256 ({text[:30]!r}); ignoring it", file=t.out)
        return None, "nothing"
    return value, f"{url}.sha256"


def download_file(name: str, url: str, staging: Path, t: Transfer) -> dict:
    """Download, check and rename one file into ``staging``; returns its manifest entry."""
    final, partial = staging / name, staging / (name + PARTIAL)
    expected, origin = expected_sha256(name, url, t)
    path = final if final.exists() else partial  # final: an earlier run got it, then stopped
    if path == partial:
        fetch(url, partial, t)
    digest = sha256_of(path)
    if expected is not None and digest != expected:
        path.unlink()
        raise DownloadError(
            f"{url}: SHA-256 {digest} does not match {expected} from {origin}; the download "
            "was deleted. Run again, or check the checksum and the source"
        )
    os.replace(path, final)
    if expected is None:
        print(f"{name}: SHA-256 {digest} (not verified: compare it with a trusted one)", file=t.out)
    return {"url": url, "size": final.stat().st_size, "sha256": digest, "checked_against": origin}


def member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path of a zip member; absolute paths and ``..`` are refused (zip-slip)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(
            f"{archive.name}: member {name!r} would be written outside the dataset folder "
            "(absolute path or '..'); refusing to unpack this archive. Check the source"
        )
    return path


def unpack(archive: Path, folder: str, staging: Path) -> None:
    """Unpack ``archive`` into ``staging`` without its top folder ``folder/`` if it has one;
    every member name is checked before anything is written."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(i, member_path(i.filename, archive)) for i in zf.infolist()]
            members = [(i, p) for i, p in members if not i.is_dir() and p.parts]
            # the CTC zips hold DIC-C2DH-HeLa/01/...; the readers want <to>/DIC-C2DH-HeLa/01/...
            strip = all(p.parts[0] == folder and len(p.parts) > 1 for _, p in members)
            for info, path in members:
                target = staging.joinpath(*(path.parts[1:] if strip else path.parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)  # zipfile checks each member's CRC
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DownloadError(
            f"{archive.name}: not a complete zip archive ({err}); it was deleted: run the "
            "command again to download it anew"
        ) from None


def require_layout(staging: Path, source: Source) -> None:
    """Raise unless every path the readers need is in ``staging``."""
    missing = [p for p in source.needed if not (staging / p).exists()]
    if missing:
        found = sorted(p.name for p in staging.iterdir())[:12]
        raise DownloadError(
            f"{', '.join(source.files)}: not the {source.folder} layout the readers open: "
            f"{missing[0]} is missing (expected {', '.join(source.needed)}); found {found}. "
            "Check --base-url"
        )


def listed_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``folder``, the manifest left out."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def check_complete(final: Path) -> int:
    """The number of files of a finished dataset folder; raises if it is not complete."""
    manifest = final / MANIFEST
    if not manifest.is_file():
        raise DownloadError(
            f"{final} exists but has no {MANIFEST}, so this command did not make it; move it "
            "away or choose another --to to download a fresh copy"
        )
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"{manifest}: unreadable; delete {final} to download again") from None
    present = listed_files(final)
    wrong = [rel for rel, size in files.items() if present.get(rel) != size]
    if wrong or not files:
        raise DownloadError(
            f"{final}: {len(wrong)} of {len(files)} files listed in {MANIFEST} are missing or "
            f"changed (first: {wrong[:1]}); delete {final} to download it again"
        )
    return len(files)


def parse_checksums(values: list[str], dataset: str) -> dict[str, str]:
    """``--sha256`` values (``HEX`` for a one-file dataset, else ``NAME=HEX``) by file name."""
    if dataset not in SOURCES:
        raise DownloadError(f"unknown dataset {dataset!r}; expected one of {sorted(SOURCES)}")
    files, given = SOURCES[dataset].files, {}
    for value in values:
        name, sep, digest = value.rpartition("=")
        name = name if sep else files[0]
        if (not sep and len(files) > 1) or name not in files or not _is_sha256(digest.lower()):
            raise DownloadError(
                f"--sha256 {value}: expected NAME=HEX with NAME one of {', '.join(files)} and "
                "HEX 64 hex digits (plain HEX only for a dataset of one file)"
            )
        given[name] = digest.lower()
    return given


def download(
    dataset: str,
    to: str | os.PathLike,
    base_url: str | None = None,
    sha256: list[str] | None = None,
    timeout: float = 30.0,
    out: TextIO = sys.stdout,
    interval: float | None = None,
) -> Path:
    """Download ``dataset`` ("isbi", "hela", "u373") into ``<to>/<folder>``; returns the folder.

    Args:
        dataset: which benchmark.
        to: the data folder (what ``$UNET_DATA_DIR`` points at).
        base_url: a mirror (default: ``$UNET_ISBI_BASE_URL``/``$UNET_CTC_BASE_URL`` or source).
        sha256: ``--sha256`` values the downloads must match.
        timeout: seconds any one request may wait for the server.
        out: where progress lines go.
        interval: seconds between progress lines (default 0.5 on a terminal, else 5).
    """
    given, source = parse_checksums(sha256 or [], dataset), SOURCES[dataset]
    base = (base_url or os.environ.get(source.env) or source.base_url).rstrip("/")
    interval = (0.5 if out.isatty() else 5.0) if interval is None else interval
    final = Path(to) / source.folder
    if final.exists():
        count = check_complete(final)
        print(f"{final}: already downloaded ({count} files as in {MANIFEST}); skipping", file=out)
        return final
    staging = final.with_name(source.folder + PARTIAL)
    staging.mkdir(parents=True, exist_ok=True)
    t = Transfer(timeout, out, interval, given)
    try:
        entries = {name: download_file(name, f"{base}/{name}", staging, t) for name in source.files}
        unpack_all(staging, source)
    finally:
        if staging.exists() and not any(staging.iterdir()):
            staging.rmdir()  # a failed first request leaves nothing behind
    files = listed_files(staging)
    manifest = {"dataset": dataset, "folder": source.folder, "downloads": entries, "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, final)
    print(f"{final}: {len(files)} files ready (manifest {MANIFEST})", file=out)
    return final


def unpack_all(staging: Path, source: Source) -> None:
    """Unpack the downloaded archives in ``staging`` and check the layout; a bad archive
    leaves nothing behind."""
    try:
        for name in source.files:
            if name.endswith(".zip"):
                unpack(staging / name, source.folder, staging)
                (staging / name).unlink()
        require_layout(staging, source)
    except DownloadError:  # nothing in staging is worth keeping
        shutil.rmtree(staging)
        raise


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python3 -m unet.data.download isbi|hela|u373 --to DIR``."""
    parser = argparse.ArgumentParser(
        prog="python3 -m unet.data.download",
        description="Download a benchmark dataset into the layout the readers open.",
    )
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--to", required=True, help="data folder (what $UNET_DATA_DIR names)")
    parser.add_argument("--base-url", help="a mirror to download from instead")
    parser.add_argument("--sha256", action="append", default=[], help="HEX or NAME=HEX")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    # one line and exit code 2, as the Hydra entry points (unet.config.cli); the data layer does
    # not import the command-line layer
    try:
        download(args.dataset, args.to, args.base_url, args.sha256, args.timeout)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
