"""The fleet view of a version (one row per device, the per-operator profile) and a model's
lineage (the family tree as a graph and a list): builders, pages, API, CSV/JSON exports,
organisation scoping, and query counts that do not grow with devices or versions."""

from __future__ import annotations

import csv
import io
import json

import pytest
from compare_factories import device_result, version
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from factories import client_for, make_member, make_organization, make_user
from fleet_factories import PROFILE_JETSON, PROFILE_PI, deploy, family, latency_payload

from device_registry.models import Device
from webapp.accounts.models import Role
from webapp.reports import charts
from webapp.reports.fleet import FLEET_CSV_FIELDS, fleet_build
from webapp.reports.lineage import NODE_W, lineage_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def fam():
    return family()


def _csv(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


# --- fleet ------------------------------------------------------------------------------------


def test_fleet_has_one_row_per_device_with_the_newest_deployment_at_its_smallest_batch(fam):
    f = fleet_build(organization=fam["org"], version_id=fam["int8"].pk)
    assert f["version"]["id"] == fam["int8"].pk and f["version"]["label"] == "int8"
    assert [r["device"]["name"] for r in f["rows"]] == ["jetson", "pi"]
    jetson, pi = f["rows"]
    # pi ran it twice: the newer deployment (p50 4.0 at batch 1, not 9.0, not batch 8's 20.0)
    assert pi["latency"] == {"count": 200, "mean_ms": pytest.approx(4.2),
                             "stdev_ms": pytest.approx(0.4), "p50_ms": 4.0,
                             "p90_ms": pytest.approx(4.8), "p99_ms": pytest.approx(6.0)}  # fmt: skip
    assert pi["batch_size"] == 1 and pi["throughput"] == pytest.approx(250.0)
    assert (pi["peak_mem_mb"], pi["load_time_ms"], pi["threads"]) == (48.0, 12.5, 2)
    assert pi["top1_pct"] == 95.0 and pi["eval_samples"] == 100 and "test split" in pi["eval_set"]
    # What the agent reported with the measurement wins over the device's last facts.
    assert (pi["cpu"], pi["cores"], pi["os"], pi["arch"]) == (
        "Cortex-A72",
        4,
        "Linux-6.6",
        "aarch64",
    )
    assert pi["isa"] == "asimd"
    assert pi["runtime"] == "onnxruntime 1.20.1" and pi["provider"] == "CPUExecutionProvider"
    assert pi["measured_at"] and pi["deployment"] == pi["accuracy_deployment"]
    assert pi["op_profile_ms"] == PROFILE_PI and list(pi["op_profile_ms"]) == [
        "Conv",
        "Gemm",
        "Relu",
    ]
    assert jetson["cpu"] == "Carmel" and jetson["cores"] == 6 and jetson["top1_pct"] is None
    assert jetson["op_profile_ms"] == PROFILE_JETSON
    # Op types ordered by their total over the fleet.
    assert f["op_types"] == ["Conv", "Gemm", "Relu", "MaxPool"]


def test_fleet_falls_back_to_the_device_facts_and_reads_malformed_payloads_as_blanks(fam):
    org, v = fam["org"], fam["pruned"]
    deploy(org, v, fam["pi"], latencies=[{"p50_ms": 3.0, "hardware": "junk", "runs": "x",
                                          "op_profile_ms": {"Conv": "slow", "Add": 1}}])  # fmt: skip
    (row,) = fleet_build(organization=org, version_id=v.pk)["rows"]
    assert (row["cpu"], row["cores"], row["os"]) == ("BCM2711", 4, "Debian 12")
    assert row["runtime"] == "onnxruntime 1.19.0" and row["provider"] == "" and row["isa"] == ""
    assert row["latency"]["count"] is None and row["latency"]["p50_ms"] == 3.0
    assert row["op_profile_ms"] == {"Add": 1.0}


def test_fleet_of_a_version_nobody_ran_is_empty_and_another_orgs_version_is_404(fam):
    from django.http import Http404

    f = fleet_build(organization=fam["org"], version_id=fam["base"].pk)
    assert f["rows"] == [] and f["devices"] == 0 and charts.fleet_figures(f) == {}
    other = make_organization(owner=make_user())
    with pytest.raises(Http404):
        fleet_build(organization=other, version_id=fam["int8"].pk)
    with pytest.raises(Http404):
        fleet_build(organization=fam["org"], version_id="nope")


def test_fleet_reads_in_two_queries_whatever_the_number_of_devices(fam):
    org, v = fam["org"], fam["int8"]
    with CaptureQueriesContext(connection) as few:
        fleet_build(organization=org, version_id=v.pk)
    for i in range(8):
        dev = Device.objects.create(organization=org, name=f"dev-{i}")
        deploy(org, v, dev, latencies=[latency_payload(1.0 + i, profile={"Conv": 1.0})], top1=90.0)
    with CaptureQueriesContext(connection) as many:
        f = fleet_build(organization=org, version_id=v.pk)
    assert len(f["rows"]) == 10
    assert len(many.captured_queries) == len(few.captured_queries) == 2


def test_fleet_page_shows_the_table_and_both_charts(fam):
    manager = make_member(fam["org"], role=Role.MANAGER)
    v = fam["int8"]
    r = client_for(manager).get(reverse("reports:fleet", args=[v.pk]))
    assert r.status_code == 200
    html = r.content.decode()
    assert html.count("<tr data-device=") == 2
    assert "Cortex-A72" in html and "CPUExecutionProvider" in html and "95.00%" in html
    assert "data-isa" in html and "· asimd<" in html
    figures = r.context["figures"]
    assert set(figures) == {"chart-fleet-latency", "chart-fleet-ops"}
    ops = figures["chart-fleet-ops"]
    assert [t["name"] for t in ops["data"]] == ["jetson", "pi"]
    assert list(ops["data"][1]["y"]) == ["Conv", "Gemm", "Relu", "MaxPool"]
    assert list(ops["data"][1]["x"]) == [2.5, 0.75, 0.25, 0.0]
    for fmt in ("csv", "json", "pdf"):
        assert reverse("reports:fleet_export", args=[v.pk, fmt]) in html


def test_the_version_page_and_the_comparison_link_to_fleet_and_lineage(fam):
    client = client_for(fam["owner"])
    v = fam["int8"]
    html = client.get(reverse("catalog:model_version_detail", args=[v.pk])).content.decode()
    assert reverse("reports:fleet", args=[v.pk]) in html
    assert reverse("reports:lineage", args=[v.pk]) in html
    html = client.get(reverse("reports:compare") + f"?v={v.pk}&v={fam['fp32'].pk}").content.decode()
    assert reverse("reports:fleet", args=[v.pk]) in html
    assert reverse("reports:lineage", args=[fam["fp32"].pk]) in html


def test_fleet_exports_csv_and_json(fam):
    client, v = client_for(fam["owner"]), fam["int8"]
    r = client.get(reverse("reports:fleet_export", args=[v.pk, "json"]))
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    assert 'filename="fleet-version-' in r["Content-Disposition"]
    data = json.loads(r.content)
    assert data == json.loads(json.dumps(fleet_build(organization=fam["org"], version_id=v.pk)))
    r = client.get(reverse("reports:fleet_export", args=[v.pk, "csv"]))
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    rows = _csv(r)
    assert list(rows[0]) == list(FLEET_CSV_FIELDS)
    pi = next(row for row in rows if row["device"] == "pi")
    assert pi["latency_count"] == "200" and float(pi["latency_p50_ms"]) == 4.0
    assert float(pi["latency_mean_ms"]) == pytest.approx(4.2)
    assert float(pi["latency_stdev_ms"]) == pytest.approx(0.4)
    assert float(pi["latency_p90_ms"]) == pytest.approx(4.8)
    assert float(pi["latency_p99_ms"]) == pytest.approx(6.0)
    assert pi["top1_pct"] == "95.0" and pi["peak_mem_mb"] == "48.0" and pi["cores"] == "4"
    assert json.loads(pi["op_profile_ms"]) == PROFILE_PI and pi["isa"] == "asimd"
    jetson = next(row for row in rows if row["device"] == "jetson")
    assert jetson["top1_pct"] == "" and jetson["eval_set"] == ""


def test_fleet_api_and_its_schema(fam, token_for):
    client, v = client_for(fam["owner"]), fam["int8"]
    r = client.get(f"/api/v1/reports/versions/{v.pk}/fleet/", **token_for(fam["owner"]))
    assert r.status_code == 200
    body = r.json()
    assert [row["device"]["name"] for row in body["rows"]] == ["jetson", "pi"]
    assert body["rows"][1]["latency"]["p50_ms"] == 4.0
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/v1/reports/versions/{id}/fleet/" in schema["paths"]
    assert "/api/v1/reports/versions/{id}/lineage/" in schema["paths"]
    props = schema["components"]["schemas"]["FleetRow"]["properties"]
    assert {"latency", "op_profile_ms", "peak_mem_mb", "load_time_ms", "measured_at"} <= set(props)


def test_another_organisation_gets_404_from_fleet_and_lineage_pages_api_and_exports(fam):
    outsider = make_user()
    make_organization(owner=outsider)
    client, v = client_for(outsider), fam["int8"]
    urls = [
        reverse("reports:fleet", args=[v.pk]),
        reverse("reports:lineage", args=[v.pk]),
        *(reverse("reports:fleet_export", args=[v.pk, f]) for f in ("csv", "json", "pdf")),
        *(reverse("reports:lineage_export", args=[v.pk, f]) for f in ("csv", "json")),
        f"/api/v1/reports/versions/{v.pk}/fleet/",
        f"/api/v1/reports/versions/{v.pk}/lineage/",
        reverse("reports:fleet", args=[999999]),
        "/api/v1/reports/versions/999999/lineage/",
    ]
    for url in urls:
        assert client.get(url).status_code == 404, url


# --- lineage ----------------------------------------------------------------------------------


def test_lineage_from_any_member_is_the_whole_family_with_jobs_recipes_and_devices(fam):
    lin = lineage_build(organization=fam["org"], version_id=fam["pruned"].pk)
    base, fp32, int8, pruned = fam["base"], fam["fp32"], fam["int8"], fam["pruned"]
    assert lin["root"] == base.pk and lin["focus"] == pruned.pk
    nodes = {n["id"]: n for n in lin["versions"]}
    assert set(nodes) == {base.pk, fp32.pk, int8.pk, pruned.pk}
    assert nodes[base.pk]["parent"] is None and nodes[base.pk]["job"] is None
    assert nodes[base.pk]["children"] == [fp32.pk, int8.pk]
    assert nodes[pruned.pk]["parent"] == fp32.pk and nodes[pruned.pk]["depth"] == 2
    assert nodes[pruned.pk]["job"]["id"] == fam["job2"].pk
    assert nodes[pruned.pk]["recipe"]["methods"] == ["structured_pruning"]
    assert nodes[int8.pk]["recipe"]["methods"] == ["channel_pruning"]
    on = {d["name"]: d for d in nodes[int8.pk]["devices"]}
    assert (
        on["pi"]["p50_ms"] == 4.0 and on["pi"]["top1_pct"] == 95.0 and on["jetson"]["p50_ms"] == 1.0
    )
    assert nodes[pruned.pk]["devices"] == []
    # The tree layout: generations go down, a parent sits over the middle of its children.
    assert nodes[base.pk]["y"] < nodes[fp32.pk]["y"] < nodes[pruned.pk]["y"]
    assert nodes[fp32.pk]["y"] == nodes[int8.pk]["y"]
    middle = (nodes[fp32.pk]["x"] + nodes[int8.pk]["x"]) / 2
    assert abs(nodes[base.pk]["x"] - middle) <= 1
    assert lin["width"] >= 2 * NODE_W


def test_lineage_reads_in_a_fixed_number_of_queries(fam):
    org = fam["org"]
    with CaptureQueriesContext(connection) as few:
        lineage_build(organization=org, version_id=fam["base"].pk)
    parent = fam["pruned"]
    for i in range(6):  # a longer chain and more devices
        parent = version(org, parent=parent, job=fam["job2"], label="fp32")
        device_result(org, parent, Device.objects.create(organization=org, name=f"d{i}"), p50=1.0)
    with CaptureQueriesContext(connection) as many:
        lin = lineage_build(organization=org, version_id=fam["base"].pk)
    assert len(lin["versions"]) == 10
    assert len(many.captured_queries) == len(few.captured_queries) <= 4


def test_lineage_page_draws_a_navigable_tree_and_a_list(fam):
    manager = make_member(fam["org"], role=Role.MANAGER)
    r = client_for(manager).get(reverse("reports:lineage", args=[fam["int8"].pk]))
    assert r.status_code == 200
    html = r.content.decode()
    for key in ("base", "fp32", "int8", "pruned"):
        v = fam[key]
        detail = reverse("catalog:model_version_detail", args=[v.pk])
        assert f'<a href="{detail}" data-lineage-node="{v.pk}">' in html
        assert f'<tr data-version="{v.pk}"' in html
    assert html.count("data-lineage-edge=") == 3
    assert reverse("reports:detail", args=[fam["job2"].pk]) in html
    assert "data-focus" in html and "pi: p50 4.000 ms · top-1 95.00%" in html


def test_lineage_exports_csv_and_json_and_the_api(fam, token_for):
    client, v = client_for(fam["owner"]), fam["fp32"]
    data = json.loads(client.get(reverse("reports:lineage_export", args=[v.pk, "json"])).content)
    api = client.get(f"/api/v1/reports/versions/{v.pk}/lineage/", **token_for(fam["owner"])).json()
    assert data == api and data["root"] == fam["base"].pk and len(data["versions"]) == 4
    rows = _csv(client.get(reverse("reports:lineage_export", args=[v.pk, "csv"])))
    assert [int(r["id"]) for r in rows] == [n["id"] for n in data["versions"]]
    int8 = next(r for r in rows if int(r["id"]) == fam["int8"].pk)
    pi, jetson = fam["pi"].pk, fam["jetson"].pk
    assert int8["parent"] == str(fam["base"].pk) and int8["job"] == str(fam["job1"].pk)
    assert int8["methods"] == "channel_pruning" and int8["depth"] == "1"
    assert float(int8[f"device:{pi}:pi:p50_ms"]) == 4.0
    assert float(int8[f"device:{pi}:pi:top1_pct"]) == 95.0
    assert float(int8[f"device:{jetson}:jetson:p50_ms"]) == 1.0
    assert int8[f"device:{jetson}:jetson:top1_pct"] == ""


def test_a_family_too_large_to_draw_is_refused_with_the_reason(fam, monkeypatch, token_for):
    from webapp.reports import lineage

    monkeypatch.setattr(lineage, "MAX_LINEAGE_VERSIONS", 3)
    client, v = client_for(fam["owner"]), fam["int8"]
    r = client.get(reverse("reports:lineage", args=[v.pk]))
    assert r.status_code == 400
    assert "This family has 4 versions; the lineage shows at most 3;" in r.content.decode()
    r = client.get(f"/api/v1/reports/versions/{v.pk}/lineage/", **token_for(fam["owner"]))
    assert r.status_code == 400 and "at most 3" in r.json()["detail"]
    r = client.get(reverse("reports:lineage_export", args=[v.pk, "csv"]))
    assert r.status_code == 400


def test_the_fleet_and_lineage_pages_run_no_query_per_row(fam):
    """The whole request, pages included: more devices and versions, the same query count."""
    org, client = fam["org"], client_for(fam["owner"])
    urls = [reverse("reports:fleet", args=[fam["int8"].pk]),
            reverse("reports:lineage", args=[fam["int8"].pk])]  # fmt: skip

    def counts() -> list[int]:
        out = []
        for url in urls:
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200
            out.append(len(ctx.captured_queries))
        return out

    before = counts()
    parent = fam["int8"]
    for i in range(6):
        dev = Device.objects.create(organization=org, name=f"more-{i}")
        deploy(org, fam["int8"], dev, latencies=[latency_payload(2.0, profile={"Conv": 1.0})])
        parent = version(org, parent=parent, job=fam["job2"], label="int8")
        device_result(org, parent, dev, p50=1.0)
    assert counts() == before
