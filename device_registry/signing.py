"""The server's artifact-signing key (Ed25519), derived from SECRET_KEY.

Deriving the key keeps nothing new to back up or rotate: the same SECRET_KEY gives the same key
on every web process. Its public half is handed to each agent at enrollment; rotating SECRET_KEY
therefore means enrolling devices again.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from device_registry.agent.protocol import Manifest, b64encode

_DOMAIN = b"edgeslim-artifact-signing-key-v1\x00"


@lru_cache(maxsize=4)
def _private_key(secret_key: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(_DOMAIN + secret_key.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key() -> Ed25519PrivateKey:
    return _private_key(settings.SECRET_KEY)


def public_key_b64() -> str:
    raw = (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return b64encode(raw)


def manifest_sign(manifest: Manifest) -> str:
    return b64encode(signing_key().sign(manifest.signing_bytes()))
