"""Rotate the manifest-signing key without re-enrolling any device.

    python -m django edgeslim_rotate_signing_key [--grace-days 30]

A new key signs every manifest from now on. The old key signs a statement that vouches for the
new one, the new key one that ends the old key after the grace period, and agents fetch both
from ``/api/v1/agent/keys`` when a manifest names a key they do not know yet. The old private
key is deleted; its public half stays trusted for the grace period so deployments it signed
still run. Running web processes pick up the new key file on their next signature.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from device_registry import signing


class Command(BaseCommand):
    help = "Make a new manifest-signing key; the old one stays trusted for a grace period."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace-days",
            type=float,
            default=signing.DEFAULT_GRACE_S / 86400,
            help="how long agents keep accepting the old key (default 30 days)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        grace_days = float(opts["grace_days"])
        if not 0 <= grace_days <= 3650:
            raise CommandError("--grace-days must be between 0 and 3650")
        old, new = signing.rotate(grace_s=grace_days * 86400)
        self.stdout.write(
            f"signing key rotated: {old} -> {new} (in {signing.key_file()}); agents accept "
            f"{old} for {grace_days:g} more day(s) and learn {new} from its signed statement"
        )
