"""The job report's on-device section: deploy each ONNX model the job produced, then see the
devices' latency and accuracy next to size and accuracy, with a p50-by-device chart."""

from __future__ import annotations

import pytest
from django.urls import reverse
from factories import client_for, make_member

from device_registry import model_versions, services
from device_registry.models import DeployableArtifact
from edgeslim_agent.protocol import BenchSettings, Result
from webapp.accounts.models import Role
from webapp.catalog.models import ModelVersion
from webapp.reports import charts

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _store_results(org, artifact: DeployableArtifact, *, name: str, p50: float) -> None:
    device, code = services.device_register(organization=org, name=name, tags=["lab"])
    services.enrollment_code_redeem(code=code, agent_version="0.1.0")
    dep = services.deployment_create(
        organization=org,
        artifact=artifact,
        target_kind="tag",
        target_value="lab",
        settings=BenchSettings(warmup=1, runs=5, accuracy=True),
    )
    latency = {"batch_size": 1, "p50_ms": p50, "p99_ms": p50 * 3, "throughput": 1000 / p50}
    for seq, kind, data in (
        (1, "latency", latency),
        (2, "accuracy", {"top1_pct": 87.5, "correct": 35, "samples": 40}),
        (3, "complete", {}),
    ):
        services.deployment_result_store(
            device_id=device.pk, result=Result(deployment_id=dep.pk, seq=seq, kind=kind, data=data)
        )


def test_the_job_report_deploys_each_onnx_artifact_and_shows_device_results(finished_job, org_a):
    org, user = org_a
    c = client_for(user)
    url = reverse("reports:detail", args=[finished_job.pk])

    empty = c.get(url)
    sections = empty.context["on_device"]
    labels = sorted(s["version"].label for s in sections)
    assert labels == ["fp32", "int8"]
    html = empty.content.decode()
    for s in sections:
        assert f'data-deploy-version="{s["version"].pk}"' in html
    assert "data-on-device-empty" in html and "chart-devices" not in empty.context["figures"]

    int8 = ModelVersion.objects.get(produced_by_job_id=finished_job.pk, label="int8")
    deployed = c.post(reverse("devices:deploy_model_version", args=[int8.pk]))
    artifact = DeployableArtifact.objects.get(source=f"model_version:{int8.pk}")
    assert deployed["Location"].endswith(f"?artifact={artifact.pk}")
    assert artifact.sha256 == int8.sha256 and artifact.size == int8.size_bytes
    _store_results(org, artifact, name="pi-lab", p50=1.25)

    page = c.get(url)
    by_label = {s["version"].label: s["device_rows"] for s in page.context["on_device"]}
    assert by_label["fp32"] == []
    [row] = by_label["int8"]
    assert (row["device"], row["p50_ms"], row["p99_ms"], row["top1_pct"]) == (
        "pi-lab",
        1.25,
        3.75,
        87.5,
    )
    chart = page.context["figures"]["chart-devices"]
    [bars] = [t for t in chart["data"] if t["name"] == "int8"]
    assert list(bars["x"]) == ["pi-lab"] and list(bars["y"]) == [1.25]
    html = page.content.decode()
    assert "1.250 ms" in html and 'id="chart-devices"' in html


def test_a_manager_reads_on_device_results_but_gets_no_deploy_button(finished_job, org_a):
    org, _ = org_a
    manager = make_member(org, role=Role.MANAGER)
    page = client_for(manager).get(reverse("reports:detail", args=[finished_job.pk]))
    assert page.status_code == 200 and len(page.context["on_device"]) == 2
    assert "data-deploy-version" not in page.content.decode()
    version = page.context["on_device"][0]["version"]
    assert model_versions.deploy_refusal_reason(version) == ""


def test_the_on_device_chart_is_left_out_without_results():
    assert charts.on_device_p50({"fp32": {}, "int8": {}}) == {}
    fig = charts.on_device_p50({"fp32": {"pi": 3.0, "jetson": 1.0}, "int8": {"pi": 1.5}})
    assert [t["type"] for t in fig["data"]] == ["bar", "bar"]
    assert fig["layout"]["barmode"] == "group"
