"""The live app's Celery tasks. Each is thin: it takes ids and plain values, and calls a service."""

from __future__ import annotations

from webapp.live.services import org_event_send
from workers.celery import app


@app.task(name="edgeslim.org_ping", ignore_result=True)
def org_ping(organization_id: int, message: str) -> None:
    """Broadcast a ``ping`` event to an organisation (proves worker → browser end to end)."""
    org_event_send(organization_id=organization_id, kind="ping", payload={"message": message})
