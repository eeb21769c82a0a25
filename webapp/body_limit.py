"""Request bodies are capped, and uploads need a signed-in user, before any body byte is stored.

One policy (:class:`BodyPolicy`) says, per route, how many body bytes a request may carry and
whether it must come from a signed-in user (a session cookie or an API token) before its body is
read. Two layers apply it:

- :class:`BodyLimitMiddleware`, an ASGI middleware in front of Django: it answers 413 from
  ``Content-Length`` and 401 (API) or a redirect to the login page (pages) for an anonymous
  upload without calling ``receive()``, and counts streamed (chunked) bytes as they arrive.
  Django's ASGI handler otherwise reads a whole body into a temporary file before any view runs.
- :func:`install_daphne_guard`: daphne (through Twisted) stores a whole request body in a
  temporary file before it calls the ASGI application at all, so under daphne the same checks
  run in daphne's request object, as soon as the headers are in: an over-cap ``Content-Length``
  is answered at once, a chunked body is cut off at the cap, and an upload waits, with the
  connection paused and nothing stored, until its credentials are checked.

The caps are settings: ``EDGESLIM_MAX_REQUEST_BYTES`` for every route, the upload limit
(``EDGESLIM_MAX_UPLOAD_BYTES`` plus 64 KiB of multipart framing) for the catalog's upload routes
and ``EDGESLIM_MAX_ARTIFACT_BYTES`` (plus framing) for device artifact uploads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger("edgeslim.body_limit")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Django's handler types its arguments more narrowly

MULTIPART_SLACK = 64 * 1024  # multipart framing and the form's other fields
# Upload routes: (method, URL name) -> which cap ("upload" or "artifact").
UPLOAD_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "models"): "upload",
    ("POST", "datasets"): "upload",
    ("POST", "api:catalog-model-list"): "upload",
    ("POST", "api:catalog-dataset-list"): "upload",
    ("PUT", "api:catalog-upload-detail"): "upload",
    ("POST", "devices:artifacts"): "artifact",
}


@dataclass(frozen=True)
class Limit:
    """What one request may send: at most ``max_bytes``; ``upload`` ones only when signed in."""

    max_bytes: int
    upload: bool
    api: bool  # answer in JSON (401) rather than with the login redirect


@dataclass(frozen=True)
class Refusal:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class BodyPolicy:
    default_max_bytes: int
    upload_max_bytes: int
    artifact_max_bytes: int

    @classmethod
    def from_settings(cls) -> BodyPolicy:
        from django.conf import settings

        return cls(
            default_max_bytes=int(settings.EDGESLIM_MAX_REQUEST_BYTES),
            upload_max_bytes=int(settings.EDGESLIM_MAX_UPLOAD_BYTES) + MULTIPART_SLACK,
            artifact_max_bytes=int(settings.EDGESLIM_MAX_ARTIFACT_BYTES) + MULTIPART_SLACK,
        )

    def limit_for(self, method: str, path: str) -> Limit:
        kind = UPLOAD_ROUTES.get((method.upper(), _url_name(path)))
        api = path.startswith("/api/")
        if kind == "upload":
            return Limit(self.upload_max_bytes, True, api)
        if kind == "artifact":
            return Limit(self.artifact_max_bytes, True, api)
        return Limit(self.default_max_bytes, False, api)


@lru_cache(maxsize=2048)
def _url_name(path: str) -> str:
    from django.urls import Resolver404, resolve

    try:
        match = resolve(path)
    except Resolver404:
        return ""
    return str(match.view_name or "")


def too_large(limit: Limit, length: int | None) -> Refusal:
    message = (
        f"The request body is {length} bytes, over this route's limit of {limit.max_bytes} bytes."
        if length is not None
        else f"The request body went past this route's limit of {limit.max_bytes} bytes."
    )
    return _json(413, {"detail": message, "limit": limit.max_bytes})


def sign_in_first(limit: Limit, path: str, *, bad_token: bool = False) -> Refusal:
    if limit.api:
        detail = (
            "Invalid token."
            if bad_token
            else "Authentication credentials were not provided: sign in or send an API token "
            "before uploading."
        )
        refusal = _json(401, {"detail": detail})
        return Refusal(401, [*refusal.headers, (b"www-authenticate", b"Token")], refusal.body)
    from django.conf import settings
    from django.shortcuts import resolve_url

    location = f"{resolve_url(settings.LOGIN_URL)}?next={quote(path)}"
    return Refusal(
        302,
        [(b"location", location.encode("latin-1")), (b"content-length", b"0")],
        b"",
    )


def _json(status: int, data: dict[str, Any]) -> Refusal:
    body = json.dumps(data).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return Refusal(status, headers, body)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    raw = _header(headers, b"content-length")
    if raw is None:
        return None
    try:
        return max(int(raw.strip()), 0)
    except ValueError:
        return None


# --- who is asking -------------------------------------------------------------------------------


def credentials_check(cookie: bytes | None, authorization: bytes | None) -> str:
    """``"ok"`` for an active signed-in user (API token or session), ``"bad_token"`` for a token
    that does not authenticate, ``"anonymous"`` otherwise. Synchronous: it reads the database."""
    from django.contrib.auth import get_user
    from django.http import HttpRequest
    from rest_framework.exceptions import AuthenticationFailed

    from webapp.accounts.authentication import HashedTokenAuthentication

    parts = (authorization or b"").split()
    if parts and parts[0].lower() in (b"token", b"bearer"):
        if len(parts) != 2:
            return "bad_token"
        try:
            HashedTokenAuthentication().authenticate_credentials(parts[1].decode())
        except (AuthenticationFailed, UnicodeError):
            return "bad_token"
        return "ok"
    key = _session_key(cookie)
    if not key:
        return "anonymous"
    from importlib import import_module

    from django.conf import settings

    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user = get_user(request)
    return "ok" if user.is_authenticated and user.is_active else "anonymous"


def _session_key(cookie: bytes | None) -> str:
    from django.conf import settings
    from django.http.cookie import parse_cookie

    if not cookie:
        return ""
    return parse_cookie(cookie.decode("latin-1")).get(settings.SESSION_COOKIE_NAME, "")


async def credentials_check_async(cookie: bytes | None, authorization: bytes | None) -> str:
    from channels.db import database_sync_to_async

    return str(await database_sync_to_async(credentials_check)(cookie, authorization))


# --- the ASGI middleware -------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Caps HTTP request bodies per route and refuses anonymous uploads before ``receive()``."""

    def __init__(self, app: ASGIApp, policy: BodyPolicy | None = None) -> None:
        self.app = app
        self._policy = policy

    @property
    def policy(self) -> BodyPolicy:
        if self._policy is None:
            self._policy = BodyPolicy.from_settings()
        return self._policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        limit = self.policy.limit_for(scope["method"], path)
        headers = scope.get("headers") or []
        length = content_length(headers)
        if length is not None and length > limit.max_bytes:
            await _send_refusal(send, too_large(limit, length))
            return
        if limit.upload:
            who = await credentials_check_async(
                _header(headers, b"cookie"), _header(headers, b"authorization")
            )
            if who != "ok":
                await _send_refusal(send, sign_in_first(limit, path, bad_token=who == "bad_token"))
                return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> MutableMapping[str, Any]:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    refused = True
                    if not started:
                        await _send_refusal(send, too_large(limit, None))
                    # The application sees a client that went away and stops reading.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


