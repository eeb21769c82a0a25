"""Routing: catalog tasks go to their own queue, so an upload never waits behind a job."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from webapp.catalog import tasks as catalog_tasks
from webapp.jobs.tasks import job_run
from workers.celery import CATALOG_QUEUE, MAINTENANCE_QUEUE, MAINTENANCE_TASKS, app


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
    catalog_names = [
        n for n in app.tasks if n.startswith("catalog.") and n not in MAINTENANCE_TASKS
    ]
    assert {"catalog.model_version_inspect", "catalog.dataset_validate"} <= set(catalog_names)
    assert {_queue_of(n) for n in catalog_names} == {"catalog"}
    # The sweeps beat sends never wait behind an inspection or a job.
    assert {_queue_of(n) for n in MAINTENANCE_TASKS} == {MAINTENANCE_QUEUE}
    # A job keeps the queue it is sent to (cpu or gpu), and defaults to cpu.
    assert _queue_of(job_run.name) == "cpu"
    assert _queue_of(job_run.name, queue="gpu") == "gpu"
    assert {q.name for q in app.conf.task_queues} == {"cpu", "gpu", "catalog", "maintenance"}


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


def test_the_names_services_send_are_the_tasks_the_apps_register() -> None:
    from webapp.catalog import services as catalog_services
    from webapp.jobs import services as job_services
    from webapp.live import tasks as live_tasks

    # Task names are part of the broker's contract with queued messages: they never change.
    assert job_services.JOB_RUN_TASK == job_run.name == "edgeslim.job_run"
    assert live_tasks.org_ping.name == "edgeslim.org_ping"
    assert {
        catalog_services.MODEL_VERSION_INSPECT_TASK: catalog_tasks.model_version_inspect,
        catalog_services.DATASET_VALIDATE_TASK: catalog_tasks.dataset_validate,
        catalog_services.UPLOADS_CLEANUP_TASK: catalog_tasks.uploads_cleanup,
    } == {
        "catalog.model_version_inspect": app.tasks["catalog.model_version_inspect"],
        "catalog.dataset_validate": app.tasks["catalog.dataset_validate"],
        "catalog.uploads_cleanup": app.tasks["catalog.uploads_cleanup"],
    }


def test_a_worker_finds_every_apps_tasks_by_autodiscovery() -> None:
    # What `celery -A workers.celery worker` imports, in a fresh interpreter that has imported
    # no task module yet: the worker app alone must register every task.
    import subprocess
    import sys

    code = (
        "import django; django.setup(); import sys; from workers.celery import app; "
        "assert not any(m.endswith('.tasks') for m in sys.modules if m.startswith('webapp')); "
        "app.loader.import_default_modules(); "
        "print(sorted(n for n in app.tasks if not n.startswith('celery.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(
        sorted(
            [
                "catalog.dataset_validate",
                "catalog.inspections_reap",
                "catalog.model_version_inspect",
                "catalog.uploads_cleanup",
                "devices.deployments_expire",
                "edgeslim.job_run",
                "edgeslim.jobs_reap",
                "edgeslim.org_ping",
                "edgeslim.sensitivity_run",
                "edgeslim.sweep_baseline",
            ]
        )
    )
