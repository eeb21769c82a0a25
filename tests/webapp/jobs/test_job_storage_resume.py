"""Scale-out through a bucket, with real processes: a job runs on a Celery worker with data
folder A that stores into an S3 bucket (moto's S3-protocol server), is killed with ``kill -9``
after its first stage completed, resumes on a second worker with data folder B without running
that stage again, and a web process with a data folder of its own serves the report and the
model from the bucket. PostgreSQL and Redis are the real ones.

The workers consume a queue of their own, so a session-wide worker never takes these jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from s3_server import S3Bucket
from stack import free_port, subprocess_env

from webapp.accounts.services import api_token_create
from webapp.jobs import services
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.tasks import job_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

VISIBILITY_S = 3
LEASE_S = 3


@pytest.fixture
def queue(monkeypatch):
    name = f"storage-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(
        services, "_enqueue", lambda job: job_run.apply_async(args=(job.pk,), queue=name)
    )
    return name


def _env(bucket: S3Bucket, data_dir: Path) -> dict[str, str]:
    env = subprocess_env()
    env.update(bucket.env())
    env.update(
        EDGESLIM_DATA_DIR=str(data_dir),
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_S),
        EDGESLIM_JOB_LEASE_S=str(LEASE_S),
    )
    (data_dir / "static").mkdir(parents=True, exist_ok=True)
    return env


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (
            log.read_text(errors="replace")[-3000:] if log else ""
        )
        time.sleep(0.1)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _start_worker(queue: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", queue]
    argv += ["-c", "1", "-P", "solo", "-l", "INFO", "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat", "-n", f"{queue}-{uuid.uuid4().hex[:4]}@%h"]
    proc = _start(argv, env, log)
    _wait_for(lambda: " ready." in log.read_text(errors="replace"), 60, "the worker", log)
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_a_killed_job_resumes_on_another_worker_and_the_web_serves_it_from_the_bucket(
    queue, s3_storage: S3Bucket, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    folder_a, folder_b, folder_web = (tmp_path / n for n in ("worker-a", "worker-b", "web"))
    log = tmp_path / "workers.log"
    user = make_user()
    org = make_organization(owner=user)
    recipe = two_stage_recipe()
    recipe["stages"][1] = {"method": "finetune", "config": {"epochs": 2, "batch_size": 64}}
    procs: list[subprocess.Popen[bytes]] = []
    # The web process (its own data folder) starts now, beside the workers: it serves nothing
    # until the job is done, and starting it here keeps its start off the test's critical path.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web_log = tmp_path / "daphne.log"
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    web = _start([*argv, "webapp.asgi:application"], _env(s3_storage, folder_web), web_log)
    request.addfinalizer(lambda: _stop(web))  # also when an assertion below fails
    try:
        procs.append(_start_worker(queue, _env(s3_storage, folder_a), log))
        job = services.job_create(
            organization=org, user=user, model_version=make_model_version(org),
            dataset=make_digits(org), recipe=recipe, queue="cpu",
        )  # fmt: skip
        _wait_for(lambda: Job.objects.get(pk=job.pk).completed_stages >= 1, 120, "stage 1", log)
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=10)
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING and job.completed_stages == 1
        prefix = f"jobs/{job.uid}/"
        stored = s3_storage.keys(prefix)
        assert prefix + "state.json" in stored
        assert prefix + "checkpoints/stage_00_finetune.safetensors" in stored
        assert (folder_a / "jobs" / str(job.uid) / "state.json").is_file()

        time.sleep(VISIBILITY_S + 0.5)  # the broker redelivers unacked messages this old
        procs.append(_start_worker(queue, _env(s3_storage, folder_b), log))
        _wait_for(lambda: Job.objects.get(pk=job.pk).is_terminal, 180, "the job to end", log)
    finally:
        for proc in procs:
            _stop(proc)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    started = list(job.events.filter(kind="stage_started").values_list("payload__stage", flat=True))
    assert started.count(0) == 1 and started[-1] == 1  # stage 0 ran once, on worker A
    assert job.report["resumed_from_stage"] == 1
    lines = list(job.events.filter(kind="log").values_list("payload__line", flat=True))
    assert "pulled 1 completed stage(s) from storage to resume after" in lines
    # Worker B ran in its own folder and dropped it once the bucket held the run.
    assert (folder_b / "jobs").is_dir() and not (folder_b / "jobs" / str(job.uid)).exists()
    assert not (folder_a / "jobs" / str(job.uid) / "report.json").exists()

    # A web process with yet another data folder serves the report and the model from the bucket.
    try:
        _wait_for(lambda: _up(base), 90, "the web process", web_log)
        _, token = api_token_create(user=user, name="storage")
        status, body = _get(f"{base}/api/v1/jobs/{job.pk}/artifacts/", token)
        assert status == 200, body[:500]
        keys = {a["key"] for a in json.loads(body)}
        assert {"onnx", "report", "checkpoint:stage_00_finetune.safetensors"} <= keys
        status, body = _get(f"{base}/api/v1/jobs/{job.pk}/artifacts/report/", token)
        assert status == 200, body[:500]
        report = json.loads(body)
        assert report["resumed_from_stage"] == 1
        assert [s["method"] for s in report["stages"]] == ["finetune", "finetune"]
        status, onnx_bytes = _get(f"{base}/api/v1/jobs/{job.pk}/artifacts/onnx/", token)
        assert status == 200
        [final] = [a for a in report["artifacts"] if a["name"] == "final.onnx"]
        assert hashlib.sha256(onnx_bytes).hexdigest() == final["sha256"]
    finally:
        _stop(web)
    assert not (folder_web / "jobs").exists()  # nothing was read from a local job folder
