"""Evaluation sets of catalog versions: the test split of the version's data set, preprocessed,
built once per (version, data set); accuracy stored in percent; refused without an eval set."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from catalog_versions import SIZE, job_onnx_version
from device_factories import agent_socket, artifact, deployment, enrolled_device
from django.urls import reverse
from factories import client_for, make_organization, make_user
from jobs_factories import make_digits, make_model_version

import webapp.asgi  # noqa: F401  (sets up logging now, not under a test's caplog)
from device_registry import eval_sets, model_versions, services
from device_registry.models import DeployableArtifact, DeploymentResult
from edgeslim_agent.protocol import CLOSE_PROTOCOL, Ack, Hello, decode, encode
from webapp.catalog.loaders import dataset_load
from webapp.catalog.models import ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def org_and_user():
    user = make_user()
    return make_organization(owner=user), user


def _npz(art: DeployableArtifact) -> dict[str, np.ndarray]:
    with art.eval_file.open("rb") as fh, np.load(io.BytesIO(fh.read()), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_a_job_version_ships_its_datasets_test_split_preprocessed(org_and_user, tmp_path):
    org, user = org_and_user
    version, job = job_onnx_version(org, tmp_path)
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    data = _npz(art)
    bundle = dataset_load(job.dataset, work_dir=tmp_path / "d", size=SIZE, channels=1)
    n = len(bundle.test)
    x, y = bundle.test.__getitems__(list(range(n)))
    assert data["x"].dtype == np.float32 and data["x"].shape == (n, 1, SIZE, SIZE)
    assert data["y"].dtype == np.int64
    np.testing.assert_array_equal(data["x"], x.numpy())  # normalised exactly as trained
    np.testing.assert_array_equal(data["y"], y.numpy())
    assert str(data["dataset"]) == job.dataset.name and str(data["split"]) == "test"
    assert int(data["count"]) == int(data["test_size"]) == n and int(data["split_seed"]) == 0
    assert json.loads(str(data["preprocessing"]))["mean"] == list(bundle.preprocessing.mean)
    assert art.eval_meta["dataset_id"] == job.dataset.pk and art.eval_meta["count"] == n
    assert art.eval_size == art.eval_file.size and len(art.eval_sha256) == 64
    # Built once per (version, data set): the second deploy reuses the artifact and its file.
    again = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    assert again.pk == art.pk and DeployableArtifact.objects.count() == 1


def test_the_eval_set_is_the_first_n_test_images_under_the_cap(org_and_user, tmp_path, settings):
    org, user = org_and_user
    settings.EDGESLIM_EVAL_SET_MAX_SAMPLES = 50
    version, job = job_onnx_version(org, tmp_path)
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    data = _npz(art)
    bundle = dataset_load(job.dataset, work_dir=tmp_path / "d", size=SIZE, channels=1)
    x, y = bundle.test.__getitems__(list(range(50)))
    np.testing.assert_array_equal(data["x"], x.numpy())
    np.testing.assert_array_equal(data["y"], y.numpy())
    assert int(data["count"]) == 50 and int(data["test_size"]) == len(bundle.test) > 50
    assert "first 50 of" in eval_sets.describe(art.eval_meta)


def test_a_grandchild_finds_the_job_up_its_lineage(org_and_user, tmp_path):
    org, _ = org_and_user
    version, job = job_onnx_version(org, tmp_path)
    child = ModelVersion.objects.create(
        organization=org, asset=version.asset, number=99, format="onnx", parent=version,
        num_classes=10, in_channels=1, input_size=SIZE, status="ready",
    )  # fmt: skip
    assert eval_sets.model_version_dataset(child) == job.dataset


def _upload_onnx(org, tmp_path) -> ModelVersion:
    """An ONNX version with no job up its lineage (its parent is a plain upload)."""
    version, _ = job_onnx_version(org, tmp_path)
    version.produced_by_job_id = None
    version.parent = make_model_version(org)
    version.save(update_fields=["produced_by_job_id", "parent"])
    return version


def test_an_upload_deploys_without_accuracy_unless_a_fitting_dataset_is_picked(
    org_and_user, tmp_path
):
    org, user = org_and_user
    version = _upload_onnx(org, tmp_path)
    plain = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    assert not plain.eval_file and plain.eval_meta == {}
    digits = make_digits(org)
    picked = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version, dataset=digits
    )
    assert picked.pk != plain.pk and picked.eval_meta["dataset_id"] == digits.pk
    assert (
        picked.pk
        == model_versions.artifact_for_model_version(
            organization=org, user=user, model_version=version, dataset=digits
        ).pk
    )
    # A data set whose classes do not fit is refused with the reason.
    from webapp.catalog.models import Dataset

    zip_ds = Dataset.objects.create(
        organization=org, name="pets", kind="image_zip", num_classes=2, status="ready",
        report={"input_shape": [3, 32, 32]},
    )  # fmt: skip
    with pytest.raises(model_versions.NotDeployable, match="10 classes but the data set"):
        model_versions.artifact_for_model_version(
            organization=org, user=user, model_version=version, dataset=zip_ds
        )
    fitting = [d.pk for d in eval_sets.fitting_datasets(version)]
    assert digits.pk in fitting and zip_ds.pk not in fitting


def test_the_model_page_says_what_ships_and_offers_a_dataset_for_an_upload(org_and_user, tmp_path):
    org, user = org_and_user
    version, job = job_onnx_version(org, tmp_path)
    c = client_for(user)
    html = c.get(reverse("catalog:model_version_detail", args=[version.pk])).content.decode()
    assert f'data-eval-set="{job.dataset.pk}"' in html and job.dataset.name in html
    upload = _upload_onnx(org, tmp_path / "u")
    html = c.get(reverse("catalog:model_version_detail", args=[upload.pk])).content.decode()
    assert "data-eval-dataset-choice" in html and "deploy without accuracy" in html
    response = c.post(
        reverse("devices:deploy_model_version", args=[upload.pk]), {"dataset": job.dataset.pk}
    )
    art = DeployableArtifact.objects.get(source=f"model_version:{upload.pk}")
    assert response["Location"].endswith(f"?artifact={art.pk}")
    page = c.get(response["Location"]).content.decode()
    assert "Evaluation set:" in page and job.dataset.name in page
    stranger = make_organization(owner=make_user())
    foreign = make_digits(stranger)
    url = reverse("devices:deploy_model_version", args=[upload.pk])
    assert c.post(url, {"dataset": foreign.pk}).status_code == 404


def test_the_api_deploys_a_model_version_with_accuracy_on(org_and_user, tmp_path):
    org, user = org_and_user
    version, job = job_onnx_version(org, tmp_path)
    device, _ = enrolled_device(org)
    c = client_for(user)
    body = {"model_version": version.pk, "target_kind": "device", "target_value": str(device.pk)}
    response = c.post(reverse("api_deployments"), body, content_type="application/json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["settings"]["accuracy"] is True
    assert data["eval_set"]["dataset"] == job.dataset.name
    assert data["eval_set"]["split"] == "test"
    both = {**body, "artifact": data["artifact"]}
    bad = c.post(reverse("api_deployments"), both, content_type="application/json")
    assert bad.status_code == 400


def test_accuracy_is_refused_at_deploy_time_without_an_eval_set(org_and_user, tmp_path):
    org, _ = org_and_user
    device, _ = enrolled_device(org)
    with pytest.raises(services.NoEvalSet):
        deployment(org, artifact(org, tmp_path), device, accuracy=True)


def _raw_accuracy(dep_id: int, seq: int, data: dict) -> str:
    """A result frame written by hand, as a misbehaving (or older) agent might send it."""
    return json.dumps(
        {"v": 1, "type": "result", "deployment_id": dep_id, "seq": seq, "kind": "accuracy",
         "data": data}
    )  # fmt: skip


def _send_raw(credential: str, frame: str) -> dict:
    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=encode(Hello(agent_version="0.1.0", facts=_facts())))
        await ws.receive_from()  # welcome
        await ws.receive_from()  # deploy
        await ws.send_to(text_data=frame)
        reply = json.loads(await ws.receive_from())
        output = await ws.receive_output(timeout=1) if reply["type"] == "error" else None
        await ws.disconnect()
        return {"reply": reply, "close": output}

    return async_to_sync(scenario)()


def _facts():
    from device_factories import FACTS

    return FACTS


def test_the_server_refuses_accuracy_for_a_deployment_without_an_eval_set(tmp_path, caplog):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device)  # no eval set shipped
    frame = _raw_accuracy(dep.pk, 2, {"top1_pct": 100.0, "correct": 60, "samples": 60})
    with caplog.at_level(logging.WARNING, logger="edgeslim.devices"):
        out = _send_raw(credential, frame)
    assert decode(json.dumps(out["reply"])) == Ack(deployment_id=dep.pk, seq=2)  # dropped...
    assert not DeploymentResult.objects.filter(deployment=dep).exists()  # ...never stored
    assert "shipped no evaluation set" in caplog.text


def test_accuracy_is_stored_in_percent_from_the_counts(tmp_path):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path, with_eval=True), device, accuracy=True)
    # An older agent's fraction: converted once, from its integer counts.
    out = _send_raw(credential, _raw_accuracy(dep.pk, 2, {"top1": 0.9, "correct": 54,
                                                            "samples": 60}))  # fmt: skip
    assert out["reply"]["type"] == "ack"
    row = DeploymentResult.objects.get(deployment=dep, kind="accuracy")
    assert row.payload["top1_pct"] == 90.0 and "top1" not in row.payload


@pytest.mark.parametrize(
    "data",
    [
        {"top1_pct": 95.0, "correct": 54, "samples": 60},  # the percent disagrees
        {"top1_pct": 90.0},  # no counts
        {"correct": 61, "samples": 60},  # more correct than images
    ],
)
def test_a_malformed_accuracy_result_closes_the_socket(tmp_path, data):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path, with_eval=True), device, accuracy=True)
    out = _send_raw(credential, _raw_accuracy(dep.pk, 2, data))
    assert out["reply"]["type"] == "error" and out["close"]["code"] == CLOSE_PROTOCOL
    assert not DeploymentResult.objects.filter(deployment=dep).exists()


def test_an_accuracy_over_more_images_than_were_shipped_is_refused(org_and_user, tmp_path):
    org, user = org_and_user
    version, _ = job_onnx_version(org, tmp_path)
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    device, credential = enrolled_device(org)
    dep = deployment(org, art, device, accuracy=True)
    n = art.eval_meta["count"]
    out = _send_raw(credential, _raw_accuracy(dep.pk, 2, {"correct": n, "samples": n + 1}))
    assert out["close"]["code"] == CLOSE_PROTOCOL


def test_the_migration_turns_stored_fractions_into_percent(tmp_path):
    import importlib

    from django.apps import apps

    migration = importlib.import_module(
        "device_registry.migrations.0002_artifact_eval_meta_accuracy_percent"
    )
    device, _ = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path, with_eval=True), device, accuracy=True)
    legacy = DeploymentResult.objects.create(
        deployment=dep, device=device, seq=2, kind="accuracy",
        payload={"top1": 0.9, "correct": 54, "samples": 60},
    )  # fmt: skip
    migration.accuracy_to_percent(apps, None)
    legacy.refresh_from_db()
    assert legacy.payload == {"top1_pct": 90.0, "correct": 54, "samples": 60}
