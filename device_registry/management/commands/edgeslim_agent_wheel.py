"""Build (or find cached) the edge agent's wheel and print its path and sha256.

    python -m django edgeslim_agent_wheel

``edgeslim up`` runs it at start so the first device does not wait for the build; the studio
serves the same file at ``/agent/<wheel name>``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from device_registry.agent_wheel import AgentWheelError, agent_wheel_build, agent_wheel_sha256


class Command(BaseCommand):
    help = "Build the edge agent's wheel (cached by source digest) and print its sha256."

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            path = agent_wheel_build()
        except AgentWheelError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"agent wheel {path} sha256 {agent_wheel_sha256()}")
