"""Helpers to open the browser socket in tests with ``WebsocketCommunicator`` (real Redis layer)."""

from __future__ import annotations

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from webapp.accounts.models import User

ALLOWED_ORIGIN = "http://127.0.0.1"


def session_cookie_for(user: User, *, organization_id: int | None = None) -> str:
    """A real session cookie (signed in, optionally with the org switcher's choice)."""
    client = Client()
    client.force_login(user)
    if organization_id is not None:
        session = client.session
        session["edgeslim_org_id"] = organization_id
        session.save()
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def communicator(
    path: str = "/ws/org/", *, cookie: str | None = None, origin: str | None = ALLOWED_ORIGIN
) -> WebsocketCommunicator:
    from webapp.asgi import application

    headers = [(b"host", b"127.0.0.1")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, path, headers=headers)
