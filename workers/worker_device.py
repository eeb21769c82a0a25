"""A worker says what it runs on: on start it writes ``{hostname, cuda, device, queues}`` to a
Redis hash that the web side reads to route jobs (``gpu`` only when a CUDA worker consumes it),
and refreshes it every 30 s until it stops."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

logger = logging.getLogger(__name__)

REFRESH_S = 30.0
TTL_S = 90.0

_stop = threading.Event()
_state: dict[str, Any] = {}


def registry_key() -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "edgeslim")
    return f"{prefix}:workers"


def device_report() -> dict[str, Any]:
    """What this process can run on: CUDA and the GPU's name when present."""
    import torch

    cuda = bool(torch.cuda.is_available())
    return {
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_count": torch.cuda.device_count() if cuda else 0,
    }


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _write(hostname: str, info: dict[str, Any]) -> None:
    record = {**info, "hostname": hostname, "expires": time.time() + TTL_S}
    client = _client()
    try:
        client.hset(registry_key(), hostname, json.dumps(record))
    finally:
        client.close()


def _refresh_loop(hostname: str, info: dict[str, Any]) -> None:
    while not _stop.wait(REFRESH_S):
        try:
            _write(hostname, info)
        except redis.RedisError:
            logger.warning("worker %s: device report failed; retrying", hostname)


@worker_ready.connect
def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    hostname = str(getattr(sender, "hostname", "") or "worker")
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues)
    except AttributeError:
        queues = []
    info = {**device_report(), "queues": queues}
    _state.update(hostname=hostname, info=info)
    try:
        _write(hostname, info)
    except redis.RedisError:
        logger.warning("worker %s: could not report its device", hostname)
    logger.info("worker %s ready: %s", hostname, info)
    threading.Thread(target=_refresh_loop, args=(hostname, info), daemon=True).start()


@worker_shutdown.connect
def on_worker_shutdown(**kwargs: Any) -> None:
    _stop.set()
    hostname = _state.get("hostname")
    if hostname:
        try:
            client = _client()
            client.hdel(registry_key(), hostname)
            client.close()
        except redis.RedisError:
            pass
