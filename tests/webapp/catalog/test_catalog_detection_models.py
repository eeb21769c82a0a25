"""Detection in the catalog's loaders and its new-model-from-the-zoo form and API: detection
data sets load as DetectionBundles (the built-in mnist_scenes at the model's size with the row's
split seed, an uploaded YOLO zip through the safe extraction with the reported split), and an
untrained zoo model (a detector included) is made from an architecture, its options and a data
set's classes, stored as a checkpoint that loads back; bad input is refused naming the field."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from django.urls import reverse
from PIL import Image

from compression.datasets import DatasetBundle
from compression.detection_data import DetectionBundle
from compression.errors import DatasetError
from webapp.catalog import loaders, services
from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import Dataset, DatasetKind, DatasetTask, ItemStatus, ModelVersion

pytestmark = pytest.mark.django_db


def _png(shade: int, side: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 90, 40)).save(buf, format="PNG")
    return buf.getvalue()


def yolo_zip(path: Path, *, images: int = 10) -> Path:
    """Two classes, one or two boxes an image, a class-name file: a valid YOLO zip."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("set/classes.txt", "square\nround\n")
        for i in range(images):
            zf.writestr(f"set/images/{i:02d}.png", _png(20 * i))
            lines = ["0 0.5 0.5 0.4 0.4"] + (["1 0.25 0.25 0.2 0.2"] if i % 2 else [])
            zf.writestr(f"set/labels/{i:02d}.txt", "\n".join(lines) + "\n")
    return path


def scenes_row(org, *, split_seed: int = 0) -> Dataset:  # type: ignore[no-untyped-def]
    """A ready mnist_scenes row (its validation is test_catalog_detection's subject)."""
    return Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES,
        task=DatasetTask.DETECTION, num_classes=10, split_seed=split_seed,
        status=ItemStatus.READY, report={"task": "detection", "classes": list("0123456789")},
    )  # fmt: skip


def digits_row(org) -> Dataset:  # type: ignore[no-untyped-def]
    return Dataset.objects.create(
        organization=org, name="digits", kind=DatasetKind.DIGITS, num_classes=10,
        status=ItemStatus.READY, report={"input_shape": [1, 32, 32]},
    )  # fmt: skip


def tiny_yolo(org, user, dataset, **kw) -> ModelVersion:  # type: ignore[no-untyped-def]
    return services.zoo_model_create(
        organization=org, user=user, arch="yolov3_tiny", dataset=dataset,
        options={"width": 0.25, "input_size": 64}, **kw,
    )  # fmt: skip


def test_mnist_scenes_loads_as_a_detection_bundle_at_the_models_size_with_its_split_seed(
    org_a, user_a, tmp_path
):
    scenes = scenes_row(org_a, split_seed=3)
    version = tiny_yolo(org_a, user_a, scenes)
    data = loaders.bundle_for_model_version(
        scenes, version, work_dir=tmp_path, allow_detection=True
    )
    assert isinstance(data, DetectionBundle)
    assert (len(data.train), len(data.val), len(data.test)) == (1050, 150, 300)
    assert data.train[0].image.shape == (64, 64, 3)  # generated at the model's input size
    assert data.split_seed == 3 and data.name == "scenes" and data.num_classes == 10
    # A caller that reads image tensors only gets a refusal naming the task, not a bundle.
    with pytest.raises(DatasetError, match="object-detection data set"):
        loaders.bundle_for_model_version(scenes, version, work_dir=tmp_path)


def test_an_uploaded_yolo_zip_loads_as_a_detection_bundle_with_the_reported_split(
    org_a, user_a, tmp_path
):
    dataset = services.dataset_upload_create(
        organization=org_a, user=user_a, path=yolo_zip(tmp_path / "set.zip"), split_seed=5
    )
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.READY, dataset.error
    assert dataset.task == DatasetTask.DETECTION and dataset.num_classes == 2
    data = loaders.dataset_load(dataset, work_dir=tmp_path / "w", allow_detection=True)
    assert isinstance(data, DetectionBundle)
    assert data.classes == ["square", "round"] and data.split_seed == 5
    totals = dataset.report["totals"]
    assert {s: len(data.split(s)) for s in ("train", "val", "test")} == totals
    counts = loaders.detection_box_counts(data)
    assert counts["boxes"] == 15 and counts["train"] + counts["val"] + counts["test"] == 10
    # the extracted files are gone: the images are held in memory
    assert not [p for p in (tmp_path / "w").rglob("*.png")]
    # a classification data set still loads as before
    assert isinstance(
        loaders.dataset_load(digits_row(org_a), work_dir=tmp_path, allow_detection=True),
        DatasetBundle,
    )


def test_a_zoo_detector_is_made_from_a_data_sets_classes_and_loads_back(org_a, user_a, tmp_path):
    scenes = scenes_row(org_a)
    version = tiny_yolo(org_a, user_a, scenes, name="tiny")
    assert version.status == ItemStatus.READY and version.task == "detection"
    assert (version.arch, version.num_classes, version.in_channels, version.input_size) == (
        "yolov3_tiny", 10, 3, 64,
    )  # fmt: skip
    assert version.info["zoo"]["untrained"] is True
    assert version.info["zoo"]["options"] == {"width": 0.25, "input_size": 64}
    assert version.info["macs"] > 0 and version.info["params"] > 0
    assert version.info["checkpoint"]["sha256"] == version.sha256
    with version.file.open("rb") as fh:  # safetensors, never a pickle
        head = fh.read(8)
    assert int.from_bytes(head, "little") < 10_000_000
    state = loaders.model_version_load(version, work_dir=tmp_path)
    assert state.task == "detection" and state.input_shape == (3, 64, 64)
    assert state.arch is not None and dict(state.arch.options)["width"] == 0.25
    assert state.module is not None
    with torch.no_grad():
        out = state.module(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 45, 2, 2), (1, 45, 4, 4)]  # 3 x (5 + 10)


