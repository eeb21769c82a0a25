"""Artifact downloads, shared by the pages and the API: always attachments, org-scoped by the
caller (the job was fetched for the caller's organisation first).

Files are streamed from storage by the web process (a local folder or the S3 bucket), never
redirected to the bucket: the organisation check runs on every request, the bucket need not be
reachable from browsers, and the response is the same whichever storage is configured.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from django.http import FileResponse, HttpResponse

from webapp.jobs.models import Job
from webapp.jobs.selectors import ARTIFACTS, job_artifact_file, job_artifact_open


def _safe_stem(job: Job) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job.name)[:60]
    return f"job{job.pk}-{stem or 'job'}"


def artifact_response(job: Job, key: str) -> HttpResponse | FileResponse:
    """The artifact ``key`` of ``job`` (``onnx``, ``onnx_int8``, ``report``, ``recipe``,
    ``checkpoint:<file>``); Http404 when unknown or not produced."""
    response: HttpResponse | FileResponse
    if key == "recipe":
        response = HttpResponse(job.recipe_yaml, content_type="application/x-yaml")
        response["Content-Disposition"] = f'attachment; filename="{_safe_stem(job)}-recipe.yaml"'
    else:
        name = PurePosixPath(job_artifact_file(job=job, key=key)).name
        content_type = ARTIFACTS[key][1] if key in ARTIFACTS else "application/octet-stream"
        response = FileResponse(
            job_artifact_open(job=job, key=key),
            as_attachment=True,
            filename=f"{_safe_stem(job)}-{name}",
            content_type=content_type,
        )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
