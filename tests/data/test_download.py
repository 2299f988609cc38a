"""unet.data.download against a local HTTP server (127.0.0.1 only) serving tiny synthetic files
in the layout of the real downloads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.data.ctc import read_annotated_frames
from unet.data.download import MANIFEST, DownloadError, download
from unet.data.isbi import read_isbi_training

TIMEOUT = 5.0
HELA = "DIC-C2DH-HeLa"


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; Range requests if ``server.ranges``; ``server.cut[name]``
    bytes only (fewer than the announced Content-Length)."""

    def do_GET(self):
        srv, name = self.server, self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        body = srv.files.get(name)
        if body is None:
            self.send_error(404)
            return
        asked, start = self.headers.get("Range"), 0
        if asked and srv.ranges:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start : srv.cut.get(name, len(body))])

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server():
    """A ThreadingHTTPServer on 127.0.0.1 (a free port), shut down at the end of the test."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.cut, srv.requests, srv.ranges = {}, {}, [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(TIMEOUT)


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def isbi_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    labels = np.where(rng.random((3, 32, 32)) < 0.7, 255, 0).astype(np.uint8)
    return {
        "train-volume.tif": tiff_bytes(volume, photometric="minisblack"),
        "train-labels.tif": tiff_bytes(labels, photometric="minisblack"),
        "test-volume.tif": tiff_bytes(volume[:2], photometric="minisblack"),
    }


def ctc_zip(extra: dict[str, bytes] | None = None) -> bytes:
    """A zip in the challenge's layout: HELA/01/t000.tif, HELA/01_GT/SEG/man_seg000.tif ..."""
    rng = np.random.default_rng(1)
    seg = np.zeros((32, 32), np.uint16)
    seg[4:14, 4:14], seg[18:28, 16:30] = 1, 2
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for seq in ("01", "02"):
            frame = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            zf.writestr(f"{HELA}/{seq}/t000.tif", tiff_bytes(frame, compression="zlib"))
            zf.writestr(f"{HELA}/{seq}/t001.tif", tiff_bytes(frame))
            zf.writestr(f"{HELA}/{seq}_GT/SEG/man_seg000.tif", tiff_bytes(seg))
            zf.writestr(f"{HELA}/{seq}_GT/TRA/man_track000.tif", tiff_bytes(seg))
            zf.writestr(f"{HELA}/{seq}_GT/TRA/man_track.txt", b"1 0 1 0\n2 0 1 0\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def fails(dataset: str, to: Path, url: str, **kwargs) -> str:
    """The message of the DownloadError that ``download`` raises; it must be one line."""
    with pytest.raises(DownloadError) as err:
        download(dataset, to, url, timeout=TIMEOUT, out=io.StringIO(), interval=0, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_isbi_download_opens_with_the_reader_and_records_checksums(server, tmp_path):
    server.files = isbi_files()
    out = io.StringIO()
    folder = download("isbi", tmp_path, server.url, timeout=TIMEOUT, out=out, interval=0)
    assert folder == tmp_path / "isbi2012"
    volume, classes = read_isbi_training(tmp_path)
    assert volume.shape == classes.shape == (3, 32, 32)
    assert sorted(leftovers(tmp_path)) == sorted(f"isbi2012/{n}" for n in [*server.files, MANIFEST])
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, data in server.files.items():
        entry = manifest["downloads"][name]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data) and entry["checked_against"] == "nothing"
        assert entry["sha256"] in out.getvalue()  # printed for the user to compare
    text = out.getvalue()
    assert "MB/s" in text and "\x1b" not in text and "\r" not in text  # not a tty: plain lines


def test_ctc_download_unpacks_the_layout_the_reader_opens_and_a_second_run_skips(server, tmp_path):
    archive = ctc_zip()
    server.files = {f"{HELA}.zip": archive}
    folder = download("hela", tmp_path, server.url, timeout=TIMEOUT, out=io.StringIO())
    frames = read_annotated_frames(tmp_path, HELA, ["01", "02"])
    assert [f.id for f in frames] == ["01/000", "02/000"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        expected = sorted(n.removeprefix(f"{HELA}/") for n in zf.namelist())
    assert leftovers(folder) == sorted([*expected, MANIFEST])
    assert leftovers(tmp_path) == [f"{HELA}/{n}" for n in leftovers(folder)]  # zip removed
    requests, out = len(server.requests), io.StringIO()
    assert download("hela", tmp_path, server.url, timeout=TIMEOUT, out=out) == folder
    assert len(server.requests) == requests  # nothing fetched again
    assert out.getvalue().count("\n") == 1 and "skipping" in out.getvalue()


def test_truncated_transfer_leaves_only_the_partial_file_and_resumes_with_range(server, tmp_path):
    archive = ctc_zip()
    server.files, server.cut = {f"{HELA}.zip": archive}, {f"{HELA}.zip": len(archive) // 3}
    message = fails("hela", tmp_path, server.url)
    assert "truncated" in message and f"of {len(archive)} bytes" in message
    partial = f"{HELA}.partial/{HELA}.zip.partial"
    assert leftovers(tmp_path) == [partial]  # nothing a reader opens
    assert not (tmp_path / HELA).exists()
    server.cut = {}
    download("hela", tmp_path, server.url, timeout=TIMEOUT, out=io.StringIO())
    assert server.requests[-1] == (f"{HELA}.zip", f"bytes={len(archive) // 3}-")
    entry = json.loads((tmp_path / HELA / MANIFEST).read_text())["downloads"][f"{HELA}.zip"]
    assert entry["sha256"] == hashlib.sha256(archive).hexdigest()
    assert len(read_annotated_frames(tmp_path, HELA, ["01", "02"])) == 2


def test_a_server_without_range_support_restarts_the_partial_download(server, tmp_path):
    server.files, server.ranges = isbi_files(), False
    staging = tmp_path / "isbi2012.partial"
    staging.mkdir()
    (staging / "train-volume.tif.partial").write_bytes(b"stale bytes of another file")
    download("isbi", tmp_path, server.url, timeout=TIMEOUT, out=io.StringIO(), interval=0)
    written = (tmp_path / "isbi2012" / "train-volume.tif").read_bytes()
    assert written == server.files["train-volume.tif"]


def test_cut_zip_with_a_matching_length_leaves_nothing(server, tmp_path):
    archive = ctc_zip()
    server.files = {f"{HELA}.zip": archive[: len(archive) // 2]}
    assert "not a complete zip archive" in fails("hela", tmp_path, server.url)
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["--sha256", "server"])
def test_wrong_checksum_leaves_nothing(server, tmp_path, where):
    archive, wrong = ctc_zip(), "0" * 64
    server.files = {f"{HELA}.zip": archive}
    if where == "server":
        server.files[f"{HELA}.zip.sha256"] = f"{wrong}  {HELA}.zip\n".encode()
    message = fails("hela", tmp_path, server.url, sha256=[wrong] if where == "--sha256" else [])
    assert hashlib.sha256(archive).hexdigest() in message and wrong in message
    assert list(tmp_path.iterdir()) == []


def test_checksum_from_the_server_is_checked_and_recorded(server, tmp_path):
    archive = ctc_zip()
    digest = hashlib.sha256(archive).hexdigest()
    server.files = {f"{HELA}.zip": archive, f"{HELA}.zip.sha256": f"{digest}  x.zip\n".encode()}
    download("hela", tmp_path, server.url, timeout=TIMEOUT, out=io.StringIO())
    entry = json.loads((tmp_path / HELA / MANIFEST).read_text())["downloads"][f"{HELA}.zip"]
    assert entry["checked_against"] == f"{server.url}/{HELA}.zip.sha256"


@pytest.mark.parametrize("member", ["../evil.tif", f"{HELA}/../../evil.tif", "/tmp/evil.tif"])
def test_zip_slip_member_is_refused_before_anything_is_written(server, tmp_path, member):
    server.files = {f"{HELA}.zip": ctc_zip({member: b"not data"})}
    to = tmp_path / "data"
    message = fails("hela", to, server.url)
    assert "outside the dataset folder" in message and member in message
    assert leftovers(tmp_path) == []  # no evil.tif anywhere, no partly unpacked dataset


def test_http_404_and_an_unreachable_server_are_one_line_and_leave_nothing(server, tmp_path):
    assert "HTTP 404" in fails("u373", tmp_path, server.url)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert "cannot reach" in fails("isbi", tmp_path, closed)
    assert list(tmp_path.iterdir()) == []


def test_existing_folders_that_this_command_did_not_finish_are_not_taken(server, tmp_path):
    (tmp_path / HELA).mkdir()
    assert "has no .download.json" in fails("hela", tmp_path, server.url)
    server.files = {f"{HELA}.zip": ctc_zip()}
    other = tmp_path / "other"
    download("hela", other, server.url, timeout=TIMEOUT, out=io.StringIO())
    (other / HELA / "01" / "t001.tif").unlink()
    assert "missing or changed" in fails("hela", other, server.url)


def test_checksum_without_a_file_name_is_refused_for_a_dataset_of_several_files(tmp_path):
    assert "NAME=HEX" in fails("isbi", tmp_path, "http://127.0.0.1:9", sha256=["a" * 64])
    assert "unknown dataset 'mnist'" in fails("mnist", tmp_path, "http://127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


def test_command_line_reads_the_mirror_from_the_environment_and_exits_2(
    server, tmp_path, repo_root
):
    env = {**os.environ, "PYTHONPATH": str(repo_root / "src"), "UNET_CTC_BASE_URL": server.url}
    command = [sys.executable, "-m", "unet.data.download", "hela", "--to", str(tmp_path)]
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and server.requests[-1][0] == f"{HELA}.zip"
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    assert "HTTP 404" in failed.stderr
    server.files = {f"{HELA}.zip": ctc_zip()}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / HELA / "01_GT" / "SEG" / "man_seg000.tif").is_file()


def test_an_archive_finished_by_an_earlier_run_is_unpacked_without_fetching_it(server, tmp_path):
    archive = ctc_zip()
    staging = tmp_path / f"{HELA}.partial"
    staging.mkdir()
    (staging / f"{HELA}.zip").write_bytes(archive)  # the run stopped while unpacking
    download("hela", tmp_path, server.url, timeout=TIMEOUT, out=io.StringIO())
    assert (f"{HELA}.zip", None) not in server.requests  # the server does not even have it
    assert len(read_annotated_frames(tmp_path, HELA, ["01", "02"])) == 2
    assert not staging.exists()
