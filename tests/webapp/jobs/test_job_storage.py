"""A job's files go through Django's storage: pushed from one scratch folder into the bucket of
a real S3-protocol server (moto's, started by the test command), pulled into another, listed
and downloaded from there; in a local storage folder a file pushed again replaces the old one;
and job folders are named by the job's uid, so an old ``jobs/<pk>`` never collides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from jobs_fixtures import _jobs_not_sent_to_a_shared_worker  # noqa: F401
from s3_server import S3Bucket

from webapp.jobs import selectors, services
from webapp.jobs.artifacts import JobFiles, job_storage
from webapp.jobs.downloads import artifact_response
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.runner import JobRunner

IDENTITY = {"recipe_hash": "r", "model_sha256": "m", "dataset_fingerprint": "d", "eval_hash": "e"}
# A run folder as compression.pipeline leaves it after stage 0 (file contents are stand-ins).
RUN_FILES = {
    "baseline/model.onnx": b"baseline onnx",
    "checkpoints/stage_00_finetune.safetensors": b"weights " * 1000,
    "checkpoints/stage_00_finetune.json": b'{"format_version": 1}',
    "stages/00_finetune/measure/model.onnx": b"measured onnx",
}
STATE = {
    "version": 2,
    "identity": IDENTITY,
    "baseline": {"accuracy": 10.0},
    "baseline_onnx": "baseline/model.onnx",
    "completed": [
        {
            "index": 0,
            "method": "finetune",
            "checkpoint": "checkpoints/stage_00_finetune.safetensors",
            "metrics": {"onnx_path": "stages/00_finetune/measure/model.onnx"},
            "artifacts": {"onnx_fp32": "stages/00_finetune/measure/model.onnx"},
        }
    ],
}


def _job() -> Job:
    org = make_organization()
    return Job.objects.create(
        organization=org, name="stored", model_version=make_model_version(org),
        dataset=make_digits(org), recipe={}, status=JobStatus.RUNNING,
    )  # fmt: skip


def _write_run(folder: Path) -> None:
    for rel, data in RUN_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "state.json").write_text(json.dumps(STATE))


@pytest.mark.django_db
def test_a_completed_stage_goes_through_the_bucket_to_another_data_folder(
    s3_storage: S3Bucket, settings, tmp_path: Path
) -> None:
    job = _job()
    settings.DATA_DIR = tmp_path / "worker-a"
    first = JobFiles(job)
    assert first.scratch == tmp_path / "worker-a" / "jobs" / str(job.uid)
    assert first.pull() == 0  # nothing stored yet
    _write_run(first.scratch)
    (first.scratch / "stages" / "00_finetune" / "scratch.bin").write_bytes(b"not needed")
    assert first.push_progress() == len(RUN_FILES) + 1  # and state.json
    assert first.push_progress() == 0  # unchanged files are not sent again
    prefix = f"jobs/{job.uid}/"
    assert s3_storage.keys(prefix) == sorted(prefix + r for r in [*RUN_FILES, "state.json"])

    settings.DATA_DIR = tmp_path / "worker-b"
    second = JobFiles(job)
    assert second.pull() == 1
    for rel, data in RUN_FILES.items():
        assert (second.scratch / rel).read_bytes() == data
    assert json.loads((second.scratch / "state.json").read_text()) == STATE
    assert not (second.scratch / "stages" / "00_finetune" / "scratch.bin").exists()
    assert JobFiles(job).pull() == 0  # the folder is as far along as storage

    (second.scratch / "final.onnx").write_bytes(b"final fp32 onnx")
    (second.scratch / "report.json").write_text(json.dumps({"resumed_from_stage": 1}))
    report = {"artifacts": [{"path": "final.onnx"}, {"path": RUN_FILES_CKPT}]}
    assert second.push_final(report) == 2  # final.onnx and report.json; the rest is stored
    second.discard_scratch()
    settings.DATA_DIR = tmp_path / "web"  # the web process has a data folder of its own

    listed = {a["key"]: a["size_bytes"] for a in selectors.job_artifact_list(job=job)}
    assert listed == {
        "onnx": len(b"final fp32 onnx"),
        "report": len(json.dumps({"resumed_from_stage": 1})),
        "checkpoint:stage_00_finetune.json": len(RUN_FILES["checkpoints/stage_00_finetune.json"]),
        "checkpoint:stage_00_finetune.safetensors": len(RUN_FILES[RUN_FILES_CKPT]),
        "recipe": 0,
    }
    response = artifact_response(job, "onnx")
    assert b"".join(response.streaming_content) == b"final fp32 onnx"  # type: ignore[union-attr]
    assert "attachment" in response["Content-Disposition"]
    response = artifact_response(job, f"checkpoint:{Path(RUN_FILES_CKPT).name}")
    got = b"".join(response.streaming_content)  # type: ignore[union-attr]
    assert hashlib.sha256(got).digest() == hashlib.sha256(RUN_FILES[RUN_FILES_CKPT]).digest()
    assert selectors.job_report(job=job) == {"resumed_from_stage": 1}


RUN_FILES_CKPT = "checkpoints/stage_00_finetune.safetensors"


@pytest.mark.django_db
def test_in_a_local_storage_folder_a_file_pushed_again_replaces_the_old_one(
    settings, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATA_DIR = tmp_path / "data"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    }
    job = _job()
    files = JobFiles(job)
    _write_run(files.scratch)
    files.push_progress()
    state = {**STATE, "status": "done"}
    (files.scratch / "state.json").write_text(json.dumps(state))
    assert files.push_progress() == 1
    stored = tmp_path / "media" / "jobs" / str(job.uid)
    assert json.loads((stored / "state.json").read_text()) == state
    assert sorted(p.name for p in stored.iterdir()) == [
        "baseline", "checkpoints", "stages", "state.json"
    ]  # fmt: skip
    assert job_storage().exists(f"jobs/{job.uid}/checkpoints/stage_00_finetune.json")


def test_a_missing_or_foreign_artifact_is_a_404() -> None:
    from django.http import Http404

    job = Job(name="x")
    for key in ("nope", "checkpoint:../state.json", "checkpoint:.hidden", "checkpoint:"):
        with pytest.raises(Http404):
            selectors.job_artifact_file(job=job, key=key)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_old_jobs_folder_with_the_same_id_does_not_collide(settings) -> None:
    """A data folder (and storage) that outlived an earlier database holds ``jobs/<pk>/`` of a
    different run: the new job with that pk runs in its own ``jobs/<uid>/`` and succeeds."""
    user = make_user()
    org = make_organization(owner=user)
    job = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    old = {**STATE, "recipe_hash": "another recipe", "identity": {**IDENTITY}}
    for root in (Path(settings.DATA_DIR), Path(settings.MEDIA_ROOT)):
        (root / "jobs" / str(job.pk)).mkdir(parents=True, exist_ok=True)
        (root / "jobs" / str(job.pk) / "state.json").write_text(json.dumps(old))
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "succeeded", job.error
    assert job.report["resumed_from_stage"] is None
    assert not JobFiles(job).scratch.exists()  # scratch removed once storage holds the run
    keys = {a["key"] for a in selectors.job_artifact_list(job=job)}
    assert {"onnx", "onnx_int8", "report"} <= keys
    assert job_storage().exists(f"jobs/{job.uid}/state.json")
