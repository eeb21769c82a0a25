"""The agents' websocket: ``/ws/agent/``, authenticated by ``Authorization: Device <credential>``.

One live connection per device: a new one evicts the old (logged). Frames are capped at
``MAX_MESSAGE_BYTES`` and each connection has a token-bucket message budget; a breach closes
the socket, so a misbehaving agent cannot grow the server's memory. Revocation closes the
socket at once through the ``device.<id>`` group.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from device_registry import conf, selectors, services
from device_registry.agent.protocol import (
    AGENT_MESSAGES,
    CLOSE_EVICTED,
    CLOSE_PROTOCOL,
    CLOSE_RATE,
    CLOSE_REVOKED,
    CLOSE_TOO_BIG,
    MAX_MESSAGE_BYTES,
    Ack,
    ErrorMessage,
    Heartbeat,
    Hello,
    Message,
    Progress,
    ProtocolError,
    Result,
    Welcome,
    decode,
    encode,
)
from webapp.live.services import org_event_build, org_group_name

log = logging.getLogger("edgeslim.devices.socket")

SEEN_WRITE_EVERY_S = 30.0  # last_seen is written at most this often per connection


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _credential_from(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            scheme, _, credential = text.partition(" ")
            if scheme == "Device" and credential:
                return credential.strip()
    return None


class AgentConsumer(AsyncWebsocketConsumer):
    device_id: int | None = None
    organization_id: int = 0
    device_name: str = ""
    hello_done = False

    async def connect(self) -> None:
        credential = _credential_from(self.scope)
        device = None
        if credential is not None:
            device = await database_sync_to_async(selectors.device_by_credential)(
                credential=credential
            )
        if device is None:
            client = self.scope.get("client") or ["?"]
            log.warning(
                "agent handshake refused from %s: %s",
                client[0],
                "no credential" if credential is None else "unknown or revoked credential",
            )
            await self.close()  # before accept: the handshake answers 403
            return
        self.device_id = device.pk
        self.organization_id = device.organization_id
        self.device_name = device.name
        group = services.device_group(device.pk)
        # Evict an older connection of this device before joining its group.
        await self.channel_layer.group_send(
            group, {"type": "device.evict", "channel": self.channel_name}
        )
        await self.channel_layer.group_add(group, self.channel_name)
        rate, burst = conf.agent_rate()
        self.bucket = TokenBucket(rate, burst)
        self.last_seen_write = 0.0
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.device_id is None:
            return
        await self.channel_layer.group_discard(
            services.device_group(self.device_id), self.channel_name
        )
        if self.hello_done:
            await database_sync_to_async(services.device_disconnected)(
                device_id=self.device_id, channel=self.channel_name
            )

    async def _refuse(self, code: int, error: str, message: str) -> None:
        log.warning("device %s: closing (%s): %s", self.device_id, error, message)
        try:
            await self.send(text_data=encode(ErrorMessage(code=error, message=message[:500])))
        except ProtocolError:  # pragma: no cover - the message is short
            pass
        await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.device_id is None:
            return
        if not self.bucket.take():
            await self._refuse(CLOSE_RATE, "rate_limited", "too many messages")
            return
        if text_data is None:
            await self._refuse(
                CLOSE_PROTOCOL, "binary", "binary frames are not part of the protocol"
            )
            return
        if len(text_data) > MAX_MESSAGE_BYTES or len(text_data.encode()) > MAX_MESSAGE_BYTES:
            await self._refuse(
                CLOSE_TOO_BIG, "too_big", f"frames are capped at {MAX_MESSAGE_BYTES}"
            )
            return
        try:
            msg = decode(text_data, allowed=AGENT_MESSAGES)
            await self._dispatch(msg)
        except ProtocolError as exc:
            await self._refuse(CLOSE_PROTOCOL, "protocol", str(exc))

    async def _dispatch(self, msg: Message) -> None:
        assert self.device_id is not None
        if not self.hello_done:
            if not isinstance(msg, Hello):
                raise ProtocolError("the first message must be hello")
            await self._hello(msg)
            return
        if isinstance(msg, Heartbeat):
            now = time.monotonic()
            if now - self.last_seen_write >= SEEN_WRITE_EVERY_S:
                self.last_seen_write = now
                await database_sync_to_async(services.device_seen)(device_id=self.device_id)
        elif isinstance(msg, Result):
            stored = await database_sync_to_async(services.deployment_result_store)(
                device_id=self.device_id, result=msg
            )
            await self.send(text_data=encode(Ack(deployment_id=msg.deployment_id, seq=msg.seq)))
            if stored.event is not None:
                await self._broadcast("deployment.result", stored.event)
        elif isinstance(msg, Progress):
            payload = await database_sync_to_async(services.deployment_progress)(
                device_id=self.device_id, progress=msg
            )
            if payload is not None:
                await self._broadcast("deployment.progress", payload)
        elif isinstance(msg, Hello):
            raise ProtocolError("hello was already sent")

    async def _hello(self, msg: Hello) -> None:
        assert self.device_id is not None
        await database_sync_to_async(services.device_connected)(
            device_id=self.device_id,
            channel=self.channel_name,
            agent_version=msg.agent_version,
            facts=msg.facts,
        )
        pending = await database_sync_to_async(selectors.device_pending_deploys)(
            device_id=self.device_id
        )
        self.hello_done = True
        self.last_seen_write = time.monotonic()
        await self.send(
            text_data=encode(
                Welcome(
                    device_id=self.device_id,
                    device_name=self.device_name,
                    heartbeat_s=conf.heartbeat_s(),
                    server_time=time.time(),
                )
            )
        )
        for deploy in pending:
            await self.send(text_data=encode(deploy))

    async def _broadcast(self, kind: str, payload: dict[str, Any]) -> None:
        await self.channel_layer.group_send(
            org_group_name(self.organization_id), org_event_build(kind=kind, payload=payload)
        )

    # --- group messages ------------------------------------------------------------------------

    async def device_evict(self, event: dict[str, Any]) -> None:
        if event.get("channel") == self.channel_name:
            return
        log.warning(
            "device %s (%s): a new connection with the same identity evicts this one",
            self.device_id,
            self.device_name,
        )
        await self._refuse(CLOSE_EVICTED, "evicted", "a newer connection of this device took over")

    async def device_revoke(self, event: dict[str, Any]) -> None:
        await self._refuse(CLOSE_REVOKED, "revoked", f"credential {event.get('reason', 'revoked')}")

    async def device_deploy(self, event: dict[str, Any]) -> None:
        if self.hello_done:
            await self.send(text_data=str(event["text"]))
