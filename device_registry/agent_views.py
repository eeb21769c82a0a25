"""HTTP endpoints the agent calls: enrollment, artifact download (Range), and the agent wheel."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from device_registry import selectors, services, signing
from device_registry.agent_wheel import agent_wheel_build, agent_wheel_name, agent_wheel_sha256
from device_registry.models import Device
from edgeslim_agent import __version__ as agent_version

log = logging.getLogger("edgeslim.devices.http")

CHUNK = 1024 * 1024
MAX_ENROLL_BODY = 16 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@csrf_exempt
@require_POST
def enroll(request: HttpRequest) -> JsonResponse:
    """POST /api/v1/agent/enroll ``{"code", "agent_version", "facts"}`` -> the device credential."""
    if len(request.body) > MAX_ENROLL_BODY:
        return JsonResponse({"detail": "request too large"}, status=413)
    try:
        body = json.loads(request.body)
        code = str(body["code"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"detail": 'send JSON {"code": "..."}'}, status=400)
    facts = body.get("facts") if isinstance(body.get("facts"), dict) else None
    try:
        device, credential = services.enrollment_code_redeem(
            code=code, agent_version=str(body.get("agent_version", "")), facts=facts
        )
    except services.EnrollmentError as exc:
        return JsonResponse({"detail": str(exc)}, status=403)
    return JsonResponse(
        {
            "device_id": device.pk,
            "device_name": device.name,
            "credential": credential,
            "server_public_key": signing.public_key_b64(),
            "signing_keys": signing.trusted_keys(),
        },
        status=201,
    )


@require_GET
def signing_keys(request: HttpRequest) -> JsonResponse:
    """GET /api/v1/agent/keys: the active key's id, the keys to trust now, and every signed
    key statement (public data; an agent applies only statements a key it trusts signed)."""
    return JsonResponse(
        {
            "active": signing.active_key_id(),
            "keys": signing.trusted_keys(),
            "statements": signing.key_statements(),
        }
    )


def _device_from(request: HttpRequest) -> Device | None:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Device" or not credential:
        return None
    return selectors.device_by_credential(credential=credential.strip())


def _artifact_file(device: Device, artifact_id: int, which: str) -> tuple[Any, int]:
    artifact = selectors.artifact_for_device(device=device, artifact_id=artifact_id)
    if artifact is None:
        raise Http404("no such artifact for this device")
    field = artifact.file if which == "model" else artifact.eval_file
    if not field:
        raise Http404("this artifact has no evaluation set")
    return field.open("rb"), int(field.size)


async def _stream(fh: Any, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(fh.seek, start)
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range, or None when unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # suffix range: the last N bytes
        start = max(0, size - int(m.group(2)))
        end = size - 1
    end = min(end, size - 1)
    if start > end or start >= size:
        return None
    return start, end


async def artifact_download(request: HttpRequest, artifact_id: int, which: str = "model") -> Any:
    """GET /api/v1/agent/artifacts/<id>[/eval] with ``Authorization: Device <credential>``.

    Another organisation's artifact, or one not deployed to this device, is a 404.
    """
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405)
    device = await sync_to_async(_device_from)(request)
    if device is None:
        return JsonResponse({"detail": "a valid device credential is required"}, status=401)
    try:
        fh, size = await sync_to_async(_artifact_file)(device, artifact_id, which)
    except Http404:
        return JsonResponse({"detail": "not found"}, status=404)
    start, end, status = 0, size - 1, 200
    header = request.headers.get("Range")
    if header:
        parsed = _parse_range(header, size)
        if parsed is None:
            fh.close()
            refused = HttpResponse(status=416)
            refused["Content-Range"] = f"bytes */{size}"
            return refused
        start, end = parsed
        status = 206
    length = max(0, end - start + 1)
    if request.method == "HEAD":
        fh.close()
        response: HttpResponse | StreamingHttpResponse = HttpResponse(status=status)
    else:
        response = StreamingHttpResponse(_stream(fh, start, length), status=status)
    response["Content-Type"] = "application/octet-stream"
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


async def artifact_eval_download(request: HttpRequest, artifact_id: int) -> Any:
    return await artifact_download(request, artifact_id, which="eval")


@require_GET
def agent_wheel(request: HttpRequest, filename: str) -> FileResponse:
    """The agent's wheel (no Django, no torch), built from this server's own source."""
    if filename != agent_wheel_name():
        raise Http404(f"this server serves {agent_wheel_name()}")
    path = agent_wheel_build()
    response = FileResponse(path.open("rb"), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def agent_version_info(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "version": agent_version,
            "wheel": f"/agent/{agent_wheel_name()}",
            "sha256": agent_wheel_sha256(),
        }
    )
