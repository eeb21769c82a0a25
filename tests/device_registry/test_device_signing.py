"""The manifest-signing key: a key file of its own (not SECRET_KEY), a key id in every manifest,
and a rotation agents follow without enrolling again."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_factories import artifact, deployment, enrolled_device
from django.core.management import call_command
from factories import make_organization

from device_registry import services, signing
from edgeslim_agent.config import AgentConfig
from edgeslim_agent.connection import Agent
from edgeslim_agent.protocol import Deploy
from edgeslim_agent.trust import KeyStatement, TrustedKey, TrustStore, key_id

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_path(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "signing-key.pem"
    monkeypatch.setenv("EDGESLIM_SIGNING_KEY_FILE", str(path))
    signing._cache.clear()
    yield path
    signing._cache.clear()


def _deploy(org, tmp_path) -> Deploy:
    tmp_path.mkdir(parents=True, exist_ok=True)
    device, _code = enrolled_device(org, name=f"pi-{tmp_path.name}")
    return services.deployment_message(deployment(org, artifact(org, tmp_path), device))


def _store_from_enrollment() -> TrustStore:
    return TrustStore([TrustedKey.from_dict(k) for k in signing.trusted_keys()])


def test_the_key_is_a_file_of_its_own_made_once_not_derived_from_secret_key(key_path, settings):
    public = signing.public_key_b64()
    assert key_path.exists() and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    settings.SECRET_KEY = "another secret entirely"
    signing._cache.clear()
    assert signing.public_key_b64() == public  # rotating SECRET_KEY leaves the devices alone
    assert signing.active_key_id() == key_id(public)
    key_path.chmod(0o644)
    signing._cache.clear()
    with pytest.raises(PermissionError, match="chmod 600"):
        signing.public_key_b64()


def test_every_manifest_names_its_key_and_verifies_with_the_enrolled_keys(key_path, tmp_path):
    org = make_organization(name="Sign Lab")
    deploy = _deploy(org, tmp_path)
    assert deploy.manifest.key_id == signing.active_key_id()
    assert '"key_id"' in deploy.manifest.signing_bytes().decode()  # the id is signed too
    store = _store_from_enrollment()
    sig = base64.b64decode(deploy.signature)
    assert (
        store.refusal(deploy.manifest.key_id, deploy.manifest.signing_bytes(), sig, at_ms=0) is None
    )
    # a manifest that names another key id no longer verifies
    import dataclasses

    swapped = dataclasses.replace(deploy.manifest, key_id="0" * 16)
    assert store.refusal(signing.active_key_id(), swapped.signing_bytes(), sig, at_ms=0)


def test_rotation_signs_with_a_new_key_and_agents_follow_the_signed_statements(key_path, tmp_path):
    org = make_organization(name="Rotate Lab")
    before = _deploy(org, tmp_path / "a")
    old_kid = signing.active_key_id()
    agent_store = _store_from_enrollment()  # an agent enrolled before the rotation
    out = io.StringIO()
    call_command("edgeslim_rotate_signing_key", "--grace-days", "2", stdout=out)
    new_kid = signing.active_key_id()
    assert new_kid != old_kid and f"{old_kid} -> {new_kid}" in out.getvalue()
    after = _deploy(org, tmp_path / "b")
    assert after.manifest.key_id == new_kid
    now = before.manifest.issued_at
    sig_after = base64.b64decode(after.signature)
    assert agent_store.refusal(new_kid, after.manifest.signing_bytes(), sig_after, at_ms=now)
    statements = [KeyStatement.from_dict(s) for s in signing.key_statements()]
    assert set(agent_store.apply(statements, at_ms=now)) == {new_kid, old_kid}
    assert (
        agent_store.refusal(new_kid, after.manifest.signing_bytes(), sig_after, at_ms=now) is None
    )
    # the old key's manifests still verify during the grace period, not after it
    sig_before = base64.b64decode(before.signature)
    grace_end = agent_store.keys[old_kid].not_after
    assert (
        grace_end is not None and 2 * 86400_000 - 60_000 < grace_end - now <= 2 * 86400_000 + 60_000
    )
    assert (
        agent_store.refusal(old_kid, before.manifest.signing_bytes(), sig_before, at_ms=now) is None
    )
    assert "stopped being trusted" in agent_store.refusal(
        old_kid, before.manifest.signing_bytes(), sig_before, at_ms=grace_end + 1
    )
    # a device enrolling now gets both keys, the old one with its end
    enrolled = {k["kid"]: k for k in signing.trusted_keys()}
    assert enrolled[new_kid]["not_after"] is None and enrolled[old_kid]["not_after"] == grace_end
    # the old private key is gone; the key file holds the new one
    assert key_id(signing.public_key_b64()) == new_kid
    ring = json.loads(signing.ring_file().read_text())
    assert "PRIVATE" not in json.dumps(ring)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_running_agent_learns_the_rotated_key_from_the_server(daphne_server, tmp_path):
    """A real agent that trusts only the old key fetches /api/v1/agent/keys from the live server
    when a manifest names the new key, and accepts it (no re-enrollment)."""
    signing._cache.clear()
    org = make_organization(name="Live Rotate Lab")
    old_public = signing.public_key_b64()
    config = AgentConfig(
        server=daphne_server.base_url, device_id=1, device_name="d", credential="c",
        server_public_key=old_public,
    )  # fmt: skip
    agent = Agent(config, tmp_path / "state")
    call_command("edgeslim_rotate_signing_key", "--grace-days", "1", stdout=io.StringIO())
    deploy = _deploy(org, tmp_path)
    assert deploy.manifest.key_id != key_id(old_public)

    async def check() -> object:
        return await asyncio.to_thread(agent._check_trust, deploy)

    assert asyncio.run(check()) is None
    trusted = TrustStore.load(tmp_path / "state")
    assert deploy.manifest.key_id in trusted.keys
    # a forged key set is not enough: a manifest by a key nobody vouched for is refused
    rogue = Ed25519PrivateKey.generate()
    rogue_public = base64.b64encode(
        rogue.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    import dataclasses

    forged_manifest = dataclasses.replace(
        deploy.manifest,
        key_id=key_id(rogue_public),
        deployment_id=deploy.manifest.deployment_id + 10_000,
    )
    forged = dataclasses.replace(
        deploy,
        manifest=forged_manifest,
        signature=base64.b64encode(rogue.sign(forged_manifest.signing_bytes())).decode(),
    )
    refused = asyncio.run(asyncio.to_thread(agent._check_trust, forged))
    assert refused is not None and refused[0] == "bad_signature"
