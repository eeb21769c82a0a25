"""The studio's address as devices reach it, and the commands the enrollment page prints.

Stdlib only: ``edgeslim up`` uses :func:`lan_address` before Django is configured, and the
device pages build every printed command with :func:`enrollment_commands`.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import urllib.parse
from dataclasses import dataclass

# Where the enrollment page tells users to make the agent's virtual environment.
AGENT_VENV = "~/edgeslim-agent"
# A documentation address (TEST-NET-1, RFC 5737): connecting a UDP socket to it only asks the
# kernel for a route; no packet is sent.
_ROUTE_PROBE = ("192.0.2.1", 9)


def is_loopback(url: str) -> bool:
    """True when ``url``'s host only works on this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lan_address() -> str | None:
    """This host's address on its default route (e.g. ``192.168.1.20``), or None when offline.

    A UDP ``connect`` picks the outgoing interface without sending anything.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_ROUTE_PROBE)
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    if not address or address == "0.0.0.0" or ipaddress.ip_address(address).is_loopback:
        return None
    return address


def suggested_public_url(port: int, *, scheme: str = "http") -> str | None:
    """``http://<LAN address>:<port>`` for this host, or None when it has no LAN address."""
    address = lan_address()
    return f"{scheme}://{address}:{port}" if address else None


@dataclass(frozen=True)
class EnrollmentCommands:
    """What a device runs, in order: make a venv and install, enroll, run."""

    install: str
    enroll: str
    run: str


def enrollment_commands(
    *,
    base_url: str,
    wheel_name: str,
    wheel_sha256: str,
    requirements: list[str],
    code: str,
    fingerprint: str = "",
    venv: str = AGENT_VENV,
) -> EnrollmentCommands:
    """The commands for one enrollment code, using the venv's own binaries.

    Raspberry Pi OS (and any distribution following PEP 668) refuses a bare ``pip install``
    into the system Python, so the agent lives in its own virtual environment. Its dependencies
    come from the package index; the agent itself from the studio, hash-checked
    (``--require-hashes``) against the sha256 this page shows. With a self-signed certificate
    (``fingerprint``) pip cannot check the studio's TLS, so the host is trusted for that one
    download: the hash, not TLS, vouches for the wheel. The enroll command pins the certificate
    (``--fingerprint``); plain http needs ``--insecure-http`` on the agent, said out loud.
    """
    base = base_url.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    https = parts.scheme == "https"
    agent = f"{venv}/bin/edgeslim-agent"
    insecure = "" if https else " --insecure-http"
    requirement = f"edgeslim-agent @ {base}/agent/{wheel_name} --hash=sha256:{wheel_sha256}"
    trusted_host = (
        f" --trusted-host {shlex.quote(parts.hostname or '')}" if (fingerprint or not https) else ""
    )
    pin = f" --fingerprint {display_fingerprint(fingerprint)}" if (https and fingerprint) else ""
    return EnrollmentCommands(
        install=(
            f"python3 -m venv {venv} && "
            f"{venv}/bin/pip install {' '.join(shlex.quote(r) for r in requirements)} && "
            f"echo {shlex.quote(requirement)} > {venv}/agent-requirements.txt && "
            f"{venv}/bin/pip install --no-deps --require-hashes{trusted_host} "
            f"-r {venv}/agent-requirements.txt"
        ),
        enroll=(
            f"{agent}{insecure} enroll --server {shlex.quote(base)}{pin} --code {shlex.quote(code)}"
        ),
        run=f"{agent}{insecure} run",
    )


def display_fingerprint(fingerprint: str) -> str:
    """``sha256:AB:CD:...`` from a hex sha256."""
    value = fingerprint.replace(":", "").upper()
    return "sha256:" + ":".join(value[i : i + 2] for i in range(0, len(value), 2))


def startup_advice(*, host: str, port: int, public_url: str, scheme: str = "https") -> list[str]:
    """Lines ``edgeslim up`` prints when devices may not reach the studio at its address.

    Empty when ``EDGESLIM_PUBLIC_URL`` names a routable address; otherwise how to set it, with
    this host's LAN address as the example when it has one, and how to listen on the network
    when the server listens on loopback only.
    """
    if public_url and not is_loopback(public_url):
        return []
    suggestion = suggested_public_url(port, scheme=scheme) or (
        f"{scheme}://<this machine's address>:{port}"
    )
    port_flag = f" --port {port}" if port != 8000 else ""
    local_only = is_loopback(f"http://{host}")
    restart = (
        f"  to enroll real devices, restart with: EDGESLIM_PUBLIC_URL={suggestion} "
        f"edgeslim up{' --host 0.0.0.0' if local_only else f' --host {host}'}{port_flag}"
    )
    if public_url:
        return [
            f"warning: EDGESLIM_PUBLIC_URL={public_url} is a loopback address: devices cannot "
            "reach the studio there.",
            restart,
        ]
    if local_only:
        return [
            f"warning: the studio listens on {host} only, and the enrollment page would print "
            f"{scheme}://{host}:{port}, which works only on this machine.",
            restart,
        ]
    return [
        "note: EDGESLIM_PUBLIC_URL is not set, so the enrollment page prints the address your "
        "browser used; a loopback one is useless on a device.",
        restart,
    ]
