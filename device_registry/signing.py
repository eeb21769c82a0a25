"""The server's manifest-signing key (Ed25519): a key file of its own, with key ids and rotation.

The active private key is a PEM file (PKCS#8, mode 0600), ``$EDGESLIM_SIGNING_KEY_FILE`` or
``<data dir>/keys/signing-key.pem``, generated on first use when absent. It is not derived from
``SECRET_KEY``: rotating the secret key does not touch the devices. Next to it,
``signing-keys.json`` holds public data only: every key's id, public half and end of trust
(``not_after``), and the signed *key statements* agents use to follow a rotation
(``/api/v1/agent/keys``; the agent side is ``edgeslim_agent.trust``).

:func:`rotate` (``edgeslim_rotate_signing_key``) makes a new key that signs from then on; the
old key signs "trust the new key" and the new key signs "the old key ends after the grace
period". The old private key is deleted; its public half stays in the list so agents accept
manifests it signed until the grace period ends. A KMS could hold the private key later: only
:func:`_active` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from edgeslim_agent.protocol import Manifest, b64encode
from edgeslim_agent.trust import KeyStatement, TrustedKey, key_id

RING_FILE = "signing-keys.json"
DEFAULT_GRACE_S = 30 * 86400


def key_file() -> Path:
    """Where the active private key lives (``$EDGESLIM_SIGNING_KEY_FILE`` or the data folder)."""
    configured = os.environ.get("EDGESLIM_SIGNING_KEY_FILE", "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(settings.DATA_DIR) / "keys" / "signing-key.pem"


def ring_file() -> Path:
    return key_file().with_name(RING_FILE)


def _public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64encode(raw)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write a 0600 file atomically; with ``replace=False`` an existing file wins (no clobber)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic create-if-absent: two processes never both win
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _read_ring() -> dict[str, Any]:
    path = ring_file()
    if not path.exists():
        return {"keys": [], "statements": []}
    data = json.loads(path.read_text())
    return {"keys": list(data.get("keys", [])), "statements": list(data.get("statements", []))}


def _write_ring(ring: dict[str, Any]) -> None:
    path = ring_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(ring, fh, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


_cache: dict[str, Any] = {}


def _active() -> tuple[Ed25519PrivateKey, str]:
    """The active private key and its id, generated on first use; re-read after a rotation."""
    path = key_file()
    if not path.exists():
        _write_private(path, _pem(Ed25519PrivateKey.generate()), replace=False)
    stat = path.stat()
    stamp = (str(path), stat.st_mtime_ns, stat.st_ino)
    if _cache.get("stamp") != stamp:
        if stat.st_mode & 0o077:
            raise PermissionError(f"{path} is readable by others: run `chmod 600 {path}`")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        public = _public_b64(key)
        kid = key_id(public)
        ring = _read_ring()
        if not any(k.get("kid") == kid for k in ring["keys"]):
            ring["keys"].append(TrustedKey(kid=kid, public_key=public).to_dict())
            _write_ring(ring)
        _cache.update(stamp=stamp, key=key, kid=kid)
    return _cache["key"], _cache["kid"]


def active_key_id() -> str:
    return _active()[1]


def public_key_b64() -> str:
    """The active key's public half (base64 of the raw 32 bytes)."""
    return _public_b64(_active()[0])


def trusted_keys(*, at_ms: int | None = None) -> list[dict[str, Any]]:
    """Every key an agent should trust now (the active one and those in their grace period)."""
    _active()
    at = at_ms if at_ms is not None else int(time.time() * 1000)
    keys = [TrustedKey.from_dict(k) for k in _read_ring()["keys"]]
    return [k.to_dict() for k in keys if not k.expired(at)]


def key_statements() -> list[dict[str, Any]]:
    """Every signed key statement ever made (an agent chains from the key it trusts)."""
    _active()
    return list(_read_ring()["statements"])


def manifest_sign(manifest: Manifest) -> str:
    """Sign ``manifest`` with the active key, naming it; return the stored form ``kid:base64``.

    The deployment row keeps this one string: :func:`stored_key_id` gives the manifest its
    ``key_id`` back, :func:`stored_signature` the signature the ``deploy`` message carries.
    """
    key, kid = _active()
    signed = dataclasses.replace(manifest, key_id=kid)
    return f"{kid}:{b64encode(key.sign(signed.signing_bytes()))}"


def stored_key_id(stored: str) -> str:
    """The key id of a stored signature (``""`` for one from before key ids)."""
    kid, sep, _ = stored.partition(":")
    return kid if sep else ""


def stored_signature(stored: str) -> str:
    """The base64 signature of a stored signature."""
    _kid, sep, signature = stored.partition(":")
    return signature if sep else stored


def _statement(signer: Ed25519PrivateKey, *, about: TrustedKey, issued_at: int) -> dict[str, Any]:
    unsigned = KeyStatement(
        kid=about.kid,
        public_key=about.public_key,
        not_after=about.not_after,
        issued_at=issued_at,
        signed_by=key_id(_public_b64(signer)),
        signature="",
    )
    signature = b64encode(signer.sign(unsigned.signing_bytes()))
    return dataclasses.replace(unsigned, signature=signature).to_dict()


def rotate(*, grace_s: float = DEFAULT_GRACE_S) -> tuple[str, str]:
    """Make a new active key; the old one stays trusted for ``grace_s``. Return (old, new) ids."""
    old, old_kid = _active()
    new = Ed25519PrivateKey.generate()
    new_public = _public_b64(new)
    new_key = TrustedKey(kid=key_id(new_public), public_key=new_public)
    now = int(time.time() * 1000)
    retired = TrustedKey(
        kid=old_kid, public_key=_public_b64(old), not_after=now + int(grace_s * 1000)
    )
    ring = _read_ring()
    ring["keys"] = [k for k in ring["keys"] if k.get("kid") not in (old_kid, new_key.kid)]
    ring["keys"] += [retired.to_dict(), new_key.to_dict()]
    ring["statements"] += [
        _statement(old, about=new_key, issued_at=now),  # the old key vouches for the new one
        _statement(new, about=retired, issued_at=now),  # and the new one ends the old one
    ]
    _write_ring(ring)
    _write_private(key_file(), _pem(new), replace=True)
    _cache.clear()
    return old_kid, new_key.kid
