"""The browser's live socket: one organisation's events, relayed as they come."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from webapp.accounts.access import user_access_group
from webapp.accounts.middleware import preferred_org_id
from webapp.accounts.selectors import membership_current
from webapp.live.services import org_event_build, org_group_name

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_MESSAGE = 4400
# The user's access changed (a role, a membership): reconnect, and the handshake re-authorises.
CLOSE_ACCESS_CHANGED = 4409
MAX_CLIENT_MESSAGE_BYTES = 1024


def _current_organization_id(user: Any, session: Any) -> int | None:
    membership = membership_current(user=user, preferred_org_id=preferred_org_id(session))
    return membership.organization_id if membership is not None else None


class BrowserGroupConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """What every browser socket shares: it leaves its groups on disconnect, and the only
    client message it takes is ``{"type": "ping"}`` (answered with a pong); anything else,
    binary or larger than 1 KiB closes the socket with 4400. Subclasses authenticate in
    ``connect``, set ``group_name`` and call :meth:`join` (which also joins the user's access
    group) before accepting.

    Access follows the user (``webapp.accounts.access``): a logout of this socket's session or a
    password change elsewhere closes it with 4401; a removed or deactivated user's sockets close
    with 4403; a membership or role change closes them with 4409, and the page reconnects."""

    group_name: str | None = None
    access_group: str | None = None
    session_key: str | None = None

    async def join(self, group_name: str) -> None:
        user = self.scope["user"]
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.group_name = group_name
        self.access_group = user_access_group(user.pk)
        await self.channel_layer.group_add(self.access_group, self.channel_name)
        await self.channel_layer.group_add(self.group_name, self.channel_name)

    async def disconnect(self, code: int) -> None:
        for group in (self.group_name, self.access_group):
            if group is not None:
                await self.channel_layer.group_discard(group, self.channel_name)

    async def access_changed(self, message: dict[str, Any]) -> None:
        reason = message.get("reason")
        if reason == "logout":
            if message.get("session_key") == self.session_key:
                await self.close(code=CLOSE_UNAUTHENTICATED)
        elif reason == "password":
            if message.get("keep_session_key") != self.session_key:
                await self.close(code=CLOSE_UNAUTHENTICATED)
        elif reason == "deactivated":
            await self.close(code=CLOSE_FORBIDDEN)
        else:  # membership: added, removed or a new role
            await self.close(code=CLOSE_ACCESS_CHANGED)

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
        await self.join(org_group_name(organization_id))
        await self.accept()
        hello = org_event_build(kind="hello", payload={"organization_id": organization_id})
        await self.org_event(hello)

    async def org_event(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {"kind": message["kind"], "payload": message["payload"], "ts": message["ts"]}
        )
