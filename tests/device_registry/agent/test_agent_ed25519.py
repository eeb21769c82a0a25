"""The agent's pure-Python Ed25519 agrees with the cryptography package the server signs with."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_registry.agent import ed25519


def _keypair():
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, raw


def test_it_accepts_signatures_made_by_cryptography():
    key, public = _keypair()
    for n in (0, 1, 31, 64, 1000):
        message = os.urandom(n)
        assert ed25519.verify(public, message, key.sign(message))


def test_it_refuses_tampered_messages_signatures_and_keys():
    key, public = _keypair()
    _, other_public = _keypair()
    message = b"manifest"
    signature = key.sign(message)
    assert not ed25519.verify(public, b"manifesT", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not ed25519.verify(public, message, flipped)
    assert not ed25519.verify(other_public, message, signature)
    assert not ed25519.verify(public, message, b"")
    assert not ed25519.verify(b"short", message, signature)
