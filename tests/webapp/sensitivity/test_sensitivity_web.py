"""Layer sensitivity through the web stack: services and runner on PostgreSQL, the page with its
heatmap, the one-click step into the wizard, and the API."""

from __future__ import annotations

import json

import pytest
from factories import client_for, make_member
from jobs_factories import make_digits, make_model_version

from compression.sensitivity import SensitivityResult
from webapp.accounts.models import Role
from webapp.catalog.loaders import bundle_for_model_version
from webapp.jobs.errors import JobInputError
from webapp.sensitivity import services
from webapp.sensitivity.models import AnalysisStatus, SensitivityAnalysis
from webapp.sensitivity.runner import analysis_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished(org_a):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    analysis = services.analysis_create(
        organization=org, user=user, model_version=mv, dataset=ds, ratios=[0.75, 0.5]
    )
    assert analysis_run(analysis.pk) == "succeeded"
    analysis.refresh_from_db()
    return analysis


def test_the_runner_measures_every_layer_on_the_val_split(finished, tmp_path):
    assert finished.status == AnalysisStatus.SUCCEEDED and finished.progress == 1.0
    assert finished.attempts == 1
    result = SensitivityResult.from_dict(finished.result)
    assert result.ratios == (0.5, 0.75)
    assert [layer.name for layer in result.layers] == [
        "features.0", "features.3", "classifier.1", "classifier.3",
    ]  # fmt: skip
    assert [layer.kept for layer in result.layers][1] == (8, 4)
    data = bundle_for_model_version(finished.dataset, finished.model_version, work_dir=tmp_path)
    assert result.split == "val" and result.samples == len(data.val) != len(data.test)
    # Nothing to do a second time.
    assert analysis_run(finished.pk) == "done"


def test_bad_input_is_refused_with_the_field(org_a, org_b):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    cases = [
        ({"ratios": [0.5, 1.5]}, "ratios"),
        ({"ratios": []}, "ratios"),
        ({"ratios": "0.5"}, "ratios"),
        ({"importance": "dynamic"}, "importance"),
        ({"round_to": 0}, "round_to"),
        ({"dataset": make_digits(org_b[0])}, "dataset"),
    ]
    for extra, field in cases:
        kwargs = {"organization": org, "user": user, "model_version": mv, "dataset": ds, **extra}
        with pytest.raises(JobInputError) as info:
            services.analysis_create(**kwargs)
        assert info.value.field == field
    assert not SensitivityAnalysis.objects.exists()


def test_a_failing_run_records_a_readable_reason(org_a):
    org, user = org_a
    analysis = services.analysis_create(
        organization=org, user=user, model_version=make_model_version(org, corrupt=True),
        dataset=make_digits(org), ratios=[0.5],
    )  # fmt: skip
    assert analysis_run(analysis.pk) == "failed"
    analysis.refresh_from_db()
    assert analysis.status == AnalysisStatus.FAILED and analysis.error


def test_the_stage_gives_each_layer_the_largest_ratio_within_the_tolerance(finished):
    result = SensitivityResult.from_dict(finished.result)
    stage = services.analysis_stage(analysis=finished, max_drop=100.0)
    assert stage["method"] == "channel_pruning"
    assert stage["config"]["layer_ratios"] == {layer.name: 0.75 for layer in result.layers}
    # A tolerance below every drop: refused, saying why.
    drops = [d for layer in result.layers for d in result.drop(layer)]
    if min(drops) > 0:
        with pytest.raises(JobInputError, match="no layer stays within"):
            services.analysis_stage(analysis=finished, max_drop=min(drops) / 2)


