"""Hostile files through the catalog's real entry points: uploaded with the API, then inspected
by the worker's service in the sandboxed inspection child (``webapp.catalog.inspect_child``).

Every refusal must read as a sentence a person can act on, never an exception's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from hostile_corpus import (
    MALFORMED_SAFETENSORS_HEADERS,
    onnx_empty_graph,
    onnx_external_data_in_function,
    onnx_external_data_in_subgraph,
    safetensors_with_header,
    zip_many_small_bombs,
)

from webapp.catalog import services
from webapp.catalog.models import Dataset, ItemStatus, ModelVersion

EXCEPTION_NAMES = re.compile(
    r"\b(KeyError|TypeError|IndexError|ValueError|AttributeError|ValidationError|Fail|"
    r"InvalidGraph|InvalidArgument|RuntimeException|SafetensorError|Traceback)\b"
)

pytestmark = pytest.mark.django_db


def _upload_dataset(client: Client, path: Path) -> Dataset:
    with path.open("rb") as fh:
        response = client.post(reverse("api:catalog-dataset-list"), {"file": fh, "name": path.stem})
    assert response.status_code == 201, response.content
    return Dataset.objects.get(pk=response.json()["id"])


def test_a_zip_of_a_thousand_small_bombs_is_refused_as_a_whole(client_a, tmp_path):
    bomb = zip_many_small_bombs(tmp_path / "thousand.zip")  # 1,000 x 1 MiB of zeros
    assert bomb.stat().st_size < 2 * 1024**2
    dataset = _upload_dataset(client_a, bomb)

    services.dataset_validate(dataset=dataset)

    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.INVALID
    assert "expand to 1048576000 bytes" in dataset.error
    assert "more than 100 times its size (zip bomb?)" in dataset.error
    assert not dataset.file  # the refused archive is deleted


def _upload_and_inspect(client: Client, path: Path, **fields: str) -> ModelVersion:
    with path.open("rb") as fh:
        response = client.post(
            reverse("api:catalog-model-list"), {"file": fh, "name": path.stem, **fields}
        )
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(pk=response.json()["id"])
    services.model_version_inspect(version=version)  # the worker's task: the inspection child
    version.refresh_from_db()
    return version


@pytest.mark.parametrize("case", sorted(MALFORMED_SAFETENSORS_HEADERS))
def test_malformed_safetensors_headers_read_as_sentences(client_a, tmp_path, case):
    path = safetensors_with_header(
        tmp_path / f"{case}.safetensors", MALFORMED_SAFETENSORS_HEADERS[case], data=b"\0" * 8
    )
    version = _upload_and_inspect(client_a, path, arch="lenet5")
    assert version.status == ItemStatus.INVALID
    assert version.error.startswith(f"{case}.safetensors is not a valid safetensors file: ")
    assert "in its header, tensor 'w' " in version.error
    assert not EXCEPTION_NAMES.search(version.error), version.error


def test_an_empty_onnx_graph_is_not_called_out_of_memory(client_a, tmp_path):
    version = _upload_and_inspect(client_a, onnx_empty_graph(tmp_path / "empty.onnx"))
    assert version.status == ItemStatus.INVALID
    assert (
        version.error
        == "empty.onnx is not a usable model: its graph is empty (it holds no operators)"
    )


@pytest.mark.parametrize(
    ("make", "tensor", "where"),
    [
        (onnx_external_data_in_function, "leak", "absolute path '/etc/passwd'"),
        (onnx_external_data_in_subgraph, "hidden_values", "points outside the model's folder"),
    ],
    ids=["function", "if_branch_sparse"],
)
def test_external_data_in_functions_and_subgraphs_is_refused_by_edgeslim(
    client_a, tmp_path, make, tensor, where
):
    version = _upload_and_inspect(client_a, make(tmp_path / "hidden.onnx"))
    assert version.status == ItemStatus.INVALID
    # EdgeSlim's own refusal (not the ONNX checker happening to refuse it later).
    assert version.error.startswith(
        f"hidden.onnx: tensor '{tensor}' keeps its data in an external file"
    )
    assert where in version.error
