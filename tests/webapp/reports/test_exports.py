"""A job report's CSV and JSON exports (latency as count, mean, stdev, p50, p90, p99, and the
on-device rows of the versions it produced) and the refusals: a job that does not exist, one of
another organisation, one without a report. The PDF refusals need no browser and live here."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.urls import reverse
from factories import client_for, make_member, make_organization, make_user
from fleet_factories import family

from webapp.accounts.models import Role
from webapp.jobs.models import JobStatus
from webapp.reports.exports import REPORT_CSV_FIELDS

pytestmark = pytest.mark.django_db


@pytest.fixture
def fam():
    f = family()
    job = f["job1"]
    # a real report's latency: LatencyResult.to_dict() with its spread and runs
    job.report["final"]["latency"].update(mean_ms=0.52, std_ms=0.03, p99_ms=0.9, runs=40)
    job.report["model_versions"] = [{"id": f["fp32"].pk}, {"id": f["int8"].pk}]
    job.save()
    return f


def test_report_json_export_has_every_state_and_the_devices(fam):
    manager = make_member(fam["org"], role=Role.MANAGER)
    job = fam["job1"]
    r = client_for(manager).get(reverse("reports:export", args=[job.pk, "json"]))
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    assert r["Content-Disposition"] == f'attachment; filename="report-job-{job.pk}.json"'
    data = json.loads(r.content)
    assert data["job"]["id"] == job.pk and data["job"]["dataset"] == "digits-family"
    assert [s["kind"] for s in data["states"]] == ["baseline", "stage", "stage", "final"]
    final = data["states"][-1]
    assert final["latency"] == {"count": 200, "mean_ms": 0.52, "stdev_ms": 0.03, "p50_ms": 0.5,
                                "p90_ms": 0.75, "p99_ms": 0.9, "iqr_ms": 0.05, "rounds": 5}  # fmt: skip
    assert final["accuracy"] == 97.0 and final["accuracy_delta"] == pytest.approx(-1.0)
    assert data["states"][0]["latency"]["count"] is None  # no runs recorded: blank, not 0
    devices = {(d["label"], d["device"]): d for d in data["on_device"]}
    assert set(devices) == {("int8", "jetson"), ("int8", "pi"), ("fp32", "pi")}
    pi = devices[("int8", "pi")]
    assert pi["latency"]["p50_ms"] == 4.0 and pi["latency"]["count"] == 200
    assert pi["latency"]["stdev_ms"] == pytest.approx(0.4) and pi["top1_pct"] == 95.0
    assert data["model_versions"] == [fam["fp32"].pk, fam["int8"].pk]


def test_report_csv_export_names_its_fields(fam):
    job = fam["job1"]
    r = client_for(fam["owner"]).get(reverse("reports:export", args=[job.pk, "csv"]))
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert list(rows[0]) == list(REPORT_CSV_FIELDS)
    assert [row["kind"] for row in rows[:4]] == ["baseline", "stage", "stage", "final"]
    final = rows[3]
    assert (final["latency_count"], final["latency_mean_ms"], final["latency_stdev_ms"]) == (
        "200", "0.52", "0.03")  # fmt: skip
    assert (final["latency_p50_ms"], final["latency_p90_ms"], final["latency_p99_ms"]) == (
        "0.5", "0.75", "0.9")  # fmt: skip
    assert final["accuracy"] == "97.0" and final["size_bytes"] == "4000"
    device_rows = [row for row in rows if row["kind"] == "device"]
    assert len(device_rows) == 3
    jetson = next(row for row in device_rows if row["device"] == "jetson")
    assert (
        jetson["label"] == "int8" and jetson["latency_p50_ms"] == "1.0" and jetson["top1_pct"] == ""
    )


def test_the_report_page_offers_csv_json_and_pdf(fam):
    job = fam["job1"]
    html = client_for(fam["owner"]).get(reverse("reports:detail", args=[job.pk])).content.decode()
    for fmt in ("csv", "json", "pdf"):
        assert reverse("reports:export", args=[job.pk, fmt]) in html
    assert reverse("reports:lineage", args=[job.model_version_id]) in html


@pytest.mark.parametrize("fmt", ["csv", "json", "pdf"])
def test_exports_of_a_missing_foreign_or_unfinished_report_are_refused(fam, fmt):
    job = fam["job1"]
    outsider = make_user()
    make_organization(owner=outsider)
    assert (
        client_for(outsider).get(reverse("reports:export", args=[job.pk, fmt])).status_code == 404
    )
    owner = client_for(fam["owner"])
    assert owner.get(reverse("reports:export", args=[987654, fmt])).status_code == 404
    job.status, job.report = JobStatus.RUNNING, None
    job.save()
    r = owner.get(reverse("reports:export", args=[job.pk, fmt]))
    assert r.status_code == 404
    assert f"Job {job.pk} has no report yet (running)".encode() in r.content
    # Signed out: to the login page, never a file.
    from django.test import Client

    r = Client().get(reverse("reports:export", args=[job.pk, fmt]))
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


def test_a_pdf_without_chromium_is_a_clear_503_not_a_broken_file(fam, settings):
    settings.EDGESLIM_CHROMIUM = "/nonexistent/chromium"
    job = fam["job1"]
    r = client_for(fam["owner"]).get(reverse("reports:export", args=[job.pk, "pdf"]))
    assert r.status_code == 503 and r["Content-Type"].startswith("text/plain")
    assert "PDF export needs Debian's chromium at /nonexistent/chromium" in r.content.decode()


def test_comparison_exports_carry_the_latency_blocks_of_host_and_devices(fam):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from webapp.reports.comparison import comparison_build
    from webapp.reports.exports import comparison_latency

    base, fp32, int8, pi = fam["base"], fam["fp32"], fam["int8"], fam["pi"]
    client = client_for(fam["owner"])
    query = {"v": [base.pk, fp32.pk, int8.pk]}
    data = client.get(reverse("reports:compare_export", args=["json"]), query).json()
    lat = data["latency"]
    assert lat[str(int8.pk)]["host"] == {"count": 200, "mean_ms": 0.52, "stdev_ms": 0.03,
                                         "p50_ms": 0.5, "p90_ms": 0.75, "p99_ms": 0.9}  # fmt: skip
    assert lat[str(base.pk)]["host"]["p50_ms"] == 2.0 and lat[str(base.pk)]["host"]["count"] is None
    assert lat[str(base.pk)]["devices"] == {}
    on_pi = lat[str(int8.pk)]["devices"][str(pi.pk)]
    assert on_pi["p50_ms"] == 4.0 and on_pi["count"] == 200  # newest deployment, batch 1
    assert on_pi["stdev_ms"] == pytest.approx(0.4) and on_pi["p99_ms"] == pytest.approx(6.0)
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get(reverse("reports:compare_export", args=["csv"]), query).content.decode()
            )
        )
    )
    row = next(r for r in rows if int(r["id"]) == int8.pk)
    assert (row["host_latency_count"], row["host_latency_mean_ms"], row["host_latency_p99_ms"]) == (
        "200", "0.52", "0.9")  # fmt: skip
    assert row[f"device:{pi.pk}:pi:latency_count"] == "200"
    assert float(row[f"device:{pi.pk}:pi:latency_stdev_ms"]) == pytest.approx(0.4)
    assert (
        next(r for r in rows if int(r["id"]) == base.pk)[f"device:{pi.pk}:pi:latency_count"] == ""
    )
    # Two queries, whatever the number of versions and devices.
    comparison = comparison_build(organization=fam["org"], version_ids=query["v"])
    with CaptureQueriesContext(connection) as ctx:
        comparison_latency(organization=fam["org"], comparison=comparison)
    assert len(ctx.captured_queries) == 2
