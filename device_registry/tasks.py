"""The device registry's Celery tasks. Thin: each calls a service.

``devices.deployments_expire`` runs on Celery beat's schedule (``workers/celery.py``): targets of a
deployment past its deadline are marked timed out and the deployments whose targets all ended are
ended. Pages and the API apply the same expiry to their organisation when they are read, so what
they show never waits for the next beat.
"""

from __future__ import annotations

from device_registry import services
from workers.celery import app

DEPLOYMENTS_EXPIRE_TASK = "devices.deployments_expire"


@app.task(name=DEPLOYMENTS_EXPIRE_TASK, ignore_result=True)
def deployments_expire() -> int:
    """Returns how many targets were marked timed out."""
    return services.deployments_expire().timed_out
