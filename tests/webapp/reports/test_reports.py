"""The report page: tables and Plotly figures from the run report; the index of finished jobs."""

from __future__ import annotations

import pytest
from django.urls import reverse
from factories import client_for

from webapp.reports import charts, selectors

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_report_page_shows_every_state_charts_and_downloads(finished_job, org_a):
    _, user = org_a
    c = client_for(user)
    page = c.get(reverse("reports:detail", args=[finished_job.pk]))
    assert page.status_code == 200
    rows = page.context["rows"]
    assert [r["kind"] for r in rows] == ["baseline", "stage", "stage", "final"]
    assert rows[-1]["format"] == "onnx" and rows[-1]["size_ratio"] > 2  # int8 is ~4x smaller
    assert set(page.context["figures"]) >= {"chart-size", "chart-acc-size", "chart-training"}
    html = page.content.decode()
    for key in ("onnx", "onnx_int8", "report", "recipe"):
        assert f'data-artifact="{key}"' in html
    download = c.get(reverse("jobs:artifact", args=[finished_job.pk, "onnx"]))
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    index = c.get(reverse("reports:index")).content.decode()
    assert f"#{finished_job.pk}" in index


def test_chart_builders_return_plotly_figure_dicts():
    report = {
        "baseline": {"accuracy": 95.0, "onnx_bytes": 4000, "macs": 100, "params": 10},
        "stages": [
            {
                "index": 0,
                "method": "channel_pruning",
                "metrics": {"accuracy": 94.0, "onnx_bytes": 2000},
                "layers": [
                    {"name": "conv1", "kind": "conv", "channels_before": 6, "channels_after": 3}
                ],
            },
            {"index": 1, "method": "ptq_int8", "metrics": {"accuracy": 93.5, "onnx_bytes": 600}},
        ],
        "final": {"accuracy": 93.5, "onnx_bytes": 600},
    }
    rows = selectors.report_rows(report)
    water = charts.size_waterfall(rows)
    assert water["data"][0]["type"] == "waterfall"
    assert water["data"][0]["measure"] == ["absolute", "relative", "relative", "total"]
    layers = charts.layer_changes(selectors.report_layer_changes(report))
    assert [b["name"] for b in layers["data"]] == ["before", "after"]
    assert list(layers["data"][1]["y"]) == [3]
    assert charts.accuracy_vs_size(rows)["data"][0]["type"] == "scatter"
    assert charts.training_curves([]) == {}


def test_versions_a_job_produced_carry_the_reports_preprocessing_record(finished_job):
    from webapp.catalog.models import ModelVersion

    record = finished_job.report["preprocessing"]
    produced = ModelVersion.objects.filter(produced_by_job_id=finished_job.pk)
    assert produced.count() == 2  # fp32 and int8 ONNX
    assert all(v.preprocessing == record for v in produced)
    # The ONNX files can't be counted; they keep the MACs the job counted for its final model.
    macs = finished_job.report["final"]["macs"]
    assert isinstance(macs, int) and macs > 0 and all(v.macs == macs for v in produced)
    assert record["channels"] == 1 and record["input_size"] == [32, 32]


@pytest.mark.parametrize("n", [2, 5, 37])
def test_the_training_chart_ticks_whole_epochs_and_rounded_accuracy(n):
    epochs = [{"loss": 1.0 / (i + 1), "val_acc": 89.4 + i * 0.173} for i in range(n)]
    layout = charts.training_curves(epochs)["layout"]
    x = layout["xaxis"]
    assert (x["tickmode"], x["tick0"], x["tickformat"]) == ("linear", 1, "d")
    assert isinstance(x["dtick"], int) and x["dtick"] >= 1 and n / x["dtick"] <= 10
    acc = layout["yaxis2"]
    # Its own ticks (not synced to the loss grid), to a tenth of a percent.
    assert (acc["tickmode"], acc["tickformat"], acc["ticksuffix"]) == ("auto", ".1f", " %")


def test_the_accuracy_against_size_chart_rounds_its_accuracy_axis():
    rows = [{"size_bytes": 4096, "accuracy": 90.733, "kind": "baseline", "label": "baseline"}]
    y = charts.accuracy_vs_size(rows)["layout"]["yaxis"]
    assert (y["tickformat"], y["ticksuffix"]) == (".1f", " %")
