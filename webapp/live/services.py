"""Broadcast an event to everyone watching an organisation (the one way events flow:
service or task → group_send → consumer → send_json)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

EVENT_TYPE = "org.event"


def org_group_name(organization_id: int) -> str:
    """The channel-layer group of one organisation's browsers: ``org.<id>``."""
    return f"org.{int(organization_id)}"


def org_event_build(*, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": EVENT_TYPE, "kind": kind, "payload": payload, "ts": timezone.now().isoformat()}


def org_event_send(*, organization_id: int, kind: str, payload: dict[str, Any]) -> None:
    """Send ``{kind, payload, ts}`` to the organisation's group. Call from sync code only."""
    channel_layer = get_channel_layer()
    if channel_layer is None:
        raise RuntimeError("No channel layer configured (settings.CHANNEL_LAYERS).")
    async_to_sync(channel_layer.group_send)(
        org_group_name(organization_id), org_event_build(kind=kind, payload=payload)
    )
