"""Routing: catalog tasks go to their own queue, so an upload never waits behind a job."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from workers import catalog_tasks
from workers.celery import CATALOG_QUEUE, app
from workers.jobs_tasks import job_run


def _queue_of(task_name: str, **options: object) -> str:
    route = app.amqp.router.route(dict(options), task_name, (), {})
    return str(route["queue"].name)


@pytest.mark.parametrize(
    "task", [catalog_tasks.model_version_inspect, catalog_tasks.dataset_validate]
)
def test_inspections_and_validations_are_routed_to_the_catalog_queue(task) -> None:  # type: ignore[no-untyped-def]
    assert task.name.startswith("catalog.")
    assert _queue_of(task.name) == CATALOG_QUEUE == "catalog"


def test_every_catalog_task_goes_to_the_catalog_queue_and_jobs_do_not() -> None:
    catalog_names = [n for n in app.tasks if n.startswith("catalog.")]
    assert {"catalog.model_version_inspect", "catalog.dataset_validate"} <= set(catalog_names)
    assert {_queue_of(n) for n in catalog_names} == {"catalog"}
    # A job keeps the queue it is sent to (cpu or gpu), and defaults to cpu.
    assert _queue_of(job_run.name) == "cpu"
    assert _queue_of(job_run.name, queue="gpu") == "gpu"
    assert {q.name for q in app.conf.task_queues} == {"cpu", "gpu", "catalog"}


def test_an_inspection_lands_on_the_catalog_list_in_the_real_broker() -> None:
    # A producer with a key prefix of its own: the suite's session-wide worker consumes the
    # suite's prefix and would take the message before it could be seen on the list.
    prefix = f"edgeslim-routing-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = [f"{prefix}{q}" for q in ("catalog", "cpu", "gpu")]
    with app.connection_for_write() as conn:
        conn.transport_options.update({"global_keyprefix": prefix})
        try:
            catalog_tasks.model_version_inspect.apply_async((10**12,), connection=conn)
            assert client.llen(f"{prefix}catalog") == 1
            assert client.llen(f"{prefix}cpu") == client.llen(f"{prefix}gpu") == 0
            message = json.loads(client.lindex(f"{prefix}catalog", 0) or b"{}")
            assert message["headers"]["task"] == "catalog.model_version_inspect"
        finally:
            client.delete(*keys)
            client.close()
