"""The browser's live socket: one organisation's events, relayed as they come."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from webapp.accounts.middleware import preferred_org_id
from webapp.accounts.selectors import membership_current
from webapp.live.services import org_event_build, org_group_name

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_MESSAGE = 4400
MAX_CLIENT_MESSAGE_BYTES = 1024


def _current_organization_id(user: Any, session: Any) -> int | None:
    membership = membership_current(user=user, preferred_org_id=preferred_org_id(session))
    return membership.organization_id if membership is not None else None


class BrowserGroupConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """What every browser socket shares: it leaves its group on disconnect, and the only
    client message it takes is ``{"type": "ping"}`` (answered with a pong); anything else,
    binary or larger than 1 KiB closes the socket with 4400. Subclasses authenticate in
    ``connect`` and set ``group_name`` before joining."""

    group_name: str | None = None

    async def disconnect(self, code: int) -> None:
        if self.group_name is not None:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None or len(text_data.encode()) > MAX_CLIENT_MESSAGE_BYTES:
            await self.close(code=CLOSE_BAD_MESSAGE)
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.close(code=CLOSE_BAD_MESSAGE)
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"kind": "pong", "payload": {}})
            return
        await self.close(code=CLOSE_BAD_MESSAGE)


class OrgEventsConsumer(BrowserGroupConsumer):
    """Joins ``org.<id>`` for the user's current organisation; relays ``org.event`` messages.

    Client messages: see :class:`BrowserGroupConsumer`.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        organization_id: int | None = await database_sync_to_async(_current_organization_id)(
            user, self.scope.get("session")
        )
        if organization_id is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group_name = org_group_name(organization_id)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        hello = org_event_build(kind="hello", payload={"organization_id": organization_id})
        await self.org_event(hello)

    async def org_event(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {"kind": message["kind"], "payload": message["payload"], "ts": message["ts"]}
        )
