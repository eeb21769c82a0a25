"""The agents' websocket: ``/ws/agent/``, authenticated by ``Authorization: Device <credential>``.

One live connection per device: a new one evicts the old (logged). Frames are capped at
``MAX_MESSAGE_BYTES`` and each connection has a token-bucket message budget; a breach closes
the socket, so a misbehaving agent cannot grow the server's memory. Control messages (deploy,
revoke, evict) arrive through :mod:`device_registry.bus`, not a channel-layer channel (see
there why); results and progress go to the browsers through the channel layer's org group.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from device_registry import bus, conf, selectors, services
from edgeslim_agent.protocol import (
    AGENT_MESSAGES,
    CANCEL_AGENT,
    CLOSE_EVICTED,
    CLOSE_PROTOCOL,
    CLOSE_RATE,
    CLOSE_REENROLLED,
    CLOSE_REVOKED,
    CLOSE_TOO_BIG,
    MAX_MESSAGE_BYTES,
    Ack,
    Cancel,
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
T = TypeVar("T")

SEEN_WRITE_EVERY_S = 30.0  # last_seen is written at most this often per connection
SEEN_FLUSH_EVERY_S = 5.0  # heartbeats of all sockets are written together, this often


class _SeenBatcher:
    """Collects heartbeats of one event loop's sockets and handles them together.

    A thousand agents would otherwise cost a thousand small writes per heartbeat period in
    the one database thread the sockets share. Each flush writes ``last_seen`` in one UPDATE and
    checks every device that sent a heartbeat since the last flush, in two more queries, for
    what a missed bus message would have told it: a revocation or re-enrollment (its socket
    closes) and deployments still pending on it that this socket never sent (they are sent now).
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.check: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, device_id: int, *, write_seen: bool) -> None:
        self.check.add(device_id)
        if write_seen:
            self.seen.add(device_id)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.check:
            await asyncio.sleep(SEEN_FLUSH_EVERY_S)
            seen, self.seen = sorted(self.seen), set()
            check, self.check = sorted(self.check), set()
            try:
                found = await db(services.devices_heartbeat)(seen_ids=seen, check_ids=check)
            except Exception:
                log.warning("could not record heartbeats", exc_info=True)
                continue
            for device_id, state in found.items():
                for listener in bus.local_listeners(device_id):
                    if isinstance(listener, AgentConsumer):
                        await listener.heartbeat_checked(state)


_seen: dict[asyncio.AbstractEventLoop, _SeenBatcher] = {}

BROADCAST_EVERY_S = 0.1  # browser events of one process are coalesced for this long
BROADCAST_MAX_EVENTS = 100  # at most this many events in one ``batch`` event


class _OrgBroadcaster:
    """Coalesces one event loop's browser events into at most one message per org per tick.

    A thousand agents streaming results would otherwise put one channel-layer message per
    result through the browser socket's single receive loop, which delivers each message after
    several sequential Redis round trips: under load the queue grew by seconds. One ``batch``
    event per 100 ms keeps that queue short; a lone event is sent as itself.
    """

    def __init__(self) -> None:
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, organization_id: int, kind: str, payload: dict[str, Any]) -> None:
        self.pending.setdefault(organization_id, []).append(
            org_event_build(kind=kind, payload=payload)
        )
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        layer = get_channel_layer()
        while self.pending:
            await asyncio.sleep(BROADCAST_EVERY_S)
            pending, self.pending = self.pending, {}
            for organization_id, events in pending.items():
                for start in range(0, len(events), BROADCAST_MAX_EVENTS):
                    chunk = events[start : start + BROADCAST_MAX_EVENTS]
                    message = chunk[0] if len(chunk) == 1 else org_event_build(
                        kind="batch",
                        payload={"events": [
                            {"kind": e["kind"], "payload": e["payload"], "ts": e["ts"]}
                            for e in chunk
                        ]},
                    )  # fmt: skip
                    if layer is None:
                        continue
                    try:
                        await layer.group_send(org_group_name(organization_id), message)
                    except Exception:
                        log.warning("could not broadcast to org %s", organization_id,
                                    exc_info=True)  # fmt: skip


_broadcasters: dict[asyncio.AbstractEventLoop, _OrgBroadcaster] = {}


def _broadcaster() -> _OrgBroadcaster:
    loop = asyncio.get_running_loop()
    if loop not in _broadcasters:
        for old in [lp for lp in _broadcasters if lp.is_closed()]:
            del _broadcasters[old]
        _broadcasters[loop] = _OrgBroadcaster()
    return _broadcasters[loop]


def _seen_batcher() -> _SeenBatcher:
    loop = asyncio.get_running_loop()
    if loop not in _seen:
        for old in [lp for lp in _seen if lp.is_closed()]:
            del _seen[old]
        _seen[loop] = _SeenBatcher()
    return _seen[loop]


