"""Issue 15's 'Done when' through the REST API alone, on the built-in ``mnist_scenes``: the
organisation's built-in detection set is listed by the API and checked as the catalog worker
checks it, a YOLOv3-tiny is made from the zoo by ``POST /api/v1/models/from-zoo/``, a job
train -> channel_pruning -> ptq_int8 is created by ``POST /api/v1/jobs/`` and run by the real
runner, and the report's mAP@0.5 (test and val, per class) and the detections grid are read
back through ``/api/v1/jobs/<id>/report/`` and ``/artifacts/``; then the int8 version is
deployed by ``POST /api/v1/deployments/`` to a device registered by ``POST /api/v1/devices/``
and enrolled with a real agent process, and its FPS (network alone and end to end) and the
on-device mAP@0.5 on the shipped test split are read from ``/api/v1/deployments/<id>/``.

The job generates the built-in scenes at the model's 64 px with the row's split seed, as always,
but fewer of them (16 train, 4 val, 8 test) so the whole chain stays near half a minute.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from compression.detection_data import SceneConfig, load_mnist_scenes
from webapp.catalog import loaders
from webapp.catalog.models import Dataset, ItemStatus
from webapp.catalog.services import builtin_samples, dataset_validate
from webapp.catalog.services.common import DATASET_VALIDATE_TASK

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "device_registry"))
from agent_process import AgentProcess, enroll

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RECIPE = {
    "name": "api yolo",
    "seed": 0,
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1, "rounds": 1},
    "targets": {"reference": "stage:0", "max_accuracy_drop": 100},
    "stages": [
        {"method": "finetune", "config": {"epochs": 1, "batch_size": 8, "optimizer": "adam",
                                          "lr": 0.001}},
        {"method": "channel_pruning", "config": {"importance": "l2", "ratio": 0.25,
                                                 "sparsity_epochs": 0, "finetune_epochs": 0}},
        {"method": "ptq_int8", "config": {"calibration_samples": 8}},
    ],
}  # fmt: skip


def test_a_zoo_yolo_is_trained_pruned_quantized_and_deployed_on_the_builtin_scenes_by_api(
    org_a: Any, token_for: Any, monkeypatch: pytest.MonkeyPatch, daphne_server: Any, tmp_path: Path
) -> None:
    from webapp.jobs.runner import JobRunner

    _, user = org_a
    api = Client(**token_for(user))

    def post(url: str, body: dict[str, Any]) -> Any:
        return api.post(url, json.dumps(body), content_type="application/json")

    # The API lists the organisation's built-ins; the catalog worker's check is run here.
    queued: list[tuple[str, int]] = []
    monkeypatch.setattr(builtin_samples, "_enqueue", lambda task, pk: queued.append((task, pk)))
    listed = api.get("/api/v1/datasets/").json()
    [scenes] = [d for d in listed if d["name"] == "MNIST scenes, detection (built-in)"]
    assert scenes["status"] == "pending"
    assert (DATASET_VALIDATE_TASK, scenes["id"]) in queued
    dataset_validate(dataset=Dataset.objects.get(pk=scenes["id"]))
    scenes = api.get(f"/api/v1/datasets/{scenes['id']}/").json()
    assert scenes["status"] == ItemStatus.READY and scenes["task"] == "detection", scenes

    asked: list[tuple[str, int, int | None]] = []

    def few_scenes(name: str, *, seed: int = 0, size: int | None = None) -> Any:
        asked.append((name, seed, size))
        return load_mnist_scenes(SceneConfig(seed=seed, size=size or 64, n_train=16, n_val=4,
                                             n_test=8))  # fmt: skip

    monkeypatch.setattr(loaders, "load_builtin_detection", few_scenes)

    made = post("/api/v1/models/from-zoo/", {
        "arch": "yolov3_tiny", "dataset": scenes["id"], "name": "api yolo",
        "options": {"width": 0.25, "input_size": 64},
    })  # fmt: skip
    assert made.status_code == 201, made.content
    model = made.json()
    assert model["task"] == "detection" and model["status"] == "ready"

    created = post(
        "/api/v1/jobs/", {"model_version": model["id"], "dataset": scenes["id"], "recipe": RECIPE}
    )
    assert created.status_code == 201, created.content
    job_id = created.json()["id"]
    outcome = JobRunner(job_id).run()
    job = api.get(f"/api/v1/jobs/{job_id}/").json()
    assert outcome.outcome == "succeeded" and job["status"] == "SUCCEEDED", job
    assert asked and {(name, size) for name, _, size in asked} == {("mnist_scenes", 64)}

    report = api.get(f"/api/v1/jobs/{job_id}/report/").json()
    assert report["task"] == "detection"
    assert report["dataset"]["totals"] == {"train": 16, "val": 4, "test": 8}
    assert [s["method"] for s in report["stages"]] == ["finetune", "channel_pruning", "ptq_int8"]
    states = [report["baseline"], *(s["metrics"] for s in report["stages"]), report["final"]]
    for m in states:
        assert m["task"] == "detection" and m["metric"] == "mAP@0.5"
        det = m["detection"]
        assert 0 <= det["map50"] <= 1 and 0 <= det["map50_95"] <= 1
        assert m["accuracy"] == pytest.approx(100 * det["map50"], abs=1e-6)
        assert m["val_accuracy"] == pytest.approx(100 * det["val_map50"], abs=1e-6)
        assert det["images"] == 8 and det["boxes"] > 0
        assert m["latency_e2e"]["p50_ms"] > 0
    final = report["final"]["detection"]
    assert {c["class"] for c in final["per_class"]} <= {str(d) for d in range(10)}
    assert final["per_class"]
    assert {"onnx_int8", "onnx_e2e", "detections_grid"} <= {a["kind"] for a in report["artifacts"]}
    assert report["stages"][1]["metrics"]["macs"] < report["stages"][0]["metrics"]["macs"]
    # The runner's log states the split and its boxes; the versions it made are detectors, and
    # the job page labels the score mAP@0.5 (its training chart too).
    from django.urls import reverse
    from factories import client_for

    from webapp.catalog.models import ModelVersion
    from webapp.jobs.models import Job

    boxes = sum(report["dataset"]["boxes"].values())
    lines = list(Job.objects.get(pk=job_id).events.filter(kind="log").values_list(
        "payload__line", flat=True))  # fmt: skip
    expected = f"16 train / 4 val / 8 test images, {boxes} boxes"
    assert any(expected in line and "detection" in line for line in lines), lines[:5]
    assert {v.task for v in ModelVersion.objects.filter(produced_by_job_id=job_id)} == {"detection"}
    page = client_for(user).get(reverse("jobs:detail", args=[job_id])).content.decode()
    assert "Test mAP@0.5" in page and "Test accuracy" not in page
    assert '"metric": "mAP@0.5"' in page  # the training chart labels its score axis with it

    artifacts = {a["key"]: a for a in api.get(f"/api/v1/jobs/{job_id}/artifacts/").json()}
    grid = next(a for a in artifacts.values() if a["key"].startswith("detections_grid"))
    png = api.get(grid["url"])
    body = b"".join(png.streaming_content)  # type: ignore[attr-defined]
    assert png.status_code == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"

    # Deploy the int8 version to a real agent, all through the API.
    [int8] = [v for v in report["model_versions"] if v["label"] == "int8"]
    registered = post("/api/v1/devices/", {"name": "edge-box"})
    assert registered.status_code == 201, registered.content
    device_id = registered.json()["device"]["id"]
    code = registered.json()["enrollment_code"]
    done = enroll(tmp_path / "agent", daphne_server.base_url, code)
    assert done.returncode == 0, done.stderr
    agent = AgentProcess(tmp_path / "agent", tmp_path / "agent.log").start()
    try:
        made = post("/api/v1/deployments/", {
            "model_version": int8["id"], "target_kind": "device", "target_value": str(device_id),
            "settings": {"warmup": 1, "runs": 5, "batch_sizes": [1]},
        })  # fmt: skip
        assert made.status_code == 201, made.content
        assert made.json()["artifact_task"] == "detection"
        assert made.json()["eval_set"]["count"] == 8
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            dep = api.get(f"/api/v1/deployments/{made.json()['id']}/").json()
            if dep["targets"][0]["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.5)
    finally:
        agent.stop()
    assert dep["targets"][0]["status"] == "succeeded", (dep["targets"], agent.output()[-3000:])
    by_kind = {r["kind"]: r["payload"] for r in dep["results"]}
    latency, accuracy = by_kind["latency"], by_kind["accuracy"]
    assert latency["fps"] > 0 and 0 < latency["fps_e2e"] <= latency["fps"] * 1.05
    assert latency["e2e_p50_ms"] > 0
    assert accuracy["metric"] == "mAP@0.5" and accuracy["samples"] == 8
    assert 0 <= accuracy["map50"] <= 1 and 0 <= accuracy["map50_95"] <= 1
    assert "top1_pct" not in accuracy
