"""The Celery app. Broker: ``REDIS_URL`` (an embedded Redis under ``edgeslim up``).

Queues: ``gpu`` for jobs that want CUDA, ``cpu`` for everything else. A worker started by
``edgeslim up`` consumes both.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("edgeslim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("cpu"), Queue("gpu"))
app.autodiscover_tasks(["workers"])
app.autodiscover_tasks(["workers"], related_name="catalog_tasks")
app.autodiscover_tasks(["workers"], related_name="jobs_tasks")
