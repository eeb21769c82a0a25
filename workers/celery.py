"""The Celery app and the worker bootstrap. Broker: ``REDIS_URL`` (an embedded Redis under
``edgeslim up``).

Tasks live in each Django app's ``tasks.py`` (``webapp/jobs/tasks.py``, ``webapp/catalog/tasks.py``,
``webapp/live/tasks.py``), found by autodiscovery over ``INSTALLED_APPS``. Web code sends them by
name (``app.send_task``), so this package imports nothing of the web layer.

Queues: ``gpu`` for jobs that want CUDA, ``cpu`` for the other jobs, ``catalog`` for the
catalog tasks (inspecting an upload, validating a data set), so an upload never waits behind a
compression job, and ``maintenance`` for the periodic sweeps that Celery beat sends
(``CELERY_BEAT_SCHEDULE`` in settings: the jobs reaper, stuck inspections, abandoned uploads,
expired deployments), so a sweep never waits behind a job or a ten-minute inspection.
``edgeslim up`` runs a job worker on ``cpu,gpu``, a worker on ``catalog`` and the maintenance
worker (``-Q maintenance -B``: beat runs inside it, so there is exactly one beat); docker compose
has ``worker-catalog`` and ``maintenance`` services.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("edgeslim")
app.config_from_object("django.conf:settings", namespace="CELERY")
CATALOG_QUEUE = "catalog"
MAINTENANCE_QUEUE = "maintenance"
# The sweeps beat sends (names as in settings.CELERY_BEAT_SCHEDULE); quick database passes.
MAINTENANCE_TASKS = (
    "edgeslim.jobs_reap",
    "catalog.inspections_reap",
    "catalog.uploads_cleanup",
    "devices.deployments_expire",
)
app.conf.task_queues = (Queue("cpu"), Queue("gpu"), Queue(CATALOG_QUEUE), Queue(MAINTENANCE_QUEUE))
# The sweeps go to the maintenance queue (exact names win over the glob); every other task named
# ``catalog.*`` (webapp/catalog/tasks.py) to the catalog queue, whoever enqueues it; jobs pick
# ``cpu`` or ``gpu`` when they are sent (webapp.jobs.services._enqueue).
app.conf.task_routes = {
    **{name: {"queue": MAINTENANCE_QUEUE} for name in MAINTENANCE_TASKS},
    "catalog.*": {"queue": CATALOG_QUEUE},
}
# Each installed app's tasks.py, imported when the worker starts (lazily: the web process, which
# only sends tasks by name, never imports them through this module).
app.autodiscover_tasks()

# Worker bootstrap: on start a worker reports what it runs on (signal handlers).
from workers import worker_device  # noqa: E402, F401
