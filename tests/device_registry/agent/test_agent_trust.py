"""Ed25519 through ``cryptography`` (RFC 8032 section 7.1 vectors) and the agent's trusted keys:
statements chain from a trusted key, an expired key signs nothing, a replay undoes nothing."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeslim_agent import trust
from edgeslim_agent.trust import KeyStatement, TrustedKey, TrustError, TrustStore

# RFC 8032, section 7.1 (Ed25519): SECRET KEY, PUBLIC KEY, MESSAGE, SIGNATURE, in hex.
RFC8032_VECTORS = [
    (  # TEST 1 (empty message)
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2 (1 byte)
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (  # TEST 3 (2 bytes)
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (  # TEST SHA(abc) (64 bytes)
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors_verify_and_every_tampering_fails(secret, public, message, signature):
    pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert trust.verify(pub, msg, sig)
    # the server signs with the same library: the vector's secret gives its public key and its
    # (deterministic) signature
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == pub and key.sign(msg) == sig
    assert not trust.verify(pub, msg + b"x", sig)
    for i in (0, 31, 32, 63):  # R and S halves
        flipped = bytearray(sig)
        flipped[i] ^= 0x01
        assert not trust.verify(pub, msg, bytes(flipped))
    other = bytes.fromhex(RFC8032_VECTORS[(RFC8032_VECTORS.index(
        (secret, public, message, signature)) + 1) % 4][1])  # fmt: skip
    assert not trust.verify(other, msg, sig)
    assert not trust.verify(pub, msg, sig[:63])
    assert not trust.verify(b"short", msg, sig)


def _key() -> tuple[Ed25519PrivateKey, TrustedKey]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    public = base64.b64encode(raw).decode()
    return private, TrustedKey(kid=trust.key_id(public), public_key=public)


def _statement(signer, signer_kid, about: TrustedKey, *, issued_at: int, not_after=None):
    unsigned = KeyStatement(
        kid=about.kid, public_key=about.public_key, not_after=not_after,
        issued_at=issued_at, signed_by=signer_kid, signature="",
    )  # fmt: skip
    sig = base64.b64encode(signer.sign(unsigned.signing_bytes())).decode()
    return KeyStatement(**{**unsigned.__dict__, "signature": sig})


def test_a_key_id_is_the_hash_of_the_public_key_and_cannot_name_another():
    _, key = _key()
    assert len(key.kid) == 16 and int(key.kid, 16) >= 0
    _, other = _key()
    with pytest.raises(TrustError):
        TrustedKey.from_dict({"kid": other.kid, "public_key": key.public_key})


def test_a_rotation_chain_is_followed_from_the_trusted_key_only(tmp_path):
    old_priv, old = _key()
    new_priv, new = _key()
    next_priv, nxt = _key()
    store = TrustStore([old])
    statements = [
        # given in the wrong order on purpose: application repeats until nothing changes
        _statement(new_priv, new.kid, nxt, issued_at=2000),
        _statement(old_priv, old.kid, new, issued_at=1000),
        _statement(new_priv, new.kid, old, issued_at=1000, not_after=5000),
    ]
    changed = store.apply(statements, at_ms=1500)
    assert set(changed) == {new.kid, nxt.kid, old.kid}
    message = b"manifest"
    assert store.refusal(nxt.kid, message, next_priv.sign(message), at_ms=1500) is None
    assert store.refusal(old.kid, message, old_priv.sign(message), at_ms=4000) is None
    assert "stopped being trusted" in store.refusal(
        old.kid, message, old_priv.sign(message), at_ms=6000
    )
    store.save(tmp_path)
    again = TrustStore.load(tmp_path)
    assert set(again.keys) == {old.kid, new.kid, nxt.kid}
    # a replay of an older statement cannot undo the retirement
    assert again.apply([_statement(old_priv, old.kid, old, issued_at=500)], at_ms=1500) == []
    assert again.keys[old.kid].not_after == 5000


def test_statements_from_an_untrusted_or_expired_key_or_with_a_bad_signature_are_ignored():
    trusted_priv, trusted = _key()
    stranger_priv, stranger = _key()
    _, target = _key()
    store = TrustStore([trusted])
    assert (
        store.apply([_statement(stranger_priv, stranger.kid, target, issued_at=1)], at_ms=1) == []
    )
    forged = _statement(stranger_priv, trusted.kid, target, issued_at=1)  # claims the trusted kid
    assert store.apply([forged], at_ms=1) == []
    expired = TrustStore([TrustedKey(trusted.kid, trusted.public_key, not_after=10)])
    assert (
        expired.apply([_statement(trusted_priv, trusted.kid, target, issued_at=1)], at_ms=11) == []
    )
    assert set(store.keys) == {trusted.kid} and set(expired.keys) == {trusted.kid}


def test_a_state_folder_from_before_key_ids_trusts_its_enrollment_key(tmp_path):
    priv, key = _key()
    store = TrustStore.load(tmp_path, enrolled_key=key.public_key)
    assert store.refusal(key.kid, b"m", priv.sign(b"m"), at_ms=0) is None
    assert "not one this agent trusts" in store.refusal("0" * 16, b"m", priv.sign(b"m"), at_ms=0)
