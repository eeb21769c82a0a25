"""The agent's state folder: its credential (owner-only), outbox and downloaded artifacts.

Layout under the state dir (``--state-dir``, ``$EDGESLIM_AGENT_HOME`` or
``~/.config/edgeslim-agent``)::

    credential.json        server URL, device id, credential, enrollment public key, pinned
                           TLS certificate  (mode 0600)
    trusted-keys.json      the manifest-signing keys this agent trusts (``trust.py``)
    outbox/                results not yet acknowledged by the server
    deployments/<id>.json  which results of a deployment are done
    artifacts/             verified downloads (and their ``.part`` files while downloading)
    trust.json             the newest manifest issue time accepted (rollback guard)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CREDENTIAL_FILE = "credential.json"


class ConfigError(RuntimeError):
    """The state folder is missing, unreadable or too open."""


def default_state_dir() -> Path:
    env = os.environ.get("EDGESLIM_AGENT_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeslim-agent"


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@dataclass(frozen=True)
class AgentConfig:
    """What enrollment leaves behind. The enrollment code is never part of it."""

    server: str  # base URL, e.g. https://studio.local:8443
    device_id: int
    device_name: str
    credential: str
    server_public_key: str  # base64 raw Ed25519 key that signed manifests at enrollment
    # sha256 (hex) and PEM of the server certificate pinned at enrollment; "" when the server
    # has a certificate from a public CA (checked against the system's CAs instead)
    tls_fingerprint: str = ""
    tls_cert: str = ""

    def save(self, state_dir: Path) -> Path:
        ensure_dir(state_dir)
        path = state_dir / CREDENTIAL_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, state_dir: Path) -> AgentConfig:
        path = state_dir / CREDENTIAL_FILE
        if not path.exists():
            raise ConfigError(
                f"{path} does not exist: run `edgeslim-agent enroll --server URL --code CODE` first"
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
            )
        try:
            data = read_json(path)
            return cls(
                server=str(data["server"]).rstrip("/"),
                device_id=int(data["device_id"]),
                device_name=str(data["device_name"]),
                credential=str(data["credential"]),
                server_public_key=str(data["server_public_key"]),
                tls_fingerprint=str(data.get("tls_fingerprint", "")),
                tls_cert=str(data.get("tls_cert", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid credential file: {exc}") from exc
