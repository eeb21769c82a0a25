"""Websocket routes (wrapped in session auth and the Origin check by ``webapp.asgi``)."""

from django.urls import path

from device_registry.consumers import AgentConsumer
from webapp.jobs.consumers import JobConsumer, SweepConsumer
from webapp.live.consumers import OrgEventsConsumer

websocket_urlpatterns = [
    path("ws/org/", OrgEventsConsumer.as_asgi()),
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/sweeps/<int:sweep_id>/", SweepConsumer.as_asgi()),
]
