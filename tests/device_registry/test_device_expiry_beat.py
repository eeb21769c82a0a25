"""The expiry runs by itself: the maintenance worker that ``edgeslim up`` starts, with Celery beat
inside it, times out a silent device's target and ends its deployment with nobody reading a page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import redis
from agent_process import wait_for
from device_factories import artifact, deployment, enrolled_device
from django.conf import settings
from django.utils import timezone
from stack import subprocess_env

from device_registry import tasks
from device_registry.models import Deployment, DeploymentTarget
from webapp.cli.up import maintenance_worker_argv
from workers.celery import MAINTENANCE_QUEUE
from workers.celery import app as celery_app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_beat_schedules_the_expiry_on_the_maintenance_queue():
    entries = [
        e
        for e in settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == tasks.DEPLOYMENTS_EXPIRE_TASK
    ]
    assert len(entries) == 1
    assert entries[0]["schedule"] == settings.EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S == 60
    route = celery_app.amqp.router.route({}, tasks.DEPLOYMENTS_EXPIRE_TASK, (), {})
    assert route["queue"].name == MAINTENANCE_QUEUE


def test_the_maintenance_worker_expires_a_silent_deployment_on_its_own(tmp_path):
    device, _ = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device)
    Deployment.objects.filter(pk=dep.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    prefix = f"edgeslim-expiry-{uuid.uuid4().hex[:8]}:"
    env = subprocess_env()
    env["EDGESLIM_BROKER_PREFIX"] = prefix  # this worker's queues are its own
    env["EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S"] = "1"
    log = tmp_path / "maintenance.log"
    argv = maintenance_worker_argv(sys.executable, tmp_path, f"expiry-{uuid.uuid4().hex[:6]}")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        target = wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=dep, status="timed_out").first(),
            timeout=120, what="beat to expire the deployment",
            log=lambda: log.read_text(errors="replace"),
        )  # fmt: skip
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert "never answered" in target.message
    dep.refresh_from_db()
    assert dep.ended_at is not None
    assert tasks.DEPLOYMENTS_EXPIRE_TASK in log.read_text(errors="replace")
