"""The studio's TLS certificate: generated once by ``edgeslim up``, its fingerprint shown to users.

``edgeslim up`` serves HTTPS by default with a self-signed certificate it makes on the first run
in ``<data dir>/tls/`` (``server.key`` mode 0600, ``server.crt``), valid for ten years for
``localhost``, this host's name and addresses. A self-signed certificate proves nothing by
itself: its sha256 fingerprint, printed by ``edgeslim up`` and shown on the device registration
page, is what an agent pins (``edgeslim-agent enroll --fingerprint``). Behind a reverse proxy
with its own certificate, ``EDGESLIM_TLS_FINGERPRINT`` names the proxy's certificate instead (or
is left unset when that certificate comes from a public CA the devices trust).

Importable before Django is configured (``edgeslim up`` uses it first).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "server.crt"
KEY_FILE = "server.key"
VALID_DAYS = 3650


_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tls"


def fingerprint_of_pem(pem: bytes) -> str:
    """The sha256 (hex) of a PEM certificate's DER bytes, as ``--fingerprint`` takes it."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _names(extra_hosts: list[str]) -> list[x509.GeneralName]:
    hosts = ["localhost", socket.gethostname(), "127.0.0.1", "::1", *extra_hosts]
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip().strip("[]")
        if not host or host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def ensure_certificate(data_dir: Path, *, hosts: Sequence[str] = ()) -> tuple[Path, Path, bool]:
    """The certificate and key in ``<data dir>/tls/``, made when absent; (cert, key, created).

    An existing pair is kept as is: agents pinned its fingerprint.
    """
    directory = tls_dir(data_dir)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EdgeSlim studio (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(list(hosts))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


def daphne_endpoint(host: str, port: int, cert: Path, key: Path) -> str:
    """Daphne's (Twisted's) ``ssl:`` endpoint string for this certificate."""

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    interface = esc(host)
    return (
        f"ssl:port={port}:interface={interface}:privateKey={esc(str(key))}:certKey={esc(str(cert))}"
    )


def studio_fingerprint() -> str:
    """The certificate devices see, as hex: ``EDGESLIM_TLS_FINGERPRINT`` (a proxy's), else the
    certificate ``edgeslim up`` generated in the data folder; ``""`` when neither is known."""
    configured = os.environ.get("EDGESLIM_TLS_FINGERPRINT", "").strip()
    if configured:
        value = configured.lower().removeprefix("sha256:").replace(":", "")
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(
                "EDGESLIM_TLS_FINGERPRINT must be a certificate's sha256 (64 hex digits)"
            )
        return value
    from django.conf import settings

    cert = tls_dir(Path(settings.DATA_DIR)) / CERT_FILE
    if cert.exists():
        return fingerprint_of_pem(cert.read_bytes())
    return ""
