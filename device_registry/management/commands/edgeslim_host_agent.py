"""Register the worker host as a device and run the same agent code on it.

Every latency figure in the product then comes from one harness: host benchmarks go through
``edgeslim_agent`` exactly like a Raspberry Pi's do. Example::

    python manage.py edgeslim_host_agent --org edge-lab --server https://127.0.0.1:8000

With an https server the certificate ``edgeslim up`` generated in the data folder is pinned;
plain http is allowed to a loopback address only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from device_registry import services, signing
from device_registry.models import Device
from device_registry.public_url import is_loopback
from device_registry.server_tls import CERT_FILE, fingerprint_of_pem, tls_dir
from edgeslim_agent import cli
from edgeslim_agent.config import AgentConfig
from edgeslim_agent.trust import TrustedKey, TrustStore
from webapp.accounts.models import Organization


class Command(BaseCommand):
    help = "Register this worker host as a device of an organisation and run the agent on it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organisation slug")
        parser.add_argument("--name", default="worker-host", help="device name")
        parser.add_argument("--server", default="https://127.0.0.1:8000", help="the studio's URL")
        parser.add_argument("--state-dir", type=Path, default=None)
        parser.add_argument(
            "--setup-only", action="store_true", help="write the credential, do not run"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        org = Organization.objects.filter(slug=opts["org"]).first()
        if org is None:
            raise CommandError(f"no organisation with slug {opts['org']!r}")
        device = Device.objects.filter(organization=org, is_host=True, name=opts["name"]).first()
        if device is None:
            device, _code = services.device_register(
                organization=org, name=opts["name"], hardware="worker host", tags=["host"]
            )
            device.is_host = True
            device.save(update_fields=["is_host"])
        credential = services.device_host_credential(device=device)
        # An https studio on this host: pin the certificate edgeslim up generated here.
        cert_file = tls_dir(Path(settings.DATA_DIR)) / CERT_FILE
        https = opts["server"].startswith("https://")
        cert_pem = cert_file.read_text() if https and cert_file.exists() else ""
        state_dir: Path = opts["state_dir"] or Path(settings.DATA_DIR) / "host-agent" / str(
            device.pk
        )
        AgentConfig(
            server=opts["server"].rstrip("/"),
            device_id=device.pk,
            device_name=device.name,
            credential=credential,
            server_public_key=signing.public_key_b64(),
            tls_fingerprint=fingerprint_of_pem(cert_pem.encode()) if cert_pem else "",
            tls_cert=cert_pem,
        ).save(state_dir)
        TrustStore([TrustedKey.from_dict(k) for k in signing.trusted_keys()]).save(state_dir)
        self.stdout.write(f"host device {device.pk} ({device.name}); state in {state_dir}")
        if opts["setup_only"]:
            return
        # The host agent runs beside the studio: plain http is allowed to a loopback address only.
        code = cli.run(state_dir, insecure_http=is_loopback(opts["server"]))
        if code:
            raise CommandError(f"the host agent stopped with exit code {code}")
