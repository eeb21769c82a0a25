"""Which manifest-signing keys this agent trusts, and Ed25519 verification (``cryptography``).

Each key has an id: the first 16 hex digits of the sha256 of its raw 32-byte public key, so the
id of a key can always be recomputed and never names another key. Every manifest carries the id
of the key that signed it.

The list of trusted keys (``trusted-keys.json`` in the state folder) starts with the keys the
server handed over at enrollment, over the pinned TLS connection. It grows only through *key
statements*: ``{kid, public_key, not_after}`` signed by a key the agent already trusts (and that
has not expired on this device's clock). The server publishes its statements at
``/api/v1/agent/keys``; after a rotation the old key has signed "trust the new key" and the new
one "the old key ends at <time>", so an agent that trusts only the old key reaches the new one
without enrolling again, and stops trusting the old one after the grace period.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TRUST_FILE = "trusted-keys.json"
STATEMENT_DOMAIN = "edgeslim-key-statement-v1"
KEY_ID_HEX = 16
MAX_KEYS = 64


class TrustError(ValueError):
    """A key or statement that is malformed (not a refusal of a signature: see ``verify``)."""


def _raw(public_key_b64: str) -> bytes:
    try:
        raw = base64.b64decode(public_key_b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise TrustError("a public key is not base64") from exc
    if len(raw) != 32:
        raise TrustError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


def key_id(public_key_b64: str) -> str:
    """The key's id: the first 16 hex digits of sha256(raw public key)."""
    return hashlib.sha256(_raw(public_key_b64)).hexdigest()[:KEY_ID_HEX]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``message`` (RFC 8032)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class TrustedKey:
    kid: str
    public_key: str  # base64 of the raw 32 bytes
    not_after: int | None = None  # ms since the epoch; None: no end

    def expired(self, at_ms: int) -> bool:
        return self.not_after is not None and at_ms > self.not_after

    @classmethod
    def from_dict(cls, data: Any) -> TrustedKey:
        if not isinstance(data, dict):
            raise TrustError("a key is a JSON object")
        public_key = str(data.get("public_key", ""))
        kid = key_id(public_key)
        if data.get("kid", kid) != kid:
            raise TrustError(f"key id {data.get('kid')!r} does not match its public key ({kid})")
        not_after = data.get("not_after")
        if not_after is not None and (
            not isinstance(not_after, int) or isinstance(not_after, bool)
        ):
            raise TrustError("not_after is milliseconds since the epoch, or null")
        return cls(kid=kid, public_key=public_key, not_after=not_after)

    def to_dict(self) -> dict[str, Any]:
        return {"kid": self.kid, "public_key": self.public_key, "not_after": self.not_after}


@dataclass(frozen=True)
class KeyStatement:
    """``signed_by`` says: trust ``public_key`` (id ``kid``) until ``not_after`` (None: no end)."""

    kid: str
    public_key: str
    not_after: int | None
    issued_at: int
    signed_by: str
    signature: str

    def signing_bytes(self) -> bytes:
        body = {
            "_domain": STATEMENT_DOMAIN,
            "issued_at": self.issued_at,
            "kid": self.kid,
            "not_after": self.not_after,
            "public_key": self.public_key,
            "signed_by": self.signed_by,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any) -> KeyStatement:
        if not isinstance(data, dict):
            raise TrustError("a key statement is a JSON object")
        key = TrustedKey.from_dict(data)
        issued_at = data.get("issued_at")
        if not isinstance(issued_at, int) or isinstance(issued_at, bool):
            raise TrustError("issued_at is milliseconds since the epoch")
        return cls(
            kid=key.kid,
            public_key=key.public_key,
            not_after=key.not_after,
            issued_at=issued_at,
            signed_by=str(data.get("signed_by", "")),
            signature=str(data.get("signature", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "public_key": self.public_key,
            "not_after": self.not_after,
            "issued_at": self.issued_at,
            "signed_by": self.signed_by,
            "signature": self.signature,
        }


class TrustStore:
    """The trusted keys of one agent, on disk (written atomically by the caller's ``save``)."""

    def __init__(self, keys: Iterable[TrustedKey] = (), applied: dict[str, int] | None = None):
        self.keys: dict[str, TrustedKey] = {k.kid: k for k in keys}
        # kid -> issued_at of the newest statement applied to it (an older one is ignored)
        self.applied: dict[str, int] = dict(applied or {})

    # --- persistence ---------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path, *, enrolled_key: str = "") -> TrustStore:
        """The store in ``state_dir``; a state folder from before key ids trusts its one key."""
        path = state_dir / TRUST_FILE
        store = cls()
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                for item in data.get("keys", []):
                    with contextlib.suppress(TrustError):
                        key = TrustedKey.from_dict(item)
                        store.keys[key.kid] = key
                store.applied = {str(k): int(v) for k, v in dict(data.get("applied", {})).items()}
        if not store.keys and enrolled_key:
            key = TrustedKey(kid=key_id(enrolled_key), public_key=enrolled_key)
            store.keys[key.kid] = key
        return store

    def save(self, state_dir: Path) -> None:
        from edgeslim_agent.config import ensure_dir, write_json

        write_json(ensure_dir(state_dir) / TRUST_FILE, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": [k.to_dict() for k in sorted(self.keys.values(), key=lambda k: k.kid)],
            "applied": dict(sorted(self.applied.items())),
        }

    # --- checks --------------------------------------------------------------------------------

    def refusal(self, kid: str, message: bytes, signature: bytes, *, at_ms: int) -> str | None:
        """None when ``kid`` is trusted, unexpired and signed ``message``; else why not."""
        key = self.keys.get(kid)
        if key is None:
            return f"key {kid!r} is not one this agent trusts"
        if key.expired(at_ms):
            return f"key {kid} stopped being trusted at {key.not_after} (ms since the epoch)"
        if not verify(_raw(key.public_key), message, signature):
            return f"the signature does not verify with key {kid}"
        return None

    def apply(self, statements: Iterable[KeyStatement], *, at_ms: int) -> list[str]:
        """Apply every statement signed by a trusted, unexpired key; return the ids changed.

        Statements may chain (old signs new, new signs the next), so this repeats until nothing
        changes. A statement older than one already applied to the same key is ignored, so a
        replayed statement cannot undo a retirement.
        """
        pending = list(statements)
        changed: list[str] = []
        progress = True
        while progress and pending:
            progress = False
            for statement in list(pending):
                if statement.signed_by not in self.keys:
                    continue
                pending.remove(statement)
                try:
                    signature = base64.b64decode(statement.signature, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if self.refusal(
                    statement.signed_by, statement.signing_bytes(), signature, at_ms=at_ms
                ):
                    continue
                if statement.issued_at <= self.applied.get(statement.kid, -1):
                    continue
                if statement.kid not in self.keys and len(self.keys) >= MAX_KEYS:
                    continue
                self.keys[statement.kid] = TrustedKey(
                    kid=statement.kid,
                    public_key=statement.public_key,
                    not_after=statement.not_after,
                )
                self.applied[statement.kid] = statement.issued_at
                changed.append(statement.kid)
                progress = True
        return changed