def test_the_page_shows_the_heatmap_and_the_table(finished, org_a):
    _, user = org_a
    resp = client_for(user).get(f"/sensitivity/{finished.pk}/")
    assert resp.status_code == 200
    body = resp.content.decode()
    assert 'id="sensitivity-heatmap"' in body and "data-to-wizard" in body
    figures = json.loads(body.split('id="sensitivity-figures" type="application/json">')[1]
                         .split("</script>")[0])  # fmt: skip
    heat = figures["sensitivity-heatmap"]["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == ["0.5", "0.75"]
    assert heat["y"] == ["features.0", "features.3", "classifier.1", "classifier.3"]
    assert body.count("data-layer=") == 4


def test_another_organisation_sees_404(finished, org_b, token_for):
    _, other = org_b
    assert client_for(other).get(f"/sensitivity/{finished.pk}/").status_code == 404
    api = client_for(other).get(f"/api/v1/sensitivity/{finished.pk}/", **token_for(other))
    assert api.status_code == 404


def test_one_click_opens_the_wizard_with_the_stage_prefilled(finished, org_a):
    _, user = org_a
    client = client_for(user)
    resp = client.post(f"/sensitivity/{finished.pk}/to-wizard/", {"max_drop": "100"})
    assert resp.status_code == 302 and resp["Location"] == "/jobs/new/params/"
    page = client.get("/jobs/new/params/").content.decode()
    assert "layer ratios" in page and "features.3" in page and "classifier.3" in page
    bad = client.post(f"/sensitivity/{finished.pk}/to-wizard/", {"max_drop": "-1"})
    assert bad.status_code == 400


def test_a_manager_reads_but_cannot_convert(finished, org_a):
    org, _ = org_a
    manager = make_member(org, role=Role.MANAGER)
    client = client_for(manager)
    assert client.get(f"/sensitivity/{finished.pk}/").status_code == 200
    assert (
        client.post(f"/sensitivity/{finished.pk}/to-wizard/", {"max_drop": "1"}).status_code == 403
    )


def test_the_api_starts_reads_and_converts(finished, org_a, token_for):
    _org, user = org_a
    client, auth = client_for(user), token_for(user)
    created = client.post(
        "/api/v1/sensitivity/",
        {"model_version": finished.model_version_id, "dataset": finished.dataset_id},
        content_type="application/json", **auth,
    )  # fmt: skip
    assert created.status_code == 201, created.content
    assert created.json()["ratios"] == [0.25, 0.5, 0.75]
    assert created.json()["status"] == "QUEUED"
    bad = client.post(
        "/api/v1/sensitivity/",
        {"model_version": finished.model_version_id, "dataset": finished.dataset_id,
         "ratios": [2]},
        content_type="application/json", **auth,
    )  # fmt: skip
    assert bad.status_code == 400 and bad.json()["field"] == "ratios"
    got = client.get(f"/api/v1/sensitivity/{finished.pk}/", **auth).json()
    assert got["result"]["split"] == "val" and len(got["result"]["layers"]) == 4
    stage = client.post(f"/api/v1/sensitivity/{finished.pk}/stage/", {"max_drop": 100},
                        content_type="application/json", **auth)  # fmt: skip
    assert stage.status_code == 200
    assert stage.json()["config"]["layer_ratios"]["features.3"] == 0.75
    pending = client.post(f"/api/v1/sensitivity/{created.json()['id']}/stage/", {"max_drop": 1},
                          content_type="application/json", **auth)  # fmt: skip
    assert pending.status_code == 409
    listed = client.get("/api/v1/sensitivity/", **auth).json()
    assert [a["id"] for a in listed] == [created.json()["id"], finished.pk]


def test_a_torch_version_page_links_to_a_preselected_analysis_form(org_a):
    from django.urls import reverse

    org, user = org_a
    mv = make_model_version(org)
    client = client_for(user)
    page = client.get(reverse("catalog:model_version_detail", args=[mv.pk])).content.decode()
    assert f'href="/sensitivity/?model={mv.pk}"' in page
    form = client.get(f"/sensitivity/?model={mv.pk}").content.decode()
    assert f'<option value="{mv.pk}" selected>' in form
