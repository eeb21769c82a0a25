"""The Celery app. Broker: ``REDIS_URL`` (an embedded Redis under ``edgeslim up``).

Queues: ``gpu`` for jobs that want CUDA, ``cpu`` for the other jobs, and ``catalog`` for the
short catalog tasks (inspecting an upload, validating a data set, cleaning up uploads), so an
upload never waits behind a compression job. ``edgeslim up`` runs a job worker on ``cpu,gpu``
and a second worker process on ``catalog``; docker compose has a ``worker-catalog`` service.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("edgeslim")
app.config_from_object("django.conf:settings", namespace="CELERY")
CATALOG_QUEUE = "catalog"
app.conf.task_queues = (Queue("cpu"), Queue("gpu"), Queue(CATALOG_QUEUE))
# Every task named ``catalog.*`` (workers/catalog_tasks.py) goes to the catalog queue, whoever
# enqueues it; jobs pick ``cpu`` or ``gpu`` when they are sent (webapp.jobs.services._enqueue).
app.conf.task_routes = {"catalog.*": {"queue": CATALOG_QUEUE}}
app.autodiscover_tasks(["workers"])
app.autodiscover_tasks(["workers"], related_name="catalog_tasks")
app.autodiscover_tasks(["workers"], related_name="jobs_tasks")
