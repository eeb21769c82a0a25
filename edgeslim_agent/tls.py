"""How the agent reaches the server: HTTPS with the server's certificate pinned by fingerprint.

``enroll --fingerprint`` names the sha256 of the server certificate (as the enrollment page
shows it). Before anything is sent, the agent completes a TLS handshake, hashes the certificate
the server presented and compares; on a match it keeps that certificate in its credential file,
and from then on every connection (enrollment, websocket, downloads) trusts exactly that
certificate and nothing else. Without a fingerprint (a studio behind a proxy with a certificate
from a public CA) the system's CAs and the host name are checked as usual.

Plain ``http://`` is refused unless the agent runs with ``--insecure-http`` (loopback
development only).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import urllib.parse

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TLSError(ValueError):
    """A bad fingerprint, a server that presented another certificate, or plain http refused."""


def normalize_fingerprint(text: str) -> str:
    """64 lowercase hex digits from ``sha256:AB:CD:...``, ``AB:CD...`` or plain hex."""
    value = text.strip().lower().removeprefix("sha256:").removeprefix("sha256=")
    value = value.replace(":", "").replace(" ", "")
    if not _HEX64.match(value):
        raise TLSError(
            f"--fingerprint must be the certificate's sha256 (64 hex digits), not {text!r}"
        )
    return value


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def display_fingerprint(fingerprint: str) -> str:
    """``sha256:AB:CD:...``, the way browsers and ``openssl x509 -fingerprint`` show it."""
    value = normalize_fingerprint(fingerprint).upper()
    return "sha256:" + ":".join(value[i : i + 2] for i in range(0, 64, 2))


def check_scheme(server: str, *, insecure_http: bool) -> None:
    scheme = urllib.parse.urlsplit(server).scheme
    if scheme == "https":
        return
    if scheme == "http":
        if insecure_http:
            return
        raise TLSError(
            f"{server} is plain http: the credential would travel in clear. Use the https:// "
            "address (and --fingerprint) the enrollment page prints, or --insecure-http for "
            "loopback development only"
        )
    raise TLSError(f"--server must be an https:// URL, not {server!r}")


def fetch_pinned_cert(server: str, fingerprint: str, *, timeout: float = 15.0) -> str:
    """Handshake with ``server``, send nothing, and return its certificate (PEM) if it is pinned.

    Raises:
        TLSError: the certificate's sha256 is not ``fingerprint``.
        OSError: the server cannot be reached.
    """
    want = normalize_fingerprint(fingerprint)
    parts = urllib.parse.urlsplit(server)
    host, port = parts.hostname or "", parts.port or 443
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # the fingerprint, not a CA, decides below
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        probe.wrap_socket(raw, server_hostname=host or None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise TLSError(f"{server} presented no certificate")
    got = cert_fingerprint(der)
    if got != want:
        raise TLSError(
            f"{server} presented a certificate with sha256 {display_fingerprint(got)}, not the "
            f"pinned {display_fingerprint(want)}: nothing was sent. Check the address, or the "
            "fingerprint on the enrollment page"
        )
    return ssl.DER_cert_to_PEM_cert(der)


def client_context(pinned_cert_pem: str = "") -> ssl.SSLContext:
    """A context that trusts only the pinned certificate, or the system CAs when none is pinned."""
    if not pinned_cert_pem:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The exact certificate is the trust anchor: a host-name check adds nothing, and the
    # generated certificate may be reached by an address its names do not list.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    context.load_verify_locations(cadata=pinned_cert_pem)
    return context
