"""The live job page's socket: ``/ws/jobs/<id>/`` joins ``job.<id>`` and relays its events.

Session-authenticated; the job must belong to an organisation the user is a member of (else
the handshake is closed, the same as for a job that does not exist). ``?after=<seq>`` first
replays persisted events after that seq, so nothing between page render and connect is lost;
the page skips any seq it has already drawn.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from webapp.accounts.models import Membership
from webapp.jobs.models import Job, Sweep
from webapp.jobs.selectors import job_event_list
from webapp.jobs.services import job_event_message, job_group_name, sweep_group_name
from webapp.live.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, BrowserGroupConsumer

REPLAY_LIMIT = 2000


@database_sync_to_async  # type: ignore[untyped-decorator,unused-ignore]
def _row_for_member(model: Any, user: Any, pk: int) -> Any:
    """The org-scoped row ``pk`` of ``model`` when ``user`` is a member of its organisation."""
    row = model.objects.filter(pk=pk).only("id", "organization_id").first()
    if row is None:
        return None
    if not Membership.objects.filter(user=user, organization_id=row.organization_id).exists():
        return None
    return row


async def _authorise(consumer: BrowserGroupConsumer, model: Any, kwarg: str) -> Any:
    """The row the socket's URL names, for a signed-in member; else close (4401 / 4403) and
    return None, the same answer for a row that does not exist."""
    user = consumer.scope.get("user")
    if user is None or not user.is_authenticated:
        await consumer.close(code=CLOSE_UNAUTHENTICATED)
        return None
    try:
        pk = int(consumer.scope["url_route"]["kwargs"][kwarg])
    except (KeyError, TypeError, ValueError):
        await consumer.close(code=CLOSE_FORBIDDEN)
        return None
    row = await _row_for_member(model, user, pk)
    if row is None:
        await consumer.close(code=CLOSE_FORBIDDEN)
    return row


@database_sync_to_async  # type: ignore[untyped-decorator,unused-ignore]
def _replay(job: Job, after: int) -> list[dict[str, Any]]:
    return [
        job_event_message(e) for e in job_event_list(job=job, after_seq=after, limit=REPLAY_LIMIT)
    ]


class JobConsumer(BrowserGroupConsumer):
    async def connect(self) -> None:
        job = await _authorise(self, Job, "job_id")
        if job is None:
            return
        await self.join(job_group_name(job.pk))
        await self.accept()
        query = parse_qs((self.scope.get("query_string") or b"").decode("latin-1"))
        after_values = query.get("after", [])
        if after_values and after_values[0].isdigit():
            for message in await _replay(job, int(after_values[0])):
                await self.send_json(message)

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send_json({k: v for k, v in message.items() if k != "type"})


class SweepConsumer(BrowserGroupConsumer):
    """``/ws/sweeps/<id>/`` joins ``sweep.<id>``: a child started or ended, the baseline moved
    on. The page redraws from the server on each message, so nothing needs replaying."""

    async def connect(self) -> None:
        sweep = await _authorise(self, Sweep, "sweep_id")
        if sweep is None:
            return
        await self.join(sweep_group_name(sweep.pk))
        await self.accept()

    async def sweep_event(self, message: dict[str, Any]) -> None:
        await self.send_json({k: v for k, v in message.items() if k != "type"})
