"""A job that wrote ``final.esdc`` (weight_coding) gives its fp32 catalog version the container,
once, however often the registration is retried; a corrupt one is refused, not stored."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version
from jobs_fixtures import _jobs_not_sent_to_a_shared_worker  # noqa: F401

from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import ModelVersion
from webapp.catalog.services import model_version_attach_container
from webapp.jobs.artifacts import JobFiles
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.runner import JobRunner

pytestmark = pytest.mark.django_db


def _job_outputs(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compression.weight_coding import encode_onnx

    w = np.linspace(-1, 1, 4, dtype=np.float32)[np.arange(64 * 10).reshape(64, 10) % 4]
    w[::3] = 0
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = tmp_path / "job"
    out.mkdir()
    onnx.save(model, str(out / "final.onnx"))
    encode_onnx(out / "final.onnx", out / "final.esdc")
    return out


def test_the_fp32_version_gets_the_jobs_container_once(tmp_path: Path) -> None:
    user = make_user()
    org = make_organization(owner=user)
    job = Job.objects.create(
        organization=org, name="deep", model_version=make_model_version(org),
        dataset=make_digits(org), recipe={}, status=JobStatus.RUNNING, created_by=user,
    )  # fmt: skip
    out = _job_outputs(tmp_path)
    runner = JobRunner(job.pk)
    first = runner._register_artifacts(job, out, {})
    assert first == [{"id": first[0]["id"], "label": "fp32", "number": 2, "container": True}]
    version = ModelVersion.objects.get(pk=first[0]["id"])
    blob = (out / "final.esdc").read_bytes()
    assert version.container_size == len(blob) and version.container.read() == blob
    assert version.container_decoded_size and version.container_decoded_size > len(blob)
    name = version.container.name
    again = runner._register_artifacts(job, out, {})  # a retried run
    assert again == first and ModelVersion.objects.get(pk=version.pk).container.name == name

    bad = tmp_path / "bad.esdc"
    shutil.copyfile(out / "final.esdc", bad)
    with bad.open("r+b") as fh:
        fh.seek(-3, 2)
        fh.write(b"\xff\xff\xff")
    with pytest.raises(CatalogInputError, match="checksum"):
        model_version_attach_container(version=version, path=bad)
    assert ModelVersion.objects.get(pk=version.pk).container.name == name


def test_the_jobs_container_is_a_downloadable_artifact(tmp_path: Path) -> None:
    from webapp.jobs import selectors

    org = make_organization()
    job = Job.objects.create(
        organization=org, name="deep", model_version=make_model_version(org),
        dataset=make_digits(org), recipe={}, status=JobStatus.SUCCEEDED,
    )  # fmt: skip
    assert "container" not in {a["key"] for a in selectors.job_artifact_list(job=job)}
    files = JobFiles(job)
    files.scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_job_outputs(tmp_path) / "final.esdc", files.scratch / "final.esdc")
    files.push_final({"artifacts": [{"path": "final.esdc", "kind": "container"}]})
    listed = {a["key"]: a for a in selectors.job_artifact_list(job=job)}
    assert listed["container"]["filename"] == "final.esdc"
    with selectors.job_artifact_open(job=job, key="container") as fh:
        assert fh.read() == (files.scratch / "final.esdc").read_bytes()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_deep_compression_job_gives_its_version_a_container_that_decodes(tmp_path: Path) -> None:
    """prune -> share -> code as a real job: the fp32 version carries final.esdc, and the numpy
    decoder turns it into an ONNX that predicts like the version's own ONNX."""
    import onnxruntime as ort

    from compression.container import decode_container
    from webapp.jobs import services as job_services

    user = make_user()
    org = make_organization(owner=user)
    recipe = {
        "name": "deep-compression-quick",
        "seed": 0,
        "eval": {"latency_runs": 3, "warmup": 1, "threads": 1},
        "stages": [
            {"method": "magnitude_pruning", "config": {"sparsity": 0.9, "steps": 1,
             "epochs_per_step": 0, "finetune_epochs": 0}},
            {"method": "weight_sharing", "config": {"fc_bits": 5, "conv_bits": 8,
             "finetune_epochs": 0, "max_iter": 20}},
            {"method": "weight_coding", "config": {}},
        ],
    }  # fmt: skip
    job = job_services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=recipe, queue="cpu",
    )  # fmt: skip
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "succeeded", job.error
    assert job.report is not None
    [entry] = [v for v in job.report["model_versions"] if v["label"] == "fp32"]
    assert entry.get("container") is True
    version = ModelVersion.objects.get(pk=entry["id"])
    blob = version.container.read()
    assert version.container_size == len(blob) < version.size_bytes / 4
    (tmp_path / "m.esdc").write_bytes(blob)
    decoded = decode_container(tmp_path / "m.esdc", tmp_path / "out")
    source = tmp_path / "version.onnx"
    source.write_bytes(version.file.open("rb").read())
    x = np.random.default_rng(0).random((32, 1, 32, 32), dtype=np.float32)
    outputs = []
    for path in (source, decoded.onnx_path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    assert np.array_equal(outputs[0].argmax(1), outputs[1].argmax(1))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
