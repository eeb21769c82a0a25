"""The comparison of model versions: host and on-device figures side by side, changes against a
baseline, best values, accuracy only on the same test split, Pareto fronts, the page, the API
and the exports, and a query count that does not grow with versions or devices."""

from __future__ import annotations

import csv
import io
import json

import pytest
from compare_factories import dataset, device, device_result, job, metrics, version
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from factories import client_for, make_member, make_organization, make_user

from webapp.accounts.models import Role
from webapp.reports import charts
from webapp.reports.comparison import (
    MAX_COMPARE_VERSIONS,
    ComparisonInputError,
    comparison_build,
    comparison_csv_rows,
    comparison_from_query,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def lab():
    """An upload (torch), a job from it that made fp32 and int8, both run on two devices."""
    owner = make_user()
    org = make_organization(owner=owner)
    data = dataset(org, name="digits-lab")
    base = version(org, fmt="torch", params=1000, size=8000)
    j = job(
        org,
        base,
        data,
        baseline=metrics(98.0, 2.0, fmt="torch"),
        stages=[metrics(97.5, 1.0, fmt="torch"), metrics(97.0, 0.5)],
        final=metrics(97.0, 0.5),
    )
    fp32 = version(org, parent=base, job=j, label="fp32", params=500, size=4000)
    int8 = version(org, parent=base, job=j, label="int8", params=500, size=1000)
    pi, jetson = device(org, "pi"), device(org, "jetson")
    meta = {"dataset_id": data.pk, "dataset": data.name, "split_seed": 0, "count": 100}
    device_result(org, fp32, pi, p50=10.0, top1=96.0, eval_meta=meta)
    device_result(org, int8, pi, p50=4.0, top1=95.0, eval_meta=meta)
    device_result(org, int8, jetson, p50=1.0)
    return {"org": org, "owner": owner, "data": data, "base": base, "job": j,
            "fp32": fp32, "int8": int8, "pi": pi, "jetson": jetson}  # fmt: skip


def _cells(comparison, vid):
    return next(r for r in comparison["rows"] if r["id"] == vid)["cells"]


def test_host_and_device_figures_side_by_side_with_changes_and_best(lab):
    base, fp32, int8, pi = lab["base"], lab["fp32"], lab["int8"], lab["pi"]
    c = comparison_build(organization=lab["org"], version_ids=[int8.pk, fp32.pk, base.pk])
    assert c["baseline"] == base.pk and c["versions"][0] == base.pk
    assert [d["name"] for d in c["devices"]] == ["jetson", "pi"]
    b, f, i = _cells(c, base.pk), _cells(c, fp32.pk), _cells(c, int8.pk)
    # The upload is measured by the job that started from it (the report's baseline); fp32 by
    # the last torch stage, int8 by the final ONNX state.
    assert (b["accuracy"]["value"], f["accuracy"]["value"], i["accuracy"]["value"]) == (
        98.0,
        97.5,
        97.0,
    )
    assert (b["host_p50_ms"]["value"], f["host_p50_ms"]["value"], i["host_p50_ms"]["value"]) == (
        2.0,
        1.0,
        0.5,
    )
    assert i["host_p50_ms"]["spread"] == pytest.approx(0.05) and i["host_p50_ms"]["n"] == 5
    assert i["accuracy"]["delta"] == pytest.approx(-1.0)
    assert i["host_p50_ms"]["delta"] == pytest.approx(0.25)
    assert i["size_bytes"]["delta"] == pytest.approx(1000 / 8000)
    assert b["accuracy"]["best"] and not i["accuracy"]["best"]
    assert i["host_p50_ms"]["best"] and i["size_bytes"]["best"]
    # Params: fp32 and int8 tie for the best, both marked.
    assert f["params"]["best"] and i["params"]["best"] and not b["params"]["best"]
    pi_p50 = f"device:{pi.pk}:p50_ms"
    assert (f[pi_p50]["value"], i[pi_p50]["value"]) == (10.0, 4.0)
    assert i[pi_p50]["best"] and i[pi_p50]["delta"] is None  # the baseline never ran on pi
    assert b[pi_p50]["blank_reason"] == "Not run on pi."
    assert f[f"device:{pi.pk}:top1_pct"]["value"] == 96.0
    # int8 is faster and less accurate than fp32, which is faster than the upload: all three
    # are on the host front; on pi only the two that ran.
    assert c["pareto"]["host"] == [int8.pk, fp32.pk, base.pk]
    assert c["pareto"][f"device:{pi.pk}"] == [int8.pk, fp32.pk]


def test_the_baseline_can_be_chosen_and_must_be_one_of_them(lab):
    fp32, int8 = lab["fp32"], lab["int8"]
    c = comparison_build(
        organization=lab["org"], version_ids=[int8.pk, fp32.pk], baseline_id=fp32.pk
    )
    assert _cells(c, int8.pk)["accuracy"]["delta"] == pytest.approx(-0.5)
    assert _cells(c, int8.pk)["host_p50_ms"]["delta"] == pytest.approx(0.5)
    with pytest.raises(ComparisonInputError, match="baseline must be one of"):
        comparison_build(organization=lab["org"], version_ids=[int8.pk], baseline_id=lab["base"].pk)


def test_accuracy_on_another_test_split_or_task_is_blank_with_the_reason(lab):
    org, base = lab["org"], lab["base"]
    other_data = dataset(org, name="digits-other", split_seed=7)
    elsewhere = version(org, parent=base, label="", fmt="torch")
    job(org, elsewhere, other_data, baseline=metrics(99.0, 1.5, fmt="torch"))
    old = version(org, parent=base, fmt="torch")
    job(org, old, lab["data"], baseline=metrics(90.0, 1.5, fmt="torch", split="val"))
    detector = version(org, parent=base, fmt="torch", task="detection")
    job(org, detector, lab["data"], baseline=metrics(50.0, 1.5, fmt="torch"))
    never = version(org, parent=base, fmt="torch")
    c = comparison_build(
        organization=org, version_ids=[base.pk, elsewhere.pk, old.pk, detector.pk, never.pk]
    )
    assert "test split of digits-lab (split seed 0)" in c["accuracy_split"]
    cell = _cells(c, elsewhere.pk)["accuracy"]
    assert cell["value"] is None and "digits-other (split seed 7)" in cell["blank_reason"]
    assert "not comparable" in cell["blank_reason"]
    assert "val split" in _cells(c, old.pk)["accuracy"]["blank_reason"]
    assert "detection" in _cells(c, detector.pk)["accuracy"]["blank_reason"]
    assert "Not measured on the host" in _cells(c, never.pk)["accuracy"]["blank_reason"]
    # Its latency is still compared: only accuracy needs the same split.
    assert _cells(c, elsewhere.pk)["host_p50_ms"]["value"] == 1.5
    assert elsewhere.pk not in c["pareto"]["host"]


def test_accuracy_spread_across_seeds_of_the_same_recipe(lab):
    org, base, data = lab["org"], lab["base"], lab["data"]
    made = []
    for seed, acc in ((1, 96.0), (2, 97.0), (3, 98.0)):
        j = job(org, base, data, baseline=metrics(98.0, 2.0, fmt="torch"),
                final=metrics(acc, 1.0, fmt="torch"), seed=seed, method="qat")  # fmt: skip
        made.append(version(org, parent=base, job=j, label="fp32"))
    # Another recipe on the same parent is not a seed of it.
    other = job(org, base, data, baseline=metrics(98.0, 2.0, fmt="torch"),
                final=metrics(50.0, 1.0, fmt="torch"), seed=9, method="qat")  # fmt: skip
    other.recipe = {**other.recipe, "stages": []}
    other.save()
    version(org, parent=base, job=other, label="fp32")
    c = comparison_build(organization=org, version_ids=[base.pk, made[0].pk])
    cell = _cells(c, made[0].pk)["accuracy"]
    assert cell["value"] == 96.0 and cell["n"] == 3
    assert cell["spread"] == pytest.approx(1.0) and "mean 97.00 over 3 seeds" in cell["note"]
    assert _cells(c, base.pk)["accuracy"]["spread"] is None


def test_device_accuracy_on_another_evaluation_set_is_blank(lab):
    org, pi, fp32, int8 = lab["org"], lab["pi"], lab["fp32"], lab["int8"]
    later = version(org, parent=lab["base"], fmt="onnx")
    meta = {"dataset_id": lab["data"].pk, "dataset": "digits-lab", "split_seed": 0, "count": 50}
    device_result(org, later, pi, p50=3.0, top1=99.0, eval_meta=meta)
    c = comparison_build(
        organization=org, version_ids=[fp32.pk, int8.pk, later.pk], baseline_id=fp32.pk
    )
    cell = _cells(c, later.pk)[f"device:{pi.pk}:top1_pct"]
    assert cell["value"] is None and "50 images" in cell["blank_reason"]
    assert _cells(c, int8.pk)[f"device:{pi.pk}:top1_pct"]["delta"] == pytest.approx(-1.0)


def test_the_query_count_does_not_grow_with_versions_or_devices(lab):
    org, base, data = lab["org"], lab["base"], lab["data"]

    def grow(n_versions: int, n_devices: int) -> list[int]:
        devices = [device(org, f"d{n_versions}-{k}") for k in range(n_devices)]
        ids = [base.pk]
        for k in range(n_versions):
            j = job(org, base, data, baseline=metrics(98.0, 2.0, fmt="torch"),
                    final=metrics(90.0 + k / 10, 1.0 + k / 10), seed=100 * n_versions + k)  # fmt: skip
            v = version(org, parent=base, job=j, label="int8")
            for d in devices:
                device_result(org, v, d, p50=1.0 + k, top1=90.0)
            ids.append(v.pk)
        return ids

    small, large = grow(2, 1), grow(12, 6)

    def count(ids: list[int]) -> int:
        with CaptureQueriesContext(connection) as ctx:
            c = comparison_build(organization=org, version_ids=ids)
        assert len(c["rows"]) == len(ids)
        return len(ctx.captured_queries)

    assert count(large) == count(small) <= 5


def test_the_page_shows_the_table_best_marks_reasons_and_charts(lab, django_assert_max_num_queries):
    manager = make_member(lab["org"], role=Role.MANAGER)
    c = client_for(manager)
    url = reverse("reports:compare")
    ids = [lab["base"].pk, lab["fp32"].pk, lab["int8"].pk]
    with django_assert_max_num_queries(12):
        page = c.get(url, {"v": ids})
    assert page.status_code == 200
    html = page.content.decode()
    assert "data-compare-table" in html and html.count("data-best") >= 4
    assert "Not run on pi." in html and "×0.25" in html and "-1.00 pt" in html
    assert set(page.context["figures"]) == {
        "chart-pareto-host",
        f"chart-pareto-device-{lab['pi'].pk}",
        f"chart-pareto-device-{lab['jetson'].pk}",
        "chart-pareto-size",
    }
    front = page.context["figures"]["chart-pareto-host"]["data"][1]
    assert front["name"] == "Pareto front" and len(front["text"]) == 3
    # From the job report and the version page.
    by_job = c.get(url, {"job": lab["job"].pk})
    assert by_job.context["comparison"]["versions"] == ids
    family = c.get(url, {"family": lab["base"].pk})
    assert sorted(family.context["comparison"]["versions"]) == sorted(ids)
    assert (
        'href="/reports/compare/?job='
        in c.get(reverse("reports:detail", args=[lab["job"].pk])).content.decode()
    )
    assert "data-compare-pick" in c.get(reverse("models")).content.decode()
    assert "data-compare-link" in c.get(reverse("reports")).content.decode()
    assert (
        f"?family={lab['base'].pk}"
        in c.get(reverse("catalog:model_version_detail", args=[lab["base"].pk])).content.decode()
    )


def test_bad_input_is_refused_clearly(lab):
    c = client_for(lab["owner"])
    url = reverse("reports:compare")
    assert c.get(url).status_code == 200  # nothing picked: how to pick
    too_many = c.get(url, {"v": [str(i) for i in range(1, MAX_COMPARE_VERSIONS + 2)]})
    assert too_many.status_code == 400
    assert f"at most {MAX_COMPARE_VERSIONS}" in too_many.content.decode()
    bad = c.get(url, {"v": "abc"})
    assert bad.status_code == 400 and "is not a model version id" in bad.content.decode()
    both = c.get(url, {"v": lab["base"].pk, "job": lab["job"].pk})
    assert both.status_code == 400
    with pytest.raises(ComparisonInputError, match="at least one"):
        comparison_from_query(organization=lab["org"], versions=[])


def test_another_organisations_versions_and_jobs_answer_404(lab, token_for):
    stranger = make_user()
    other = make_organization(owner=stranger)
    theirs = version(other)
    c = client_for(lab["owner"])
    mine = lab["base"].pk
    for query in ({"v": [mine, theirs.pk]}, {"family": theirs.pk}, {"job": 10**9}):
        assert c.get(reverse("reports:compare"), query).status_code == 404
    export = reverse("reports:compare_export", args=["csv"])
    assert c.get(export, {"v": [mine, theirs.pk]}).status_code == 404
    api = reverse("api:reports-compare")
    headers = token_for(lab["owner"])
    assert c.get(api, {"versions": f"{mine},{theirs.pk}"}, **headers).status_code == 404
    # The stranger does not see ours either.
    assert client_for(stranger).get(reverse("reports:compare"), {"v": mine}).status_code == 404


def test_the_api_answers_the_same_comparison_and_is_in_the_schema(lab, token_for):
    ids = [lab["base"].pk, lab["fp32"].pk, lab["int8"].pk]
    manager = make_member(lab["org"], role=Role.MANAGER)
    headers = token_for(manager)
    from django.test import Client

    api = Client().get(
        reverse("api:reports-compare"), {"versions": ",".join(map(str, ids))}, **headers
    )
    assert api.status_code == 200
    body = api.json()
    assert body == json.loads(
        json.dumps(comparison_build(organization=lab["org"], version_ids=ids))
    )
    too_many = Client().get(
        reverse("api:reports-compare"),
        {"versions": ",".join(str(i) for i in range(1, 60))},
        **headers,
    )
    assert too_many.status_code == 400 and "at most" in too_many.json()["detail"]
    schema = Client().get("/api/schema/", {"format": "json"}, **headers).json()
    op = schema["paths"]["/api/v1/reports/compare/"]["get"]
    assert {p["name"] for p in op["parameters"]} >= {"versions", "family", "job", "baseline"}
    assert "400" in op["responses"] and "404" in op["responses"]


def test_csv_and_json_exports_carry_the_documented_fields(lab):
    ids = [lab["base"].pk, lab["int8"].pk]
    c = client_for(lab["owner"])
    url = reverse("reports:compare_export", args=["csv"])
    response = c.get(url, {"v": ids})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [int(r["id"]) for r in rows] == ids
    pi = lab["pi"].pk
    int8 = rows[1]
    assert float(int8["accuracy"]) == 97.0 and float(int8["accuracy_delta"]) == -1.0
    assert float(int8["host_p50_ms"]) == 0.5 and int8["host_p50_ms_best"] == "True"
    assert float(int8[f"device:{pi}:pi:p50_ms"]) == 4.0
    assert rows[0][f"device:{pi}:pi:p50_ms_blank_reason"] == "Not run on pi."
    assert rows[0]["is_baseline"] == "True"
    as_json = c.get(reverse("reports:compare_export", args=["json"]), {"v": ids}).json()
    assert as_json["versions"] == ids and as_json["rows"][1]["cells"]["accuracy"]["value"] == 97.0
    header = comparison_csv_rows(as_json)[0]
    assert header[:9] == ["id", "name", "number", "label", "format", "task", "parent", "job",
                          "is_baseline"]  # fmt: skip


def test_no_chart_without_points():
    empty = {"rows": [], "devices": [], "pareto": {}}
    assert charts.comparison_figures(empty) == {}