def test_a_tampered_checkpoint_is_refused_on_load(org_a, user_a, tmp_path):
    from compression.errors import InvalidModelError

    version = tiny_yolo(org_a, user_a, scenes_row(org_a))
    version.info["checkpoint"]["sha256"] = "0" * 64
    version.save(update_fields=["info"])
    with pytest.raises(InvalidModelError, match="sha256"):
        loaders.model_version_load(version, work_dir=tmp_path)


@pytest.mark.parametrize(
    ("kw", "field", "words"),
    [
        ({"arch": "yolov9"}, "arch", "Unknown architecture 'yolov9'"),
        ({"options": {"depth": 3}}, "depth", "not an option of 'yolov3_tiny'"),
        ({"options": {"width": 9}}, "width", "between"),
        ({"options": {"input_size": 70}}, "input_size", "multiple of 32"),
        ({"options": {"width": "wide"}}, "width", "must be a number"),
        ({"dataset": "digits"}, "dataset", "is a detection model but 'digits' is a classification"),
        ({"dataset": None, "num_classes": 0}, "num_classes", "between 1 and"),
        ({"dataset": None}, "dataset", "give num_classes"),
        ({"num_classes": 3}, "num_classes", "does not match the 10 classes"),
        ({"in_channels": 1}, "in_channels", "3-channel"),
    ],
)
def test_bad_zoo_input_is_refused_naming_the_field(org_a, user_a, kw, field, words):
    datasets = {"scenes": scenes_row(org_a), "digits": digits_row(org_a), None: None}
    args = {"arch": "yolov3_tiny", "options": {"width": 0.25, "input_size": 64}, **kw}
    args["dataset"] = datasets[kw.get("dataset", "scenes")]
    with pytest.raises(CatalogInputError) as caught:
        services.zoo_model_create(organization=org_a, user=user_a, **args)
    assert caught.value.field == field and words in caught.value.message, caught.value.message
    assert not ModelVersion.objects.filter(organization=org_a).exists()


def test_a_zoo_classifier_takes_one_channel_for_the_builtin_digits(org_a, user_a):
    version = services.zoo_model_create(
        organization=org_a, user=user_a, arch="lenet5", dataset=digits_row(org_a)
    )
    assert (version.task, version.in_channels, version.input_size) == ("classification", 1, 32)
    with pytest.raises(CatalogInputError, match="is a classification model but 'scenes'"):
        services.zoo_model_create(
            organization=org_a, user=user_a, arch="lenet5", dataset=scenes_row(org_a)
        )


def test_the_page_and_the_api_make_a_zoo_detector(org_a, client_a, org_b):
    scenes = scenes_row(org_a)
    page = client_a.get(reverse("catalog:model_zoo_create")).content.decode()
    assert "yolov3_tiny" in page and "scenes (object detection, 10 classes)" in page
    assert "New model from the zoo" in client_a.get("/models/").content.decode()
    r = client_a.post(
        reverse("catalog:model_zoo_create"),
        {"arch": "yolov3_tiny", "dataset": scenes.pk, "width": "0.25", "input_size": "64"},
    )
    assert r.status_code == 302, r.content.decode()[-2000:]
    made = ModelVersion.objects.get(organization=org_a, arch="yolov3_tiny")
    assert made.asset.name == "yolov3_tiny (untrained)" and made.input_size == 64
    detail = client_a.get(f"/models/{made.pk}/").content.decode()
    assert "New from the zoo: yolov3_tiny (width 0.25, input_size 64), untrained" in detail
    assert "<dd>detection</dd>" in detail
    r = client_a.post(reverse("catalog:model_zoo_create"), {"arch": "lenet5", "dataset": scenes.pk})
    assert r.status_code == 400 and "is a detection data set" in r.content.decode()

    listing = client_a.get("/api/v1/zoo/?task=detection").json()
    assert {a["arch"] for a in listing} >= {"yolov3_tiny", "yolov3", "ssdlite_mobilenetv2"}
    assert all(a["task"] == "detection" for a in listing)
    body = {"arch": "yolov3_tiny", "dataset": scenes.pk, "name": "api-tiny",
            "options": {"width": 0.25, "input_size": 64}}  # fmt: skip
    r = client_a.post("/api/v1/models/from-zoo/", json.dumps(body), content_type="application/json")
    assert r.status_code == 201, r.content
    assert r.json()["task"] == "detection" and r.json()["status"] == "ready"
    bad = {**body, "options": {"width": 0.25, "input_size": 65}}
    r = client_a.post("/api/v1/models/from-zoo/", json.dumps(bad), content_type="application/json")
    assert r.status_code == 400 and r.json()["field"] == "input_size"
    # another organisation's data set is not found
    other = scenes_row(org_b)
    r = client_a.post(
        "/api/v1/models/from-zoo/",
        json.dumps({**body, "dataset": other.pk}),
        content_type="application/json",
    )
    assert r.status_code == 404
