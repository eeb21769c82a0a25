"""The agent refuses plain http unless told, and checks the pinned certificate before it sends
a single byte: a TLS server records what it received."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_registry.server_tls import ensure_certificate, fingerprint_of_pem
from edgeslim_agent import cli
from edgeslim_agent.config import AgentConfig, ConfigError
from edgeslim_agent.tls import (
    TLSError,
    check_scheme,
    client_context,
    fetch_pinned_cert,
    normalize_fingerprint,
)


class _TLSServer:
    """Accepts TLS connections and records every byte a client sends after the handshake."""

    def __init__(self, data_dir: Path) -> None:
        cert, key, _ = ensure_certificate(data_dir, hosts=["127.0.0.1"])
        self.fingerprint = fingerprint_of_pem(cert.read_bytes())
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.connections = 0
        self.handshakes = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes += 1
                    tls.settimeout(2)
                    while chunk := tls.recv(4096):
                        self.received.append(chunk)
            except (OSError, ssl.SSLError):
                pass  # a client that hangs up during or right after the handshake
            finally:
                self.done.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls_server(tmp_path) -> Iterator[_TLSServer]:
    server = _TLSServer(tmp_path / "server")
    yield server
    server.close()


def test_fingerprints_are_read_in_the_usual_spellings_and_junk_is_refused():
    hexa = "ab" * 32
    spelled = "sha256:" + ":".join(["AB"] * 32)
    assert normalize_fingerprint(spelled) == normalize_fingerprint(hexa.upper()) == hexa
    for bad in ("", "sha256:ab", "zz" * 32, "ab" * 31):
        with pytest.raises(TLSError):
            normalize_fingerprint(bad)


def test_plain_http_needs_the_explicit_flag():
    with pytest.raises(TLSError, match="--insecure-http"):
        check_scheme("http://studio.lan:8000", insecure_http=False)
    check_scheme("http://127.0.0.1:8000", insecure_http=True)
    check_scheme("https://studio.lan", insecure_http=False)
    with pytest.raises(TLSError):
        check_scheme("ftp://studio.lan", insecure_http=True)


def test_enroll_and_run_refuse_http_without_the_flag(tmp_path, capsys):
    code = cli.main(["--state-dir", str(tmp_path), "enroll", "--server", "http://127.0.0.1:9",
                     "--code", "x"])  # fmt: skip
    assert code == 2 and "plain http" in capsys.readouterr().err
    AgentConfig(
        server="http://127.0.0.1:9", device_id=1, device_name="d", credential="c",
        server_public_key="",
    ).save(tmp_path)  # fmt: skip
    assert cli.main(["--state-dir", str(tmp_path), "run"]) == 2
    assert "plain http" in capsys.readouterr().err


def test_a_wrong_fingerprint_stops_before_a_byte_is_sent(tls_server, tmp_path):
    server = f"https://127.0.0.1:{tls_server.port}"
    with pytest.raises(ConfigError, match="nothing was sent"):
        cli.enroll(server, "CODE-1234", tmp_path / "state", fingerprint="00" * 32, timeout=5)
    # The client did connect (it read the certificate there); whether the server's side of the
    # handshake completed before the client hung up is a race, so only the bytes are judged.
    assert tls_server.done.wait(10)
    assert tls_server.connections == 1 and tls_server.received == []
    assert not (tmp_path / "state" / "credential.json").exists()


def test_the_pinned_certificate_is_the_only_one_trusted(tls_server, tmp_path):
    server = f"https://127.0.0.1:{tls_server.port}"
    pem = fetch_pinned_cert(server, tls_server.fingerprint, timeout=5)
    assert tls_server.received == []  # the probe sends nothing
    pinned = client_context(pem)
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw,
        pinned.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.getpeercert(binary_form=True)
    # another self-signed certificate (another studio, or an interceptor) fails the handshake
    other = _TLSServer(tmp_path / "other")
    try:
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("127.0.0.1", other.port), timeout=5) as raw,
            pinned.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
        assert other.received == []
    finally:
        other.close()
