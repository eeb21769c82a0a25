"""Downloads resume with Range after a dropped connection, and only verified bytes are kept."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator

import pytest

from edgeslim_agent.download import (
    DownloadError,
    UnsafeURLError,
    VerificationError,
    download,
    server_url,
)

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    drop_first_at: int | None = None
    redirect_to: str | None = None
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
        if srv.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", srv.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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


@pytest.fixture
def elsewhere() -> Iterator[_Server]:
    """Another origin: it must never see the device's credential."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges, srv.auth = [], []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    "path",
    [
        "@otherhost/api/v1/agent/artifacts/1",
        "@127.0.0.1:9/x",
        "//otherhost/a",
        "/api//v1",
        "https://otherhost/a",
        "http://127.0.0.1:9/a",
        "/api/v1/agent/artifacts/../../admin",
        "/./a",
        "/a%2e%2e/b",
        "/a?x=1",
        "/a#frag",
        "/a\\b",
        "api/v1/agent/artifacts/1",
        "",
        "/a/@b",
        "/a:80",
    ],
)
def test_only_plain_server_relative_paths_are_accepted(path):
    with pytest.raises(UnsafeURLError):
        server_url("https://studio.example:8443", path)


def test_a_plain_path_joins_the_server_and_keeps_its_origin():
    base = "https://studio.example:8443"
    assert (
        server_url(base, "/api/v1/agent/artifacts/7/eval")
        == base + "/api/v1/agent/artifacts/7/eval"
    )
    assert server_url(base + "/edgeslim/", "/a") == base + "/edgeslim/a"


def test_a_redirect_is_refused_and_the_credential_never_reaches_the_other_origin(
    server, elsewhere, tmp_path
):
    other = f"http://127.0.0.1:{elsewhere.server_address[1]}/a"
    server.redirect_to = other
    with pytest.raises(UnsafeURLError, match="redirect"):
        download(_url(server), tmp_path / "m.onnx", credential="secret", size=1, sha256=SHA)
    assert server.auth == ["Device secret"]  # one try: a refused redirect is not retried
    assert elsewhere.auth == []  # the other origin got no request at all
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("hostile", ["@{other}/a", "http://{other}/a", "//{other}/a"])
def test_the_agent_fails_a_deployment_whose_artifact_url_leaves_the_server(
    server, elsewhere, tmp_path, hostile
):
    """A signed manifest with a hostile ``artifact_url`` fails as download_failed, and neither
    the server nor the other origin gets a request (so no credential goes anywhere)."""
    import asyncio
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeslim_agent.config import AgentConfig
    from edgeslim_agent.connection import Agent
    from edgeslim_agent.protocol import BenchSettings, Deploy, Manifest
    from edgeslim_agent.trust import key_id

    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = base64.b64encode(raw).decode()
    manifest = Manifest(
        deployment_id=1, artifact_id=1, name="m.onnx", sha256=SHA, size=len(PAYLOAD),
        issued_at=1, key_id=key_id(public),
    )  # fmt: skip
    other = f"127.0.0.1:{elsewhere.server_address[1]}"
    deploy = Deploy(
        manifest=manifest,
        signature=base64.b64encode(key.sign(manifest.signing_bytes())).decode(),
        artifact_url=hostile.format(other=other),
        eval_url=None,
        settings=BenchSettings(),
    )
    config = AgentConfig(
        server=f"http://127.0.0.1:{server.server_address[1]}", device_id=1, device_name="d",
        credential="secret", server_public_key=public,
    )  # fmt: skip
    agent = Agent(config, tmp_path / "state")

    async def run() -> None:
        agent._loop = asyncio.get_running_loop()
        await asyncio.to_thread(agent.execute, deploy)

    asyncio.run(run())
    (result,) = agent.outbox.pending()
    assert result.kind == "failed" and result.data["reason"] == "download_failed"
    assert "refusing the download path" in result.data["detail"]
    assert server.auth == [] and elsewhere.auth == []
