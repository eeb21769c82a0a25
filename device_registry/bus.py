"""Per-device control messages (deploy, revoke, evict) over one Redis pub/sub per process.

Each agent socket would otherwise be a channel-layer consumer with its own receive loop, and a
thousand of them in one process contend for channels_redis's single receive lock: browser
events then queued for seconds behind it. Agent sockets therefore take no channel-layer
channel at all; one pattern subscription per process fans control messages out to the
sockets of that process by device id. Pub/sub is fire-and-forget, so the socket also re-checks
revocation in the database with each heartbeat write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger("edgeslim.devices.bus")


class BusListener(Protocol):
    async def bus_event(self, event: dict[str, Any]) -> None: ...


def _prefix() -> str:
    layers: dict[str, Any] = settings.CHANNEL_LAYERS
    config = layers.get("default", {}).get("CONFIG", {})
    return f"{config.get('prefix', 'edgeslim')}:devbus:"


def _url() -> str:
    return str(settings.REDIS_URL)


def device_topic(device_id: int) -> str:
    return f"{_prefix()}{int(device_id)}"


_sync_client: redis.Redis | None = None


def publish(device_id: int, event: dict[str, Any]) -> None:
    """Send a control message to a device's live socket, wherever it is (sync code)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(_url())
    try:
        _sync_client.publish(device_topic(device_id), json.dumps(event))
    except redis.RedisError:
        log.warning("could not publish %s to device %s", event.get("type"), device_id,
                    exc_info=True)  # fmt: skip


class _LoopBus:
    """The subscription and the registry of one event loop (one per daphne process)."""

    def __init__(self) -> None:
        self.listeners: dict[int, set[BusListener]] = defaultdict(set)
        self.client = aioredis.Redis.from_url(_url())
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.task is None or self.task.done():
            self.ready.clear()
            self.task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self.ready.wait(), timeout=10)

    async def _listen(self) -> None:
        prefix = _prefix()
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.psubscribe(prefix + "*")
                self.ready.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"].decode()
                    try:
                        device_id = int(channel.removeprefix(prefix))
                        event = json.loads(msg["data"])
                    except ValueError:
                        continue
                    for listener in list(self.listeners.get(device_id, ())):
                        task = asyncio.create_task(listener.bus_event(event))
                        self.pending.add(task)
                        task.add_done_callback(self.pending.discard)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                raise
            except (redis.RedisError, OSError):
                log.warning("device bus subscription lost; resubscribing", exc_info=True)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        with contextlib.suppress(Exception):
            await self.client.aclose()


_buses: dict[asyncio.AbstractEventLoop, _LoopBus] = {}


async def register(device_id: int, listener: BusListener) -> None:
    loop = asyncio.get_running_loop()
    bus = _buses.get(loop)
    if bus is None:
        bus = _buses[loop] = _LoopBus()
    bus.listeners[device_id].add(listener)
    await bus.start()


async def unregister(device_id: int, listener: BusListener) -> None:
    loop = asyncio.get_running_loop()
    bus = _buses.get(loop)
    if bus is None:
        return
    listeners = bus.listeners.get(device_id)
    if listeners is not None:
        listeners.discard(listener)
        if not listeners:
            del bus.listeners[device_id]
    if not bus.listeners:  # the last socket of this loop: let the loop end cleanly
        del _buses[loop]
        await bus.stop()


def local_listeners(device_id: int) -> list[BusListener]:
    """The sockets of ``device_id`` served by this event loop."""
    bus = _buses.get(asyncio.get_running_loop())
    return list(bus.listeners.get(device_id, ())) if bus is not None else []


def has_local_listeners() -> bool:
    bus = _buses.get(asyncio.get_running_loop())
    return bool(bus and bus.listeners)


async def publish_async(device_id: int, event: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    bus = _buses.get(loop)
    if bus is None:
        await asyncio.to_thread(publish, device_id, event)
        return
    await bus.client.publish(device_topic(device_id), json.dumps(event))
