"""The jobs REST API with token auth: create (validated before queueing), status, cancel,
duplicate, events, report and downloads."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs.models import Job, JobStatus


def _post(client, url, data, headers):
    return client.post(url, data=json.dumps(data), content_type="application/json", **headers)


@pytest.mark.django_db
def test_create_returns_the_queued_job(org_a, token_for, django_capture_on_commit_callbacks):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(
            Client(),
            reverse("api:jobs-list"),
            {"model_version": mv.pk, "dataset": ds.pk, "recipe": two_stage_recipe()},
            token_for(user),
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "QUEUED"
    assert body["stage_count"] == 2
    assert body["url"] == reverse("api:jobs-detail", args=[body["id"]])
    assert callbacks


@pytest.mark.django_db
def test_create_accepts_yaml_text(org_a, token_for):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    response = _post(
        Client(),
        reverse("api:jobs-list"),
        {"model_version": mv.pk, "dataset": ds.pk, "recipe": "stages: [ptq_int8]"},
        token_for(user),
    )
    assert response.status_code == 201, response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ({"stages": [{"method": "finetune", "config": {"lr": -1}}]}, "recipe.stages[0].config.lr"),
        ({"stages": [{"method": "prune_everything"}]}, "recipe.stages[0].method"),
        (
            {"stages": [{"method": "finetune"}], "targets": {"max_accuracy_drop": 500}},
            "recipe.targets.max_accuracy_drop",
        ),
        (42, "recipe"),
    ],
)
def test_an_invalid_recipe_is_a_400_naming_the_field_and_nothing_is_queued(
    org_a, token_for, recipe, field, django_capture_on_commit_callbacks
):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(
            Client(),
            reverse("api:jobs-list"),
            {"model_version": mv.pk, "dataset": ds.pk, "recipe": recipe},
            token_for(user),
        )
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["detail"]
    assert not Job.objects.exists()
    assert callbacks == []


@pytest.mark.django_db
def test_create_without_a_token_is_refused(org_a):
    response = Client().post(reverse("api:jobs-list"), data={}, content_type="application/json")
    assert response.status_code in (401, 403)


@pytest.mark.django_db
def test_a_manager_cannot_create_jobs(org_a, token_for):
    from factories import make_member

    org, _ = org_a
    manager = make_member(org, role="manager")
    mv, ds = make_model_version(org), make_digits(org)
    response = _post(
        Client(),
        reverse("api:jobs-list"),
        {"model_version": mv.pk, "dataset": ds.pk, "recipe": two_stage_recipe()},
        token_for(manager),
    )
    assert response.status_code == 403


@pytest.mark.django_db
def test_cancel_duplicate_and_events_after_a_seq(org_a, token_for):
    org, user = org_a
    headers = token_for(user)
    client = Client()
    mv, ds = make_model_version(org), make_digits(org)
    created = _post(
        client,
        reverse("api:jobs-list"),
        {"model_version": mv.pk, "dataset": ds.pk, "recipe": two_stage_recipe()},
        headers,
    ).json()
    pk = created["id"]
    dup = client.post(reverse("api:jobs-duplicate", args=[pk]), **headers)
    assert dup.status_code == 201 and dup.json()["duplicated_from"] == pk
    cancelled = client.post(reverse("api:jobs-cancel", args=[pk]), **headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    again = client.post(reverse("api:jobs-cancel", args=[pk]), **headers)
    assert again.status_code == 409
    events = client.get(reverse("api:jobs-events", args=[pk]) + "?after=1", **headers).json()
    assert [e["seq"] for e in events] == [2]
    assert events[0]["payload"]["status"] == "CANCELLED"
    report = client.get(reverse("api:jobs-report", args=[pk]), **headers)
    assert report.status_code == 404
    assert client.get(reverse("api:methods-list"), **headers).json()[0]["config_schema"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_finished_job_serves_its_report_and_artifacts(finished_job, org_a, token_for):
    _, user = org_a
    headers = token_for(user)
    client = Client()
    pk = finished_job.pk
    detail = client.get(reverse("api:jobs-detail", args=[pk]), **headers).json()
    assert detail["status"] == JobStatus.SUCCEEDED and detail["progress"] == 1.0
    report = client.get(reverse("api:jobs-report", args=[pk]), **headers).json()
    assert [s["method"] for s in report["stages"]] == ["finetune", "ptq_int8"]
    items = client.get(reverse("api:jobs-artifacts", args=[pk]), **headers).json()
    keys = {i["key"] for i in items}
    assert {"onnx", "onnx_int8", "report", "recipe"} <= keys
    assert any(k.startswith("checkpoint:") for k in keys)
    onnx = client.get(reverse("api:jobs-artifact", args=[pk, "onnx_int8"]), **headers)
    assert onnx.status_code == 200
    assert "attachment" in onnx["Content-Disposition"]
    assert len(b"".join(onnx.streaming_content)) == next(
        i["size_bytes"] for i in items if i["key"] == "onnx_int8"
    )
    recipe = client.get(reverse("api:jobs-artifact", args=[pk, "recipe"]), **headers)
    assert b"method: finetune" in recipe.content
    for bad in ("nope", "checkpoint:..", "checkpoint:.hidden", "checkpoint:missing.json"):
        assert (
            client.get(reverse("api:jobs-artifact", args=[pk, bad]), **headers).status_code == 404
        )


def test_the_openapi_schema_describes_the_jobs_endpoints(admin_client):
    schema = admin_client.get(reverse("api_schema") + "?format=json").json()
    paths = schema["paths"]
    for p in (
        "/api/v1/jobs/",
        "/api/v1/jobs/{id}/cancel/",
        "/api/v1/jobs/{id}/report/",
        "/api/v1/jobs/{id}/artifacts/{key}/",
    ):
        assert p in paths, p
