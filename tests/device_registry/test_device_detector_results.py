"""A detector's results at the server: FPS figures on every latency result (from agent 0.7.0),
mAP instead of top-1 on the accuracy result, each checked, refused with the field's name, and
stored as sent; the deploy of a detector picks a detection data set only."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from device_factories import FACTS, agent_socket, artifact, deployment, enrolled_device
from device_onnx import write_linear_model
from django.urls import reverse
from factories import client_for, make_organization, make_user

import webapp.asgi  # noqa: F401  (sets up logging now, not under a test's caplog)
from device_registry import eval_sets, services
from device_registry.models import DeploymentResult
from edgeslim_agent.protocol import CLOSE_PROTOCOL, Hello, encode
from webapp.catalog.models import Dataset, DatasetKind, DatasetTask, ItemStatus

pytestmark = pytest.mark.django_db(transaction=True)

LATENCY = {
    "p50_ms": 9.0, "p90_ms": 9.5, "p99_ms": None, "mean_ms": 9.1, "throughput": 110.0,
    "batch_size": 1, "task": "detection", "fps": 111.1, "fps_e2e": 90.9, "net_p50_ms": 9.0,
    "e2e_p50_ms": 11.0, "e2e_p90_ms": 12.0, "e2e_p99_ms": None, "e2e_mean_ms": 11.2,
    "postprocess_p50_ms": 2.0, "detections_per_image": 4.0, "e2e_score_threshold": 0.25,
}  # fmt: skip
ACCURACY = {
    "task": "detection", "metric": "mAP@0.5", "map50": 0.625, "map50_95": 0.3125,
    "samples": 4, "boxes": 9, "detections": 40,
    "per_class": [{"class": "0", "ap50": 0.5, "ap50_95": 0.25, "boxes": 3}],
}  # fmt: skip


def _detection_npz() -> io.BytesIO:
    buf = io.BytesIO()
    np.savez(buf, task=np.array("detection"), x=np.zeros((4, 3, 8, 8), np.uint8))
    buf.seek(0)
    return buf


def _detector_deployment(tmp_path, device):
    org = device.organization
    art = services.artifact_create(
        organization=org, name="yolo.onnx",
        file=io.BytesIO(write_linear_model(tmp_path / "m.onnx").read_bytes()),
        eval_file=_detection_npz(), eval_meta={"task": "detection", "count": 4, "boxes": 9},
        task="detection",
    )  # fmt: skip
    return deployment(org, art, device, accuracy=True)


def _frame(dep_id: int, seq: int, kind: str, data: dict) -> str:
    return json.dumps(
        {"v": 1, "type": "result", "deployment_id": dep_id, "seq": seq, "kind": kind,
         "data": data}
    )  # fmt: skip


def _send(credential: str, frame: str, *, agent_version: str = "0.7.0") -> dict:
    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=encode(Hello(agent_version=agent_version, facts=FACTS)))
        await ws.receive_from()  # welcome
        await ws.receive_from()  # deploy
        await ws.send_to(text_data=frame)
        reply = json.loads(await ws.receive_from())
        output = await ws.receive_output(timeout=1) if reply["type"] == "error" else None
        await ws.disconnect()
        return {"reply": reply, "close": output}

    return async_to_sync(scenario)()


def _refused(out: dict, message: str) -> None:
    assert out["reply"]["type"] == "error", out
    assert message in out["reply"]["message"], out["reply"]["message"]
    assert out["close"]["code"] == CLOSE_PROTOCOL


def test_a_detectors_fps_and_map_are_stored_and_shown_as_map(tmp_path):
    user = make_user()
    device, credential = enrolled_device(make_organization(owner=user))
    dep = _detector_deployment(tmp_path, device)
    assert _send(credential, _frame(dep.pk, 1, "latency", LATENCY))["reply"]["type"] == "ack"
    assert _send(credential, _frame(dep.pk, 2, "accuracy", ACCURACY))["reply"]["type"] == "ack"
    stored = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    assert stored["map50"] == 0.625 and stored["map50_95"] == 0.3125 and "top1_pct" not in stored
    latency = DeploymentResult.objects.get(deployment=dep, kind="latency").payload
    assert latency["fps_e2e"] == 90.9

    client = client_for(user)
    html = client.get(reverse("devices:deployment", args=[dep.pk])).content.decode()
    assert "mAP@0.5 0.625 · mAP@0.5:0.95 0.313 (4 images)" in html
    assert 'id="detector-table"' in html and "<td data-fps-e2e>90.9</td>" in html
    assert "<td data-map50>0.625</td>" in html and "<td data-map50-95>0.313</td>" in html
    assert '<th scope="row">mAP on the test split</th><td>yes</td>' in html  # the settings
    device_html = client.get(reverse("devices:detail", args=[device.pk])).content.decode()
    assert "<td data-fps>111.1</td>" in device_html and "FPS (end to end)" in device_html
    api = client.get(f"/api/v1/deployments/{dep.pk}/").json()
    assert api["artifact_task"] == "detection"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"map50": "high"}, "needs a number 'map50'"),
        ({"map50": 1.5}, "map50=1.5 is outside [0.0, 1.0]"),
        ({"map50_95": 0.9}, "map50_95=0.9 is above map50=0.625"),
        ({"samples": 5}, "the evaluation set holds 4"),
        ({"top1_pct": 62.5}, "carries mAP, not top-1"),
        ({"task": None}, "needs task 'detection'"),
    ],
)
def test_a_malformed_detector_accuracy_is_refused_with_its_field(tmp_path, change, message):
    device, credential = enrolled_device()
    dep = _detector_deployment(tmp_path, device)
    _refused(_send(credential, _frame(dep.pk, 2, "accuracy", {**ACCURACY, **change})), message)
    assert not DeploymentResult.objects.filter(deployment=dep).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fps_e2e": None}, "needs a number 'fps_e2e'"),
        ({"fps": -3}, "fps=-3.0 is outside"),
        ({"fps_e2e": 500.0}, "is above fps"),
        ({"e2e_p50_ms": "slow"}, "needs a number 'e2e_p50_ms'"),
    ],
)
def test_a_malformed_detector_latency_is_refused_with_its_field(tmp_path, change, message):
    device, credential = enrolled_device()
    dep = _detector_deployment(tmp_path, device)
    _refused(_send(credential, _frame(dep.pk, 1, "latency", {**LATENCY, **change})), message)
    assert not DeploymentResult.objects.filter(deployment=dep).exists()


def test_an_agent_before_detectors_is_stored_without_fps_and_a_new_one_must_send_it(tmp_path):
    plain = {k: v for k, v in LATENCY.items() if k in ("p50_ms", "p90_ms", "mean_ms", "batch_size")}
    device, credential = enrolled_device()
    dep = _detector_deployment(tmp_path, device)
    _refused(_send(credential, _frame(dep.pk, 1, "latency", plain)), "needs a number 'fps'")
    out = _send(credential, _frame(dep.pk, 1, "latency", plain), agent_version="0.6.0")
    assert out["reply"]["type"] == "ack"
    assert DeploymentResult.objects.filter(deployment=dep, kind="latency").exists()


def test_a_classifier_deployment_refuses_a_detectors_map(tmp_path):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path, with_eval=True), device, accuracy=True)
    _refused(
        _send(credential, _frame(dep.pk, 2, "accuracy", ACCURACY)),
        "shipped a classification evaluation set",
    )


def test_a_detector_is_evaluated_on_a_detection_data_set_only(tmp_path):
    from jobs_factories import make_digits, make_model_version

    device, _ = enrolled_device()
    org = device.organization
    version = make_model_version(org)
    version.task, version.input_size, version.in_channels = "detection", 64, 3
    scenes = Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES,
        task=DatasetTask.DETECTION, num_classes=10, status=ItemStatus.READY,
    )  # fmt: skip
    digits = make_digits(org)
    assert eval_sets.dataset_fit_reason(version, scenes) == ""
    assert "is a detection model but the data set" in eval_sets.dataset_fit_reason(version, digits)
    assert eval_sets.fitting_datasets(version) == [scenes]
    version.task = "classification"
    assert "is a classification model but the data set 'scenes' is a detection" in (
        eval_sets.dataset_fit_reason(version, scenes)
    )


@pytest.mark.slow  # generates the built-in mnist_scenes (1,500 images) through the real loader
def test_the_builtin_scenes_ship_at_the_detectors_input_size_through_the_catalog_loader(
    tmp_path,
):
    from jobs_factories import make_model_version

    from edgeslim_agent.detect_eval import load_detection_eval_set

    org = make_organization()
    version = make_model_version(org)
    version.task, version.input_size, version.in_channels = "detection", 64, 3
    scenes = Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES,
        task=DatasetTask.DETECTION, num_classes=10, status=ItemStatus.READY, split_seed=0,
    )  # fmt: skip
    built = eval_sets.build_eval_set(
        model_version=version, dataset=scenes, out_dir=tmp_path, max_samples=6
    )
    assert built.meta["task"] == "detection" and built.meta["count"] == 6
    assert built.meta["test_size"] == 300 and built.meta["split_seed"] == 0
    data = load_detection_eval_set(built.path)
    # generated at the model's input size, as the jobs runner loads it: no rescaling, no border
    assert data.x.shape == (6, 3, 64, 64)
    assert (data.image_size == 64).all()
    assert np.allclose(data.placement, [[1.0, 1.0, 0.0, 0.0]] * 6)
    assert data.total_boxes == built.meta["boxes"] >= 6  # one to five digits per scene
    assert data.class_names == [str(d) for d in range(10)]
