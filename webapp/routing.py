"""Websocket routes (wrapped in session auth and the Origin check by ``webapp.asgi``)."""

from django.urls import path

from webapp.live.consumers import OrgEventsConsumer

websocket_urlpatterns = [path("ws/org/", OrgEventsConsumer.as_asgi())]
