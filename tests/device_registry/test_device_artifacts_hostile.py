"""Device artifacts go through the catalog's sniffing and sandboxed inspection, with a size cap,
before anything is stored or signed: through the artifacts page, the way a person uploads one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from device_onnx import write_eval_set, write_linear_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from factories import client_for, make_organization, make_user
from hostile_corpus import onnx_empty_graph, onnx_external_data_in_function

from device_registry.models import DeployableArtifact

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(settings, tmp_path: Path) -> Client:  # type: ignore[no-untyped-def]
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATA_DIR = tmp_path / "data"
    user = make_user()
    make_organization(owner=user)
    return client_for(user)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _post(client: Client, name: str, data: bytes, **extra: object):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("devices:artifacts"), {"file": SimpleUploadedFile(name, data), **extra}
    )


def test_a_good_onnx_and_eval_set_are_stored(client, tmp_path):
    model = write_linear_model(tmp_path / "linear.onnx").read_bytes()
    npz = write_eval_set(tmp_path / "eval.npz").read_bytes()
    response = _post(client, "linear.onnx", model, eval_file=SimpleUploadedFile("eval.npz", npz))
    assert response.status_code == 302
    assert DeployableArtifact.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        (
            "tool.onnx",
            lambda p: _write(p, b"\x7fELF\x02\x01\x01" + b"\0" * 64),
            "'tool.onnx' is a Linux executable, not a model file.",
        ),
        ("noise.onnx", lambda p: _write(p, b"\x13\x37" * 100), "is not an ONNX file"),
        ("empty.onnx", onnx_empty_graph, "is not a usable model: its graph is empty"),
        (
            "leak.onnx",
            onnx_external_data_in_function,
            "tensor 'leak' keeps its data in an external file (absolute path '/etc/passwd')",
        ),
    ],
    ids=["executable", "noise", "empty_graph", "external_data_in_function"],
)
def test_hostile_artifacts_are_refused_with_the_inspectors_sentence(
    client, tmp_path, name, make, reason
):
    data = Path(make(tmp_path / name)).read_bytes()
    response = _post(client, name, data)
    assert response.status_code == 200  # the form again, with the reason
    page = response.content.decode()
    assert reason in page.replace("&#x27;", "'"), page[:3000]
    assert not DeployableArtifact.objects.exists()


def test_an_artifact_over_the_size_cap_is_refused(client, tmp_path, settings):
    settings.EDGESLIM_MAX_ARTIFACT_BYTES = 1000
    model = write_linear_model(tmp_path / "linear.onnx").read_bytes()
    big = model + b"\0" * 2000
    response = _post(client, "big.onnx", big)
    assert "over the artifact limit of 1000 bytes" in response.content.decode()
    assert not DeployableArtifact.objects.exists()


def test_a_pickled_eval_set_is_refused(client, tmp_path):
    model = write_linear_model(tmp_path / "linear.onnx").read_bytes()
    buf = io.BytesIO()
    np.savez(buf, x=np.array([object()], dtype=object), y=np.zeros(1))
    response = _post(
        client, "linear.onnx", model, eval_file=SimpleUploadedFile("eval.npz", buf.getvalue())
    )
    assert "holds Python objects (pickles), which are refused" in response.content.decode()
    assert not DeployableArtifact.objects.exists()
