"""What a device needs to trust this studio, and the commands the enrollment page prints.

Three fingerprints, each protecting one step (docs/decisions.md, "the agent's trust chain"):
the agent wheel's sha256 (pip ``--require-hashes``: the code installed is the code served), the
server certificate's sha256 (``enroll --fingerprint``: the agent talks to this studio and no
other, before it sends anything), and the signing key's id and fingerprint (the key every
manifest names; the agent receives it over the pinned connection).
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass

from device_registry import signing
from device_registry.agent_wheel import agent_requirements, agent_wheel_name, agent_wheel_sha256
from device_registry.public_url import (
    AGENT_VENV,
    EnrollmentCommands,
    display_fingerprint,
    enrollment_commands,
)
from device_registry.server_tls import studio_fingerprint


@dataclass(frozen=True)
class TrustFacts:
    tls_fingerprint: str  # hex sha256 of the certificate devices see; "" when unknown
    signing_key_id: str
    signing_key_sha256: str  # hex sha256 of the raw public key (the id is its first 16 digits)
    wheel_name: str
    wheel_sha256: str

    @property
    def tls_display(self) -> str:
        return display_fingerprint(self.tls_fingerprint) if self.tls_fingerprint else ""


def trust_facts() -> TrustFacts:
    raw = base64.b64decode(signing.public_key_b64())
    return TrustFacts(
        tls_fingerprint=studio_fingerprint(),
        signing_key_id=signing.active_key_id(),
        signing_key_sha256=hashlib.sha256(raw).hexdigest(),
        wheel_name=agent_wheel_name(),
        wheel_sha256=agent_wheel_sha256(),
    )


SYSTEM_VENV = "/opt/edgeslim-agent"  # the systemd service's venv, owned by root


def commands(
    *, base_url: str, code: str, facts: TrustFacts | None = None, venv: str = AGENT_VENV
) -> EnrollmentCommands:
    facts = facts or trust_facts()
    return enrollment_commands(
        base_url=base_url,
        wheel_name=facts.wheel_name,
        wheel_sha256=facts.wheel_sha256,
        requirements=agent_requirements(),
        code=code,
        fingerprint=facts.tls_fingerprint,
        venv=venv,
    )


def systemd_install(system: EnrollmentCommands) -> str:
    """A system user for the service, and the agent installed (hash-checked) into a venv that
    belongs to root, so the service cannot change its own code."""
    return (
        "sudo useradd --system --home /var/lib/edgeslim-agent --create-home edgeslim && "
        f"sudo sh -c {shlex.quote(system.install)}"
    )
