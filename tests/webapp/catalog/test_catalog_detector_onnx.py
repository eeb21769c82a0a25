"""An uploaded ONNX detector through the catalog's real entry points: the API, then the worker's
inspection in the sandboxed child. One whose outputs the post-processing does not recognise is
refused at inspection with a sentence naming the expected and found shapes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from django.test import Client
from django.urls import reverse

from compression import detection_export as de
from compression.zoo import create_model
from webapp.catalog import services
from webapp.catalog.models import ItemStatus, ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = create_model("yolov3_tiny", num_classes=4, width=0.125, input_size=64)
    folder = tmp_path_factory.mktemp("detector")
    good = de.export_detector(model, folder / "tiny_yolo.onnx")
    # the same graph, its metadata claiming six classes: 33 channels a level expected, 27 found
    lying = folder / "lying_yolo.onnx"
    lying.write_bytes(good.read_bytes())
    meta = dataclasses.replace(de.meta_from_model(model), num_classes=6)
    de.write_detector_meta(lying, meta)
    return good, lying


def _upload_and_inspect(client: Client, path: Path) -> ModelVersion:
    with path.open("rb") as fh:
        response = client.post(reverse("api:catalog-model-list"), {"file": fh, "name": path.stem})
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(pk=response.json()["id"])
    services.model_version_inspect(version=version)  # the worker's task: the inspection child
    version.refresh_from_db()
    return version


def test_an_onnx_detector_with_its_metadata_is_accepted(client_a, detector):
    version = _upload_and_inspect(client_a, detector[0])
    assert version.status == ItemStatus.READY, version.error
    assert (version.num_classes, version.in_channels, version.input_size) == (4, 3, 64)
    assert version.task == "detection"
    assert version.info["extra"]["detection"]["family"] == "yolo"


def test_an_onnx_detector_whose_outputs_do_not_fit_is_refused_at_inspection(client_a, detector):
    version = _upload_and_inspect(client_a, detector[1])
    assert version.status == ItemStatus.INVALID
    assert version.error.startswith(
        "lying_yolo.onnx is refused: its outputs are not what the detector's post-processing "
        "recognises: output 0 has shape (1, 27, 2, 2) where the post-processing for a YOLO "
        "detector with 6 classes at 64 px expects (N, 33, 2, 2)"
    ), version.error
