"""A small lineage with rich on-device results, made directly (no files, no agents): an upload,
a job that made fp32 and int8 from it, a second job that pruned the fp32 version again, and two
devices whose latency results carry what real agents report (facts, spread, profile)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from compare_factories import dataset, job, metrics, version
from django.utils import timezone
from factories import make_organization, make_user

from device_registry.models import DeployableArtifact, Deployment, DeploymentResult, Device
from webapp.accounts.models import Organization
from webapp.catalog.models import ModelVersion


def latency_payload(p50: float, *, batch: int = 1, profile: dict[str, float] | None = None,
                    cpu: str = "Cortex-A72", cores: int = 4,
                    isa: str = "asimd") -> dict[str, Any]:  # fmt: skip
    return {
        "batch_size": batch, "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5,
        "mean_ms": p50 * 1.05, "std_ms": p50 / 10, "runs": 200, "threads": 2,
        "throughput": 1000.0 * batch / p50, "load_time_ms": 12.5, "peak_rss_mb": 48.0,
        "provider": "CPUExecutionProvider", "ort_version": "1.20.1",
        "hardware": {"cpu_model": cpu, "cores": cores, "arch": "aarch64", "os": "Linux-6.6",
                     "python": "3.11", "isa": isa},
        "op_profile_ms": profile or {},
    }  # fmt: skip


def deploy(
    org: Organization,
    v: ModelVersion,
    dev: Device,
    *,
    latencies: list[dict[str, Any]],
    top1: float | None = None,
    samples: int = 100,
    eval_meta: dict[str, Any] | None = None,
) -> Deployment:
    """One deployment of ``v`` to ``dev`` with a latency result per payload (seq 1..n) and an
    accuracy result after them."""
    artifact = DeployableArtifact.objects.create(
        organization=org, name=f"{v.pk}.onnx", file=f"device_artifacts/{v.pk}.onnx",
        sha256="0" * 64, size=v.size_bytes or 1, source=f"model_version:{v.pk}",
        eval_meta=eval_meta or {},
    )  # fmt: skip
    dep = Deployment.objects.create(
        organization=org, artifact=artifact, target_kind="device", target_value=str(dev.pk),
        issued_at=0, signature="test", expires_at=timezone.now() + timedelta(days=1),
    )  # fmt: skip
    for seq, payload in enumerate(latencies, start=1):
        DeploymentResult.objects.create(
            deployment=dep, device=dev, seq=seq, kind="latency", payload=payload
        )
    if top1 is not None:
        DeploymentResult.objects.create(
            deployment=dep, device=dev, seq=len(latencies) + 1, kind="accuracy",
            payload={"top1_pct": top1, "samples": samples, "correct": int(top1 * samples / 100)},
        )  # fmt: skip
    return dep


PROFILE_PI = {"Conv": 2.5, "Gemm": 0.75, "Relu": 0.25}
PROFILE_JETSON = {"Conv": 0.5, "Gemm": 0.25, "MaxPool": 0.125}


def family(owner=None) -> dict[str, Any]:
    """base (upload) -> job1 -> fp32, int8; fp32 -> job2 -> pruned. pi ran int8 twice (the
    newer deployment at batch 1 and 8) and fp32; jetson ran int8 with a profile."""
    owner = owner or make_user()
    org = make_organization(owner=owner)
    data = dataset(org, name="digits-family")
    base = version(org, fmt="torch", size=8000)
    j1 = job(org, base, data, baseline=metrics(98.0, 2.0, fmt="torch"),
             stages=[metrics(97.5, 1.0, fmt="torch"), metrics(97.0, 0.5)],
             final=metrics(97.0, 0.5))  # fmt: skip
    fp32 = version(org, parent=base, job=j1, label="fp32", size=4000)
    int8 = version(org, parent=base, job=j1, label="int8", size=1000)
    j2 = job(org, fp32, data, baseline=metrics(97.5, 1.0), final=metrics(97.1, 0.4),
             method="structured_pruning")  # fmt: skip
    pruned = version(org, parent=fp32, job=j2, label="fp32", size=2000)
    pi = Device.objects.create(
        organization=org, name="pi", hardware="Raspberry Pi 4",
        facts={"cpu": "BCM2711", "cores": 4, "os": "Debian 12", "arch": "aarch64",
               "ort_version": "1.19.0"},
    )  # fmt: skip
    jetson = Device.objects.create(organization=org, name="jetson", facts={})
    meta = {"dataset_id": data.pk, "dataset": data.name, "split": "test", "split_seed": 0,
            "count": 100, "test_size": 100}  # fmt: skip
    deploy(org, int8, pi, latencies=[latency_payload(9.0)], top1=94.0, eval_meta=meta)
    deploy(org, int8, pi, latencies=[latency_payload(4.0, profile=PROFILE_PI),
                                     latency_payload(20.0, batch=8)],
           top1=95.0, eval_meta=meta)  # fmt: skip
    deploy(org, int8, jetson, latencies=[latency_payload(1.0, profile=PROFILE_JETSON,
                                                         cpu="Carmel", cores=6)])  # fmt: skip
    deploy(org, fp32, pi, latencies=[latency_payload(10.0)], top1=96.0, eval_meta=meta)
    return {"org": org, "owner": owner, "data": data, "base": base, "job1": j1, "job2": j2,
            "fp32": fp32, "int8": int8, "pruned": pruned, "pi": pi, "jetson": jetson}  # fmt: skip
