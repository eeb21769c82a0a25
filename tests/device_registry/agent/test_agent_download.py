"""Downloads resume with Range after a dropped connection, and only verified bytes are kept."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator

import pytest

from device_registry.agent.download import DownloadError, VerificationError, download

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    drop_first_at: int | None = None
    ranges: list[str | None]
    auth: list[str | None]
    body = PAYLOAD


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        srv.auth.append(self.headers.get("Authorization"))
        body = srv.body
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if srv.drop_first_at is not None:
            cut, srv.drop_first_at = srv.drop_first_at, None
            self.wfile.write(body[start:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges, srv.auth = [], []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/a"


def test_a_dropped_download_resumes_with_range_and_is_verified(server, tmp_path):
    server.drop_first_at = 1024 * 1024 + 7
    dest = tmp_path / "model.onnx"
    got = download(_url(server), dest, credential="cred", size=len(PAYLOAD), sha256=SHA)
    assert got.read_bytes() == PAYLOAD
    assert server.ranges == [None, f"bytes={1024 * 1024 + 7}-"]
    assert server.auth == ["Device cred", "Device cred"]
    assert not (tmp_path / "model.onnx.part").exists()


def test_a_part_left_by_a_killed_agent_is_resumed(server, tmp_path, caplog):
    (tmp_path / "m.onnx.part").write_bytes(PAYLOAD[:5000])
    with caplog.at_level("INFO", logger="edgeslim.agent.download"):
        download(_url(server), tmp_path / "m.onnx", credential="c", size=len(PAYLOAD), sha256=SHA)
    assert server.ranges == ["bytes=5000-"]
    assert (tmp_path / "m.onnx").read_bytes() == PAYLOAD
    assert f"resuming m.onnx.part from byte 5000 of {len(PAYLOAD)}" in caplog.messages


def test_tampered_bytes_are_refused_and_never_kept(server, tmp_path):
    server.body = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])
    with pytest.raises(VerificationError) as info:
        download(_url(server), tmp_path / "m.onnx", credential="c", size=len(PAYLOAD), sha256=SHA)
    assert info.value.reason == "hash_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_a_longer_file_is_refused_as_a_size_mismatch(server, tmp_path):
    server.body = PAYLOAD + b"extra"
    with pytest.raises(VerificationError) as info:
        download(_url(server), tmp_path / "m.onnx", credential="c", size=len(PAYLOAD), sha256=SHA)
    assert info.value.reason == "size_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError):
        download(
            "http://127.0.0.1:9/a", tmp_path / "m", credential="c", size=1, sha256=SHA, attempts=2
        )
