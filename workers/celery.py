"""The Celery app and the worker bootstrap. Broker: ``REDIS_URL`` (an embedded Redis under
``edgeslim up``).

Tasks live in each Django app's ``tasks.py`` (``webapp/jobs/tasks.py``, ``webapp/catalog/tasks.py``,
``webapp/live/tasks.py``), found by autodiscovery over ``INSTALLED_APPS``. Web code sends them by
name (``app.send_task``), so this package imports nothing of the web layer.

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
# Every task named ``catalog.*`` (webapp/catalog/tasks.py) goes to the catalog queue, whoever
# enqueues it; jobs pick ``cpu`` or ``gpu`` when they are sent (webapp.jobs.services._enqueue).
app.conf.task_routes = {"catalog.*": {"queue": CATALOG_QUEUE}}
# Each installed app's tasks.py, imported when the worker starts (lazily: the web process, which
# only sends tasks by name, never imports them through this module).
app.autodiscover_tasks()

# Worker bootstrap: on start a worker reports what it runs on (signal handlers).
from workers import worker_device  # noqa: E402, F401
