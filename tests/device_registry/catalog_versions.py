"""Catalog rows for the eval-set tests: the digits data set, a job on it, and the ONNX version
that job produced (a nearest-centroid classifier fitted on the train split, 8x8 inputs)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from jobs_factories import make_digits, make_model_version

from webapp.accounts.models import Organization
from webapp.catalog.models import Dataset, ModelVersion
from webapp.catalog.services import model_version_create_from_job
from webapp.jobs.models import Job, JobStatus

SIZE = 8  # the digits' own resolution: a tiny eval set (about 360 test images)


def centroid_onnx(path: Path, *, dataset: Dataset, size: int = SIZE) -> Path:
    """Logits ``x . mu_c - |mu_c|^2 / 2`` from the train split's class means (normalised x)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from webapp.catalog.loaders import dataset_load

    with tempfile.TemporaryDirectory() as tmp:
        bundle = dataset_load(dataset, work_dir=Path(tmp), size=size, channels=1)
    x, y = bundle.train.__getitems__(list(range(len(bundle.train))))
    flat = x.numpy().reshape(len(x), -1)
    labels = y.numpy()
    means = np.stack([flat[labels == c].mean(axis=0) for c in range(bundle.num_classes)])
    w = means.T.astype(np.float32)  # (features, classes)
    b = (-0.5 * (means**2).sum(axis=1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
        ],
        "centroids",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", bundle.num_classes])],
        initializer=[numpy_helper.from_array(w, name="w"), numpy_helper.from_array(b, name="b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def job_onnx_version(org: Organization, tmp_path: Path) -> tuple[ModelVersion, Job]:
    """An ONNX version a (finished) job on the digits produced, 1x8x8 inputs, 10 classes."""
    parent = make_model_version(org)
    parent.input_size = SIZE
    parent.save(update_fields=["input_size"])
    digits = make_digits(org)
    job = Job.objects.create(
        organization=org,
        name="centroids",
        model_version=parent,
        dataset=digits,
        recipe={},
        status=JobStatus.SUCCEEDED,
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = centroid_onnx(tmp_path / "centroids.onnx", dataset=digits)
    version = model_version_create_from_job(
        organization=org,
        parent=parent,
        job_id=job.pk,
        recipe={},
        file_path=path,
        format="onnx",
        label="fp32",
        info={"params": 650},
    )
    return version, job


def host_accuracy(model: Path, npz: Path) -> tuple[int, int]:
    """(correct, samples) of onnxruntime on this machine, on the whole ``.npz`` at once."""
    import onnxruntime as ort

    with np.load(npz, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return int((logits.argmax(axis=1) == y).sum()), len(y)


def deploy_and_measure(org: Organization, art: object, tmp_path: Path, server: str) -> tuple:
    """Register and enroll a device, deploy ``art`` to it with accuracy on, run a real agent
    until the target ends; returns ``(deployment, target, agent log)``."""
    from agent_process import AgentProcess, enroll, wait_for

    from device_registry import services
    from device_registry.models import DeploymentTarget
    from edgeslim_agent.protocol import BenchSettings

    device, code = services.device_register(organization=org, name="pi")
    done = enroll(tmp_path / "pi", server, code)
    assert done.returncode == 0, done.stderr
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5, accuracy=True),
    )  # fmt: skip
    agent = AgentProcess(tmp_path / "pi", tmp_path / "pi.log").start()
    try:
        target = wait_for(
            lambda: DeploymentTarget.objects.filter(
                deployment=dep, status__in=("succeeded", "failed")
            ).first(),
            timeout=120, what="the deployment to finish", log=agent.output,
        )  # fmt: skip
    finally:
        agent.stop()
    return dep, target, agent.output()