def db(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Run a service in the one thread-sensitive thread, keeping its database connection.

    ``channels.db.database_sync_to_async`` closes the connection around every call (the settings
    use CONN_MAX_AGE=0), which costs a new PostgreSQL connection per agent message; a fleet
    sends many small messages, so the connection is kept and dropped only when it failed.
    """

    def guarded(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError):
            connection.close()
            raise
        except DatabaseError:
            if connection.needs_rollback or not connection.is_usable():
                connection.close()
            raise

    return sync_to_async(guarded, thread_sensitive=True)


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
                return str(credential.strip())
    return None


class AgentConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    # No channel-layer channel per agent socket (see device_registry.bus): an alias that is not
    # configured gives no layer, so channels starts no receive loop for this consumer.
    channel_layer_alias = "edgeslim-agents-use-the-device-bus"
    device_id: int | None = None
    registered = False
    organization_id: int = 0
    device_name: str = ""
    hello_done = False

    credential_hash: str | None = None
    agent_version = ""

    async def connect(self) -> None:
        credential = _credential_from(self.scope)
        device = None
        if credential is not None:
            device = await db(selectors.device_by_credential)(credential=credential)
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
        self.credential_hash = device.credential_hash
        self.organization_id = device.organization_id
        self.device_name = device.name
        self.channel_name = f"agent.{uuid.uuid4().hex}"  # this connection's identity
        await bus.register(device.pk, self)
        self.registered = True
        # Evict any older connection of this device, in this process or another.
        await bus.publish_async(device.pk, {"type": "evict", "channel": self.channel_name})
        rate, burst = conf.agent_rate()
        self.bucket = TokenBucket(rate, burst)
        self.last_seen_write = 0.0
        self.targets: dict[int, services.TargetInfo] = {}
        self.sent: set[int] = set()  # deployments sent on this connection: never sent twice
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.device_id is None:
            return
        if self.registered:
            self.registered = False
            await bus.unregister(self.device_id, self)
        if self.hello_done:
            payload = await db(services.device_disconnected)(
                device_id=self.device_id, channel=self.channel_name
            )
            if payload is not None:
                await self._broadcast("device.status", payload)

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
            write_seen = now - self.last_seen_write >= SEEN_WRITE_EVERY_S
            if write_seen:
                self.last_seen_write = now
            _seen_batcher().add(self.device_id, write_seen=write_seen)
        elif isinstance(msg, Result):
            info = self.targets.get(msg.deployment_id)
            if info is None:
                info = await db(services.deployment_target_info)(
                    device_id=self.device_id, deployment_id=msg.deployment_id
                )
                if info is not None and len(self.targets) < 64:
                    self.targets[msg.deployment_id] = info
            stored = await db(services.deployment_result_store)(
                device_id=self.device_id, result=msg, info=info
            )
            await self.send(text_data=encode(Ack(deployment_id=msg.deployment_id, seq=msg.seq)))
            if stored.event is not None:
                await self._broadcast("deployment.result", stored.event)
        elif isinstance(msg, Progress):
            payload = await db(services.deployment_progress)(device_id=self.device_id, progress=msg)
            if payload is not None:
                await self._broadcast("deployment.progress", payload)
        elif isinstance(msg, Hello):
            raise ProtocolError("hello was already sent")

    async def _hello(self, msg: Hello) -> None:
        assert self.device_id is not None
        status = await db(services.device_connected)(
            device_id=self.device_id,
            channel=self.channel_name,
            agent_version=msg.agent_version,
            facts=msg.facts,
        )
        pending = await db(selectors.device_pending_deploys)(device_id=self.device_id)
        self.hello_done = True
        self.agent_version = msg.agent_version
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
            self.sent.add(deploy.manifest.deployment_id)
            await self.send(text_data=encode(deploy))
        await self._broadcast("device.status", status)

    async def _broadcast(self, kind: str, payload: dict[str, Any]) -> None:
        _broadcaster().add(self.organization_id, kind, payload)

    # --- control messages from the device bus ---------------------------------------------------

    async def bus_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "evict":
            await self.device_evict(event)
        elif kind == "revoke":
            await self.device_revoke(event)
        elif kind == "reenrolled":
            await self.device_reenrolled()
        elif kind == "deploy":
            await self.device_deploy(event)
        elif kind == "cancel":
            await self.device_cancel(event)

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

    async def device_reenrolled(self) -> None:
        await self._refuse(
            CLOSE_REENROLLED,
            "reenrolled",
            "this device was enrolled again: its credential was replaced; reload it and reconnect",
        )

    async def device_deploy(self, event: dict[str, Any]) -> None:
        # Before hello, the hello's own look-up sends it (or, in a race, the next heartbeat).
        deployment_id = event.get("deployment_id")
        if not self.hello_done or deployment_id in self.sent:
            return
        if isinstance(deployment_id, int):
            self.sent.add(deployment_id)
        await self.send(text_data=str(event["text"]))

    async def device_cancel(self, event: dict[str, Any]) -> None:
        """Tell the agent to drop a cancelled deployment it was sent (agents that know ``cancel``;
        an older one would refuse the unknown message, and finishes the run instead)."""
        deployment_id = event.get("deployment_id")
        if (
            not self.hello_done
            or not isinstance(deployment_id, int)
            or deployment_id not in self.sent
            or not services.agent_at_least(self.agent_version, CANCEL_AGENT)
        ):
            return
        await self.send(text_data=encode(Cancel(deployment_id=deployment_id)))

    async def heartbeat_checked(self, state: services.HeartbeatCheck) -> None:
        """What a heartbeat batch found for this device (see :class:`_SeenBatcher`)."""
        if self.device_id is None or not self.hello_done:
            return
        if state.credential_hash is None:
            await self.device_revoke({"reason": "revoked"})
            return
        if state.credential_hash != self.credential_hash:
            await self.device_reenrolled()
            return
        missed = [d for d in state.pending if d not in self.sent]
        if not missed:
            return
        deploys = await db(selectors.device_deploys)(
            device_id=self.device_id, deployment_ids=missed
        )
        for deploy in deploys:
            deployment_id = deploy.manifest.deployment_id
            if deployment_id in self.sent:  # the bus delivered it meanwhile
                continue
            self.sent.add(deployment_id)
            log.info(
                "device %s: deployment %s was not delivered by the bus; sent on its heartbeat",
                self.device_id,
                deployment_id,
            )
            await self.send(text_data=encode(deploy))