async def _send_refusal(send: Send, refusal: Refusal) -> None:
    await send(
        {"type": "http.response.start", "status": refusal.status, "headers": refusal.headers}
    )
    await send({"type": "http.response.body", "body": refusal.body})


# --- daphne --------------------------------------------------------------------------------------

_STATUS_TEXT = {302: b"Found", 401: b"Unauthorized", 413: b"Content Too Large"}
MAX_PENDING_BYTES = 1024 * 1024  # body bytes held in memory while the credentials are checked


def install_daphne_guard(policy: BodyPolicy | None = None) -> bool:
    """Make daphne apply the policy before Twisted stores a body; ``False`` without daphne.

    daphne's HTTP factory builds each request from the module-level ``WebRequest`` of
    ``daphne.http_protocol``; that name is pointed at a subclass that checks the headers in
    ``gotLength`` (called once the headers are in, before any body byte) and counts body bytes
    in ``handleContentChunk``.
    """
    try:
        from daphne import http_protocol
    except ImportError:
        return False

    base = http_protocol.WebRequest
    if getattr(base, "edgeslim_guarded", False):
        return True
    policy_ref: list[BodyPolicy | None] = [policy]

    def current_policy() -> BodyPolicy:
        found = policy_ref[0]
        if found is None:
            found = policy_ref[0] = BodyPolicy.from_settings()
        return found

    class GuardedWebRequest(base):  # type: ignore[misc, valid-type]
        edgeslim_guarded = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._es_limit: Limit | None = None
            self._es_refused = False
            self._es_received = 0
            self._es_pending: list[bytes] | None = None  # body bytes held while checking
            self._es_length: int | None = None
            self._es_expect = False
            self._es_complete: tuple[Any, ...] | None = None
            self._es_path = "/"

        # Twisted calls this once every header is in, before any body byte.
        def gotLength(self, length: int | None) -> None:
            command = getattr(self.channel, "_command", b"GET").decode("latin-1")
            raw_path = getattr(self.channel, "_path", b"/")
            try:
                path = unquote(urlsplit(raw_path.decode("ascii")).path) or "/"
            except UnicodeDecodeError:
                path = "/"
            limit = current_policy().limit_for(command, path)
            self._es_limit = limit
            self._es_path = path
            if length is not None and length > limit.max_bytes:
                self._es_refuse(too_large(limit, length))
                return
            if not limit.upload:
                super().gotLength(length)
                return
            # An upload: hold the body (Twisted would spool it) until the credentials pass.
            self._es_length = length
            self._es_pending = []
            expect = self.requestHeaders.getRawHeaders(b"expect") or []
            if expect:
                # Twisted answers "100 Continue" right after this; that waits for the check.
                self._es_expect = expect[0].lower() == b"100-continue"
                self.requestHeaders.removeHeader(b"expect")
            self.channel._networkProducer.pauseProducing()
            cookie = (self.requestHeaders.getRawHeaders(b"cookie") or [None])[0]
            auth = (self.requestHeaders.getRawHeaders(b"authorization") or [None])[0]
            task = asyncio.get_event_loop().create_task(credentials_check_async(cookie, auth))
            task.add_done_callback(self._es_checked)

        def _es_checked(self, task: asyncio.Task[str]) -> None:
            if self._es_refused or self.channel is None or self.channel.transport is None:
                return
            try:
                who = task.result()
            except Exception:  # the database is down: refuse rather than spool
                log.exception("checking an upload's credentials failed")
                who = "anonymous"
            limit = self._es_limit
            assert limit is not None
            if who != "ok":
                self._es_refuse(sign_in_first(limit, self._es_path, bad_token=who == "bad_token"))
                return
            pending, self._es_pending = self._es_pending or [], None
            super().gotLength(self._es_length)
            for chunk in pending:
                super().handleContentChunk(chunk)
            if self._es_complete is not None:
                super().requestReceived(*self._es_complete)
                return
            if self._es_expect:
                self.channel._send100Continue()
            self.channel._networkProducer.resumeProducing()

        def handleContentChunk(self, data: bytes) -> None:
            if self._es_refused:
                return
            self._es_received += len(data)
            limit = self._es_limit
            if limit is not None and self._es_received > limit.max_bytes:
                self._es_refuse(too_large(limit, None))
                return
            if self._es_pending is not None:
                self._es_pending.append(data)
                if sum(map(len, self._es_pending)) > MAX_PENDING_BYTES:
                    self.channel._networkProducer.pauseProducing()
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self._es_refused:
                return
            if self._es_pending is not None:  # the body is in; the check is not done yet
                self._es_complete = (command, path, version)
                return
            super().requestReceived(command, path, version)

        def _es_refuse(self, refusal: Refusal) -> None:
            """Answer now and close: whatever else the client sends is dropped, never stored."""
            self._es_refused = True
            self._es_pending = None
            content = getattr(self, "content", None)
            if content is not None:
                content.close()
            self.content = _Discard()
            lines = [b"HTTP/1.1 %d %s" % (refusal.status, _STATUS_TEXT.get(refusal.status, b""))]
            lines += [name + b": " + value for name, value in refusal.headers]
            if not any(name == b"connection" for name, _ in refusal.headers):
                lines.append(b"connection: close")
            transport = self.channel.transport
            transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + refusal.body)
            transport.loseConnection()
            log.info("refused %s before reading its body (%d)", self._es_path, refusal.status)

    http_protocol.WebRequest = GuardedWebRequest
    return True


class _Discard:
    """A write-only sink standing in for the request's content file after a refusal."""

    closed = False

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True
