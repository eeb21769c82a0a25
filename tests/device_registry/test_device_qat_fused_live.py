"""Seed 003's last two steps reach a device: a job's ``qat_int8`` model, fused offline for ONNX
Runtime's CPU provider by ``fuse_operators``, becomes a catalog version, and a real agent
process loads it, benchmarks it and scores it on the shipped test split exactly as onnxruntime
does here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from catalog_versions import deploy_and_measure, host_accuracy
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version

from compression.pipeline import run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model
from device_registry import model_versions
from device_registry.models import DeploymentResult
from webapp.catalog.loaders import dataset_load
from webapp.catalog.services import model_version_create_from_job
from webapp.jobs.models import Job, JobStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RECIPE = {
    "name": "qat then fusion",
    "seed": 0,
    "eval": {"latency_runs": 0},
    "stages": [
        {"method": "finetune", "config": {"epochs": 3, "lr": 0.05}},
        {
            "method": "qat_int8",
            "config": {
                "epochs": 1,
                "bn_update_epochs": 1,
                "observer_update_epochs": 1,
                "calibration_samples": 64,
            },
        },
        {"method": "fuse_operators", "config": {"ort_level": "extended", "latency_runs": 5}},
    ],
}


def test_a_real_agent_runs_a_fused_qat_int8_version_and_scores_it_like_the_host(
    tmp_path, daphne_server, settings
):
    settings.EDGESLIM_EVAL_SET_MAX_SAMPLES = 200
    user = make_user()
    org = make_organization(owner=user)
    parent = make_model_version(org)  # 1 x 32 x 32 inputs, 10 classes
    digits = make_digits(org)
    # A slice of the job's splits keeps training to seconds; the eval set the device gets is the
    # catalog's own (the dataset's whole test split, capped above).
    data = dataset_load(digits, work_dir=tmp_path / "data", size=32, channels=1).subset(
        train=512, val=64, test=64, seed=0
    )

    torch.manual_seed(0)
    model = ModelState(
        input_shape=data.input_shape,
        num_classes=10,
        module=create_model("resnet20", num_classes=10, in_channels=1),
        arch=ArchSpec("resnet20", num_classes=10, in_channels=1),
    )
    report = run_recipe(parse_recipe(RECIPE), model, data, tmp_path / "run", device="cpu")
    final = tmp_path / "run" / str(report.final.onnx_path)
    graph = onnx.load(str(final)).graph
    ops = {n.op_type for n in graph.node}
    # int8 kernels, and ORT's offline fusions saved in the file (its own contrib domain)
    assert ops & {"QLinearConv", "QLinearAdd", "QLinearMatMul", "QGemm"}, ops
    assert any(n.domain == "com.microsoft" for n in graph.node), ops

    job = Job.objects.create(
        organization=org, name="qat+fusion", model_version=parent, dataset=digits,
        recipe=RECIPE, status=JobStatus.SUCCEEDED,
    )  # fmt: skip
    version = model_version_create_from_job(
        organization=org, parent=parent, job_id=job.pk, recipe=RECIPE, file_path=final,
        format="onnx", label="int8 fused", info={"params": 0},
    )  # fmt: skip
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    dep, target, log = deploy_and_measure(org, art, tmp_path, daphne_server.base_url)
    assert target.status == "succeeded", (target.message, log[-3000:])

    latency = DeploymentResult.objects.filter(deployment=dep, kind="latency")
    assert latency.exists() and all(r.payload["p50_ms"] > 0 for r in latency)

    model_file = tmp_path / "host.onnx"
    model_file.write_bytes(version.file.open("rb").read())
    npz = tmp_path / "host.npz"
    npz.write_bytes(art.eval_file.open("rb").read())
    correct, samples = host_accuracy(model_file, npz)
    with np.load(npz, allow_pickle=False) as shipped:
        assert str(shipped["split"]) == "test" and len(shipped["y"]) == samples == 200
    assert correct > 0.3 * samples  # trained: far above the 10 % of chance
    measured = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    assert (measured["correct"], measured["samples"]) == (correct, samples)
