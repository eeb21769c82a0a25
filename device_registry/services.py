"""Writes of the device registry: registration, enrollment, revocation, deployments, results."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import connection, transaction
from django.db.models import CharField, F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from compression.container import HEADER as CONTAINER_HEADER
from compression.container import HEADER_SIZE as CONTAINER_HEADER_SIZE
from compression.container import MAGIC as CONTAINER_MAGIC
from compression.container import ContainerError, decode_container
from device_registry import bus, conf
from device_registry.models import (
    FINISHED_STATUSES,
    DeployableArtifact,
    Deployment,
    DeploymentResult,
    DeploymentTarget,
    Device,
    EnrollmentCode,
    TargetKind,
    TargetStatus,
    secret_hash,
)
from device_registry.signing import manifest_sign, stored_key_id, stored_signature
from edgeslim_agent.protocol import (
    DECODE_KEYS,
    DETECTION_AGENT,
    DETECTION_LATENCY_KEYS,
    DETECTION_LATENCY_OPTIONAL,
    FORMAT_CONTAINER,
    FORMAT_ONNX,
    RESULT_ACCURACY,
    RESULT_COMPLETE,
    RESULT_FAILED,
    RESULT_LATENCY,
    TASK_DETECTION,
    BenchSettings,
    Deploy,
    DeviceFacts,
    Manifest,
    Progress,
    ProtocolError,
    Result,
    accuracy_percent,
    decode_figures,
    detection_accuracy_figures,
    detection_latency_figures,
    encode,
)
from webapp.accounts.models import Organization, User
from webapp.live.services import org_event_send
from webapp.names import name_problem

log = logging.getLogger("edgeslim.devices")

CREDENTIAL_PREFIX = "esd_"
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
MAX_TAGS = 20


class EnrollmentError(Exception):
    """The enrollment code is unknown, used, expired, or its device revoked."""


def normalize_tags(tags: Any) -> list[str]:
    if isinstance(tags, str):
        tags = tags.replace(",", " ").split()
    out: list[str] = []
    for tag in tags or []:
        t = str(tag).strip().lower()[:40]
        if t and t not in out:
            out.append(t)
    return out[:MAX_TAGS]


def _org_event(organization_id: int, kind: str, payload: dict[str, Any]) -> None:
    try:
        org_event_send(organization_id=organization_id, kind=kind, payload=payload)
    except Exception:  # a live-view hiccup must never fail a write
        log.warning("could not broadcast %s to org %s", kind, organization_id, exc_info=True)


# --- registration and enrollment ---------------------------------------------------------------


def _new_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def _normalize_code(code: str) -> str:
    raw = "".join(c for c in code.upper() if c.isalnum())
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def device_register(
    *,
    organization: Organization,
    name: str,
    hardware: str = "",
    tags: Any = (),
    created_by: User | None = None,
) -> tuple[Device, str]:
    """Create a device and its first enrollment code; the code is returned once, never stored.

    Raises:
        ValidationError: a name with an invisible control or format character (the form and
            the serializer refuse it first, beside the field).
    """
    if (problem := name_problem(name)) is not None:
        raise ValidationError({"name": problem})
    with transaction.atomic():
        device = Device.objects.create(
            organization=organization,
            name=name.strip()[:100],
            hardware=hardware.strip()[:200],
            tags=normalize_tags(tags),
            created_by=created_by,
        )
        code = enrollment_code_issue(device=device)
    return device, code


def enrollment_code_issue(*, device: Device) -> str:
    """A fresh one-time code for ``device`` (older unused codes stop working)."""
    now = timezone.now()
    EnrollmentCode.objects.filter(device=device, used_at__isnull=True).update(used_at=now)
    code = _new_code()
    EnrollmentCode.objects.create(
        device=device,
        code_hash=secret_hash(code),
        expires_at=now + timedelta(seconds=conf.enrollment_ttl_s()),
    )
    return code


def enrollment_code_redeem(
    *, code: str, agent_version: str = "", facts: dict[str, Any] | None = None
) -> tuple[Device, str]:
    """Trade a one-time code for the device's credential (returned once; its hash is stored).

    Raises:
        EnrollmentError: the code is unknown, already used, expired, or its device revoked.
    """
    now = timezone.now()
    with transaction.atomic():
        row = (
            EnrollmentCode.objects.select_for_update()
            .select_related("device")
            .filter(code_hash=secret_hash(_normalize_code(code)))
            .first()
        )
        if row is None or row.used_at is not None:
            raise EnrollmentError("This enrollment code is unknown or was already used.")
        if row.expires_at < now:
            raise EnrollmentError("This enrollment code has expired; issue a new one.")
        device = row.device
        if device.revoked_at is not None:
            raise EnrollmentError("This device was revoked.")
        row.used_at = now
        row.save(update_fields=["used_at"])
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        device.credential_hash = secret_hash(credential)
        device.enrolled_at = now
        device.agent_version = str(agent_version)[:40]
        if facts:
            device.facts = _clean_facts(facts)
        device.save(update_fields=["credential_hash", "enrolled_at", "agent_version", "facts"])
    # An earlier enrollment's connection, if any, must not outlive the old credential: it is
    # closed with CLOSE_REENROLLED, on which the agent reloads its credential file and reconnects.
    bus.publish(device.pk, {"type": "reenrolled"})
    log.info("device %s (%s) enrolled", device.pk, device.name)
    _org_event(device.organization_id, "device.enrolled", {"device_id": device.pk})
    return device, credential


def _clean_facts(facts: dict[str, Any]) -> dict[str, Any]:
    try:
        return asdict(DeviceFacts(**{k: facts[k] for k in DeviceFacts.__dataclass_fields__}))
    except (KeyError, TypeError):
        return {}


def device_host_credential(*, device: Device) -> str:
    """Issue a credential directly (no code): for the worker host's own agent."""
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    device.credential_hash = secret_hash(credential)
    device.enrolled_at = timezone.now()
    device.revoked_at = None
    device.save(update_fields=["credential_hash", "enrolled_at", "revoked_at"])
    bus.publish(device.pk, {"type": "reenrolled"})
    return credential


def device_revoke(*, device: Device, reason: str = "revoked") -> Device:
    """Revoke at once: the credential stops working and the live connection is closed.

    ``reason`` (e.g. "revoked by alice") reaches the agent, which logs it before it exits.
    """
    now = timezone.now()
    device.revoked_at = now
    device.credential_hash = None
    device.save(update_fields=["revoked_at", "credential_hash"])
    EnrollmentCode.objects.filter(device=device, used_at__isnull=True).update(used_at=now)
    open_targets = DeploymentTarget.objects.filter(device=device).exclude(
        status__in=FINISHED_STATUSES
    )
    deployment_ids = list(open_targets.values_list("deployment_id", flat=True))
    open_targets.update(status=TargetStatus.FAILED, message="device revoked")
    deployments_end_finished(deployment_ids=deployment_ids, now=now)
    bus.publish(device.pk, {"type": "revoke", "reason": reason[:200]})
    log.info("device %s (%s) %s", device.pk, device.name, reason)
    _org_event(
        device.organization_id, "device.status", {"device_id": device.pk, "state": "revoked"}
    )
    return device


# --- the live connection -----------------------------------------------------------------------


def device_connected(
    *, device_id: int, channel: str, agent_version: str, facts: DeviceFacts
) -> dict[str, Any]:
    """Record the live connection; return the ``device.status`` payload for the browsers."""
    now = timezone.now()
    Device.objects.filter(pk=device_id).update(
        connection_channel=channel,
        last_seen=now,
        agent_version=agent_version[:40],
        facts=asdict(facts),
    )
    return {
        "device_id": device_id,
        "state": "online",
        "last_seen": now.isoformat(),
        "agent_version": agent_version[:40],
    }


def device_disconnected(*, device_id: int, channel: str) -> dict[str, Any] | None:
    """Clear the connection, unless a newer one already took its place.

    Returns the ``device.status`` payload for the browsers, or None when nothing changed.
    """
    now = timezone.now()
    updated = Device.objects.filter(pk=device_id, connection_channel=channel).update(
        connection_channel="", last_seen=now
    )
    if not updated:
        return None
    revoked = Device.objects.filter(pk=device_id, revoked_at__isnull=False).exists()
    return {
        "device_id": device_id,
        "state": "revoked" if revoked else "offline",
        "last_seen": now.isoformat(),
        "agent_version": "",
    }


# --- artifacts ------------------------------------------------------------------------------------


def _sha256_and_size(fileobj: Any) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fileobj.seek(0)
    while chunk := fileobj.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    fileobj.seek(0)
    return digest.hexdigest(), size


def sniff_format(fileobj: Any) -> str:
    """``container`` when the file starts with the container's magic bytes, else ``onnx``."""
    fileobj.seek(0)
    head = fileobj.read(len(CONTAINER_MAGIC))
    fileobj.seek(0)
    return FORMAT_CONTAINER if head == CONTAINER_MAGIC else FORMAT_ONNX


def _container_verify(fileobj: Any) -> int:
    """Decode a container once on the server (into a temporary folder) and return the size of
    the ONNX it becomes; raises ``ContainerError`` with the decoder's sentence when refused, so a
    container no device could decode is never stored or signed."""
    fileobj.seek(0)
    data = fileobj.read()
    fileobj.seek(0)
    with tempfile.TemporaryDirectory(prefix="edgeslim-container-") as tmp:
        return decode_container(data, Path(tmp) / "decoded").onnx_bytes


class ArtifactRefused(ValueError):
    """An uploaded artifact is refused; ``str()`` is the sentence, ``field`` the form field."""

    def __init__(self, message: str, *, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


def _upload_size(fileobj: Any) -> int:
    size = getattr(fileobj, "size", None)
    if isinstance(size, int):
        return size
    fileobj.seek(0, 2)
    size = int(fileobj.tell())
    fileobj.seek(0)
    return size


def artifact_upload_check(*, file: Any, eval_file: Any = None) -> str:
    """Check an uploaded artifact the way the catalog checks an uploaded model, before anything
    is stored or signed, and return its format (``onnx`` or ``container``).

    Each file is at most ``EDGESLIM_MAX_ARTIFACT_BYTES``. An ONNX file (or the ONNX a container
    decodes to, whose only external data is the decoder's own ``weights.bin``) goes through the
    catalog's sniffing and sandboxed inspection (:func:`webapp.catalog.services.inspection.
    onnx_file_inspect`): foreign bytes, external data, a graph the ONNX checker or ONNX Runtime
    refuses, or one over the inspector's memory cap are refused with the inspector's sentence.
    An evaluation set must be an ``.npz`` of plain arrays ``x`` and ``y`` (no pickles).

    Raises:
        ArtifactRefused: naming the field and the reason.
    """
    from django.conf import settings

    from webapp.catalog.errors import CatalogInputError
    from webapp.catalog.services.inspection import onnx_file_inspect

    cap = int(settings.EDGESLIM_MAX_ARTIFACT_BYTES)
    name = Path(str(getattr(file, "name", "") or "model.onnx")).name
    for fileobj, field in ((file, "file"), (eval_file, "eval_file")):
        if fileobj is not None and (size := _upload_size(fileobj)) > cap:
            raise ArtifactRefused(
                f"{Path(str(getattr(fileobj, 'name', field))).name} is {size} bytes, over the "
                f"artifact limit of {cap} bytes (EDGESLIM_MAX_ARTIFACT_BYTES).",
                field=field,
            )
    fmt = sniff_format(file)
    with tempfile.TemporaryDirectory(prefix="edgeslim-artifact-") as tmp:
        external: tuple[str, ...] = ()
        if fmt == FORMAT_CONTAINER:
            file.seek(0)
            try:
                decode_container(file.read(), Path(tmp) / "decoded")
            except ContainerError as exc:
                raise ArtifactRefused(f"{name}: {exc}") from None
            finally:
                file.seek(0)
            onnx_path = Path(tmp) / "decoded" / "model.onnx"
            external = ("weights.bin",)
        else:
            onnx_path = Path(tmp) / "model.onnx"
            file.seek(0)
            with open(onnx_path, "wb") as out:
                while chunk := file.read(1024 * 1024):
                    out.write(chunk)
            file.seek(0)
        try:
            onnx_file_inspect(path=onnx_path, display_name=name, external_data=external)
        except CatalogInputError as exc:
            raise ArtifactRefused(exc.message) from None
    if eval_file is not None:
        _eval_file_check(eval_file)
    return fmt


def _eval_file_check(eval_file: Any) -> None:
    import zipfile

    import numpy as np

    name = Path(str(getattr(eval_file, "name", "") or "eval.npz")).name
    eval_file.seek(0)
    try:
        with np.load(eval_file, allow_pickle=False) as npz:
            if not {"x", "y"} <= set(npz.files):
                raise ArtifactRefused(
                    f"{name} must hold the arrays x (inputs) and y (labels); it holds "
                    f"{', '.join(sorted(npz.files)[:10]) or 'none'}.",
                    field="eval_file",
                )
            if len(npz["x"]) != len(npz["y"]):
                raise ArtifactRefused(f"{name}: x and y differ in length.", field="eval_file")
    except ArtifactRefused:
        raise
    except ValueError as exc:
        what = (
            "Python objects (pickles), which are refused"
            if "pickle" in str(exc)
            else "no arrays numpy can read"
        )
        raise ArtifactRefused(f"{name} holds {what}.", field="eval_file") from None
    except (zipfile.BadZipFile, OSError, EOFError):
        raise ArtifactRefused(f"{name} is not an .npz file of arrays.", field="eval_file") from None
    finally:
        eval_file.seek(0)


def artifact_create(
    *,
    organization: Organization,
    name: str,
    file: Any,
    eval_file: Any = None,
    eval_meta: dict[str, Any] | None = None,
    source: str = "",
    created_by: User | None = None,
    format: str = FORMAT_ONNX,
    task: str = "classification",
) -> DeployableArtifact:
    """Store an ONNX file (and optional .npz evaluation set) that devices can benchmark.

    ``file`` is an uploaded file or any binary file object; the catalog calls this with a model
    version's ONNX export, ``source="model_version:<id>"`` and the test split it built
    (``eval_meta`` says what that split holds, see :mod:`device_registry.eval_sets`).
    ``format="container"`` stores an EdgeSlim compressed container instead: it is decoded once
    here (a refused one raises ``ContainerError``), and the agent decodes it again before it
    benchmarks. ``task="detection"`` marks a detector's artifact: its results must carry FPS
    with and without post-processing, and mAP rather than top-1.
    """
    if task not in ("classification", TASK_DETECTION):
        raise ValueError(f"unknown task {task!r}")
    sha256, size = _sha256_and_size(file)
    decoded_size = None
    if format == FORMAT_CONTAINER:
        decoded_size = _container_verify(file)
    elif format != FORMAT_ONNX:
        raise ValueError(f"unknown artifact format {format!r}")
    artifact = DeployableArtifact(
        organization=organization,
        name=name.strip()[:200] or "model.onnx",
        sha256=sha256,
        size=size,
        source=source[:200],
        created_by=created_by,
        format=format,
        decoded_size=decoded_size,
        task=task,
    )
    suffix = "esdc" if format == FORMAT_CONTAINER else "onnx"
    artifact.file.save(f"{sha256[:16]}.{suffix}", File(file), save=False)
    if eval_file is not None:
        artifact.eval_sha256, artifact.eval_size = _sha256_and_size(eval_file)
        artifact.eval_file.save(f"{artifact.eval_sha256[:16]}.npz", File(eval_file), save=False)
        artifact.eval_meta = dict(eval_meta or {})
    artifact.save()
    return artifact


# --- deployments ----------------------------------------------------------------------------------


def deployment_targets_resolve(
    *, organization: Organization, target_kind: str, target_value: str = ""
) -> list[Device]:
    devices = list(
        Device.objects.for_org(organization).filter(
            revoked_at__isnull=True, credential_hash__isnull=False
        )
    )
    if target_kind == TargetKind.FLEET:
        return devices
    if target_kind == TargetKind.TAG:
        tag = target_value.strip().lower()
        return [d for d in devices if tag in (d.tags or [])]  # portable across SQLite too
    if target_kind == TargetKind.DEVICE:
        return [d for d in devices if str(d.pk) == str(target_value)]
    raise ValueError(f"unknown target kind {target_kind!r}")


def deployment_manifest(deployment: Deployment) -> Manifest:
    artifact = deployment.artifact
    has_eval = bool(artifact.eval_file)
    return Manifest(
        deployment_id=deployment.pk,
        artifact_id=artifact.pk,
        name=artifact.name,
        sha256=artifact.sha256,
        size=artifact.size,
        issued_at=deployment.issued_at,
        eval_sha256=artifact.eval_sha256 if has_eval else None,
        eval_size=artifact.eval_size if has_eval else None,
        format=artifact.format or FORMAT_ONNX,
        key_id=stored_key_id(deployment.signature),
    )


def deployment_message(deployment: Deployment) -> Deploy:
    """The ``deploy`` message of a deployment (the same for every target device)."""
    settings = BenchSettings(**deployment.settings)
    artifact = deployment.artifact
    return Deploy(
        manifest=deployment_manifest(deployment),
        signature=stored_signature(deployment.signature),
        artifact_url=f"/api/v1/agent/artifacts/{artifact.pk}",
        eval_url=f"/api/v1/agent/artifacts/{artifact.pk}/eval" if artifact.eval_file else None,
        settings=settings,
    )


def _validate_settings(settings: BenchSettings) -> None:
    """The same checks the agent applies on decode (ranges, provider names)."""
    settings.validate()
    if any(not p or len(p) > 64 for p in settings.providers):
        raise ProtocolError("provider names are 1 to 64 characters")


class NoTargets(ValueError):
    """The deployment's selection matches no enrolled, unrevoked device."""


class AgentTooOld(NoTargets):
    """A container deployment targets a device whose agent cannot decode containers."""


# The first agent version that decodes each container format: 0.2.0 read format 2 only; 0.3.0
# reads format 3 (streams shared between layers) and 2; 0.7.0 reads format 4 (compact tables,
# block codes, fixed-width streams), 3 and 2; 0.8.0 reads format 5 (blocks of up to 8 symbols)
# and all of those. The studio writes format 4, or 5 only for a container with a stream coded in
# blocks of 5 to 8 symbols, and a container is judged by the version in its own header.
CONTAINER_AGENT_BY_VERSION = {2: (0, 2, 0), 3: (0, 3, 0), 4: (0, 7, 0), 5: (0, 8, 0)}
CONTAINER_AGENT = CONTAINER_AGENT_BY_VERSION[max(CONTAINER_AGENT_BY_VERSION)]


def container_agent_needed(artifact: DeployableArtifact) -> tuple[int, ...]:
    """The first agent version that decodes this stored container (by its header's version)."""
    with artifact.file.open("rb") as fh:
        head = fh.read(CONTAINER_HEADER_SIZE)
    if (
        len(head) < CONTAINER_HEADER_SIZE
    ):  # it was checked when stored; the newest rule if it is not
        return CONTAINER_AGENT
    return CONTAINER_AGENT_BY_VERSION.get(
        int(CONTAINER_HEADER.unpack_from(head)[1]), CONTAINER_AGENT
    )


def _version_tuple(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.strip().split(".")[:3])
    except ValueError:
        return None


def agent_at_least(agent_version: str, minimum: tuple[int, ...]) -> bool:
    """Whether an agent that said ``agent_version`` in its hello is ``minimum`` or newer."""
    version = _version_tuple(agent_version or "")
    return version is not None and version >= minimum


class NoEvalSet(ValueError):
    """Accuracy was asked for but the artifact has no evaluation set."""


# The deadline a deployment may set for itself (``timeout_s``): a minute to thirty days.
TIMEOUT_MIN_S = 60
TIMEOUT_MAX_S = 30 * 86400


def deployment_create(
    *,
    organization: Organization,
    artifact: DeployableArtifact,
    target_kind: str,
    target_value: str = "",
    settings: BenchSettings,
    created_by: User | None = None,
    timeout_s: float | None = None,
) -> Deployment:
    """Sign and record a deployment, and push it to each target's live connection.

    Targets that have not ended ``timeout_s`` after now (default
    :func:`device_registry.conf.deployment_timeout_s`) are marked timed out by
    :func:`deployments_expire`.

    Raises:
        NoTargets: no enrolled device matches.
        NoEvalSet: ``settings.accuracy`` but the artifact has no evaluation set.
        ProtocolError: the settings are out of range.
        ValueError: ``timeout_s`` is outside [TIMEOUT_MIN_S, TIMEOUT_MAX_S].
    """
    if artifact.organization_id != organization.pk:
        raise ValueError("the artifact belongs to another organisation")
    if timeout_s is None:
        timeout_s = conf.deployment_timeout_s()
    elif not TIMEOUT_MIN_S <= timeout_s <= TIMEOUT_MAX_S:
        raise ValueError(
            f"timeout_s must be between {TIMEOUT_MIN_S} and {TIMEOUT_MAX_S} seconds (30 days)"
        )
    _validate_settings(settings)
    if settings.accuracy and not artifact.eval_file:
        raise NoEvalSet(
            "This artifact has no evaluation set, so devices cannot measure its accuracy: "
            "untick accuracy, or deploy a catalog version whose data set's test split ships."
        )
    devices = deployment_targets_resolve(
        organization=organization, target_kind=target_kind, target_value=target_value
    )
    if not devices:
        raise NoTargets("No enrolled device matches this target.")
    if artifact.format == FORMAT_CONTAINER:
        needed = container_agent_needed(artifact)
        old = [
            f"{d.name} ({d.agent_version})"
            for d in devices
            if (v := _version_tuple(d.agent_version or "")) is not None and v < needed
        ]
        if old:
            raise AgentTooOld(
                f"A compressed container needs agent {'.'.join(map(str, needed))} or "
                f"newer to decode it, and these devices run an older one: {', '.join(old)}. "
                "Update their agent from the Devices page's install command, or deploy the ONNX."
            )
    with transaction.atomic():
        deployment = Deployment.objects.create(
            organization=organization,
            artifact=artifact,
            target_kind=target_kind,
            target_value=target_value if target_kind != TargetKind.FLEET else "",
            settings=asdict(settings),
            issued_at=int(time.time() * 1000),
            signature="",
            created_by=created_by,
            expires_at=timezone.now() + timedelta(seconds=timeout_s),
        )
        deployment.signature = manifest_sign(deployment_manifest(deployment))
        deployment.save(update_fields=["signature"])
        DeploymentTarget.objects.bulk_create(
            [DeploymentTarget(deployment=deployment, device=d) for d in devices]
        )
        text = encode(deployment_message(deployment))
        device_ids = [d.pk for d in devices]

        def push() -> None:
            for device_id in device_ids:
                event = {"type": "deploy", "deployment_id": deployment.pk, "text": text}
                bus.publish(device_id, event)

        transaction.on_commit(push)
    log.info("deployment %s of artifact %s to %d devices", deployment.pk, artifact.pk, len(devices))
    return deployment


def deployment_progress(*, device_id: int, progress: Progress) -> dict[str, Any] | None:
    """Record a target's stage; return the browser event payload (None if not this device's)."""
    target = (
        DeploymentTarget.objects.select_related("deployment", "device")
        .filter(deployment_id=progress.deployment_id, device_id=device_id)
        .first()
    )
    if target is None or target.finished:
        return None  # an ended target (cancelled, timed out) keeps its state on every page
    if target.status != progress.stage:
        target.status = progress.stage
        target.message = progress.message[:500]
        target.save(update_fields=["status", "message", "updated_at"])
    return {
        "deployment_id": progress.deployment_id,
        "device_id": device_id,
        "device_name": target.device.name,
        "stage": progress.stage,
        "fraction": progress.fraction,
        "message": progress.message[:500],
        "organization_id": target.deployment.organization_id,
    }


@dataclass(frozen=True)
class StoredResult:
    created: bool  # False: a duplicate or a refused result, not stored (still acknowledged)
    organization_id: int | None
    event: dict[str, Any] | None  # the browser event payload, when newly stored
    refused: str = ""  # why a well-formed result was acknowledged but not stored


LATENCY_KEYS = (
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "cv", "unstable",
    "throughput", "load_time_ms", "peak_rss_mb", "batch_size", "threads", "runs", "warmup",
    "provider", "ort_version", *DECODE_KEYS, "task", *DETECTION_LATENCY_KEYS,
    *DETECTION_LATENCY_OPTIONAL,
)  # fmt: skip


def result_event_payload(row: DeploymentResult, device_name: str) -> dict[str, Any]:
    data = row.payload
    if row.kind == RESULT_LATENCY:
        slim = {k: data.get(k) for k in LATENCY_KEYS}
        slim["has_profile"] = bool(data.get("op_profile_ms"))
    else:
        slim = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    if "sent_at" in data:  # benchmarks measure result-to-browser latency with it
        slim["sent_at"] = data["sent_at"]
    return {
        "deployment_id": row.deployment_id,
        "device_id": row.device_id,
        "device_name": device_name,
        "seq": row.seq,
        "kind": row.kind,
        "data": slim,
    }


def _expected_kinds(settings: dict[str, Any], seq: int) -> tuple[str, ...]:
    n = len(settings.get("batch_sizes") or [1])
    if 1 <= seq <= n:
        return (RESULT_LATENCY,)
    if seq == n + 1:
        return (RESULT_ACCURACY,)
    if seq == n + 2:
        return (RESULT_COMPLETE, RESULT_FAILED)
    return ()


@dataclass(frozen=True)
class TargetInfo:
    """What storing a result needs to know about its (deployment, device); cacheable."""

    deployment_id: int
    device_id: int
    organization_id: int
    device_name: str
    settings: dict[str, Any]
    has_eval_set: bool = False
    eval_count: int | None = None  # images in the evaluation set, when the server built it
    artifact_format: str = FORMAT_ONNX
    artifact_task: str = "classification"  # "detection": FPS and mAP figures required
    eval_task: str = "classification"  # what the shipped evaluation set scores
    agent_version: str = ""  # the device's agent, as it said in its last hello


def deployment_target_info(*, device_id: int, deployment_id: int) -> TargetInfo | None:
    row = (
        DeploymentTarget.objects.filter(deployment_id=deployment_id, device_id=device_id)
        .values(
            "deployment__organization_id",
            "device__name",
            "deployment__settings",
            "deployment__artifact__eval_file",
            "deployment__artifact__eval_meta",
            "deployment__artifact__format",
            "deployment__artifact__task",
            "device__agent_version",
        )
        .first()
    )
    if row is None:
        return None
    meta = row["deployment__artifact__eval_meta"] or {}
    count = meta.get("count") if isinstance(meta, dict) else None
    return TargetInfo(
        deployment_id=deployment_id,
        device_id=device_id,
        organization_id=row["deployment__organization_id"],
        device_name=row["device__name"],
        settings=row["deployment__settings"],
        has_eval_set=bool(row["deployment__artifact__eval_file"]),
        eval_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        artifact_format=row["deployment__artifact__format"] or FORMAT_ONNX,
        artifact_task=row["deployment__artifact__task"] or "classification",
        agent_version=row["device__agent_version"] or "",
        eval_task=(
            TASK_DETECTION
            if isinstance(meta, dict) and meta.get("task") == TASK_DETECTION
            else "classification"
        ),
    )


def accuracy_data(data: dict[str, Any], *, eval_count: int | None = None) -> dict[str, Any]:
    """An accuracy result's data as stored: ``top1_pct`` (percent, 0-100) recomputed from the
    integer ``correct`` and ``samples`` with :func:`accuracy_percent`.

    Agents before the percent field sent ``top1`` as a fraction (with the same counts); it is
    dropped, so every stored accuracy is percent.

    Raises:
        ProtocolError: the counts are missing, not integers, out of range, disagree with the
            agent's own ``top1_pct``, or exceed the evaluation set that was shipped.
    """
    correct, samples = data.get("correct"), data.get("samples")
    for name, value in (("correct", correct), ("samples", samples)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"an accuracy result needs an integer {name!r}")
    assert isinstance(correct, int) and isinstance(samples, int)
    pct = accuracy_percent(correct, samples)
    given = data.get("top1_pct")
    if given is not None and (
        not isinstance(given, int | float) or isinstance(given, bool) or abs(given - pct) > 1e-9
    ):
        raise ProtocolError(f"top1_pct {given!r} does not match {correct} of {samples}")
    if eval_count is not None and samples > eval_count:
        raise ProtocolError(
            f"an accuracy result over {samples} images, but the evaluation set holds {eval_count}"
        )
    out = {k: v for k, v in data.items() if k != "top1"}
    out["top1_pct"] = pct
    return out


def _insert_result_once(*, device_id: int, result: Result) -> DeploymentResult | None:
    """INSERT ... ON CONFLICT DO NOTHING: one statement, no savepoint; None for a duplicate."""
    table = DeploymentResult._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (deployment_id, device_id, seq, kind, payload, received_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (deployment_id, device_id, seq) DO NOTHING RETURNING id",
            [result.deployment_id, device_id, result.seq, result.kind,
             json.dumps(result.data), timezone.now()],
        )  # fmt: skip
        inserted = cursor.fetchone()
    if inserted is None:
        return None
    return DeploymentResult(
        pk=inserted[0], deployment_id=result.deployment_id, device_id=device_id,
        seq=result.seq, kind=result.kind, payload=result.data,
    )  # fmt: skip


def deployment_result_store(
    *, device_id: int, result: Result, info: TargetInfo | None = None
) -> StoredResult:
    """Store a result once per (deployment, device, seq), and finish the target on a terminal one.

    ``info`` (from :func:`deployment_target_info`, cached by the socket) saves a lookup.

    Raises:
        ProtocolError: the seq or kind cannot belong to this deployment's settings.
    """
    if info is None or info.deployment_id != result.deployment_id:
        info = deployment_target_info(device_id=device_id, deployment_id=result.deployment_id)
    if info is None:
        # Not this device's deployment (or deleted since): acknowledge so the agent drops it.
        log.warning(
            "device %s sent a result for deployment %s it was not given",
            device_id,
            result.deployment_id,
        )
        return StoredResult(created=False, organization_id=None, event=None)
    if result.kind not in _expected_kinds(info.settings, result.seq):
        raise ProtocolError(
            f"result seq {result.seq} of kind {result.kind!r} does not fit deployment "
            f"{result.deployment_id}"
        )
    if result.kind == RESULT_LATENCY:
        if info.artifact_format == FORMAT_CONTAINER:
            decode_figures(result.data)  # every latency of a container says what decoding cost
        elif any(key in result.data for key in DECODE_KEYS):
            raise ProtocolError(
                f"deployment {result.deployment_id} shipped a plain ONNX, but its result carries "
                "decode figures"
            )
        # A detector's every latency carries FPS with and without post-processing (agents
        # from DETECTION_AGENT on; an older one's network-alone figures are stored as they
        # are); the figures of any result that has them (an uploaded detector) are checked.
        required = info.artifact_task == TASK_DETECTION and agent_at_least(
            info.agent_version, DETECTION_AGENT
        )
        if required or any(key in result.data for key in DETECTION_LATENCY_KEYS):
            result = dataclasses.replace(
                result, data={**result.data, **detection_latency_figures(result.data)}
            )
    if result.kind == RESULT_ACCURACY:
        if not info.has_eval_set:
            # Nothing was shipped to measure on, so the figure cannot be trusted. Acknowledged
            # (resending would never succeed) and not stored.
            reason = (
                f"deployment {result.deployment_id} shipped no evaluation set: an accuracy "
                "result is refused"
            )
            log.warning("device %s: %s", device_id, reason)
            return StoredResult(
                created=False, organization_id=info.organization_id, event=None, refused=reason
            )
        if info.eval_task == TASK_DETECTION:
            data = detection_accuracy_figures(result.data, eval_count=info.eval_count)
        elif result.data.get("task") == TASK_DETECTION:
            raise ProtocolError(
                f"deployment {result.deployment_id} shipped a classification evaluation set, "
                "but its accuracy result is a detector's mAP"
            )
        else:
            data = accuracy_data(result.data, eval_count=info.eval_count)
        result = dataclasses.replace(result, data=data)
    row = _insert_result_once(device_id=device_id, result=result)
    if row is None:
        return StoredResult(created=False, organization_id=info.organization_id, event=None)
    status = ""
    if result.kind in (RESULT_COMPLETE, RESULT_FAILED):
        status = TargetStatus.SUCCEEDED if result.kind == RESULT_COMPLETE else TargetStatus.FAILED
        message = str(result.data.get("detail") or result.data.get("reason") or "")[:500]
        # A target that already ended (cancelled, timed out) keeps its state: the late result is
        # stored beside it, and the deployment stays ended.
        ended = (
            DeploymentTarget.objects.filter(deployment_id=result.deployment_id, device_id=device_id)
            .exclude(status__in=FINISHED_STATUSES)
            .update(status=status, message=message, updated_at=timezone.now())
        )
        if ended:
            deployments_end_finished(deployment_ids=[result.deployment_id])
        else:
            status = ""
        if result.kind == RESULT_FAILED:
            log.warning(
                "deployment %s failed on device %s: %s", result.deployment_id, device_id, message
            )
    event = result_event_payload(row, info.device_name)
    if status:
        event["status"] = status
    return StoredResult(created=True, organization_id=info.organization_id, event=event)


@dataclass(frozen=True)
class HeartbeatCheck:
    """What a heartbeat batch learns about one device."""

    credential_hash: str | None  # None: revoked (the socket closes with CLOSE_REVOKED)
    pending: tuple[int, ...]  # deployments still ``pending`` on it, oldest first


def devices_heartbeat(*, seen_ids: list[int], check_ids: list[int]) -> dict[int, HeartbeatCheck]:
    """Record the heartbeats of ``seen_ids`` (one UPDATE) and look up, for every device of
    ``check_ids``, its current credential and its deployments no agent has answered yet.

    The sockets compare the credential with the one they were opened with (a revocation or
    re-enrollment whose bus message was missed) and send the pending deployments they have not
    sent yet (a deploy message that missed the socket). Three queries for the whole batch.
    """
    if seen_ids:
        Device.objects.filter(pk__in=seen_ids).update(last_seen=timezone.now())
    if not check_ids:
        return {}
    pending: dict[int, list[int]] = {}
    rows = (
        DeploymentTarget.objects.filter(device_id__in=check_ids, status=TargetStatus.PENDING)
        .order_by("deployment_id")
        .values_list("device_id", "deployment_id")
    )
    for device_id, deployment_id in rows:
        pending.setdefault(device_id, []).append(deployment_id)
    out: dict[int, HeartbeatCheck] = {}
    for device_id, credential_hash, revoked_at in Device.objects.filter(
        pk__in=check_ids
    ).values_list("pk", "credential_hash", "revoked_at"):
        out[device_id] = HeartbeatCheck(
            credential_hash=credential_hash if revoked_at is None else None,
            pending=tuple(pending.get(device_id, ())),
        )
    for device_id in check_ids:  # deleted meanwhile: as good as revoked
        out.setdefault(device_id, HeartbeatCheck(credential_hash=None, pending=()))
    return out


# --- ending deployments: cancel, expiry -----------------------------------------------------------


class DeploymentEnded(ValueError):
    """The deployment has already ended (finished, cancelled or expired)."""


def deployments_end_finished(*, deployment_ids: list[int] | None = None, now: Any = None) -> int:
    """Mark ended the deployments (of ``deployment_ids``, else all open ones) whose targets have
    all ended; return how many."""
    qs = Deployment.objects.filter(ended_at__isnull=True)
    if deployment_ids is not None:
        if not deployment_ids:
            return 0
        qs = qs.filter(pk__in=deployment_ids)
    open_ids = DeploymentTarget.objects.exclude(status__in=FINISHED_STATUSES).values(
        "deployment_id"
    )
    return qs.exclude(pk__in=open_ids).update(ended_at=now or timezone.now())


def deployment_cancel(*, deployment: Deployment, user: User | None = None) -> Deployment:
    """Cancel a deployment: every target that has not ended is marked cancelled and is never sent
    to its device again; targets that already ended keep their results.

    Each device whose target was cancelled is sent a ``cancel`` (agent 0.6.0 on): a queued run
    is dropped, a running one stops before its next batch and reports ``failed``/``cancelled``.
    Whatever a device still sends (an older agent finishes the run) is stored and acknowledged
    beside the cancelled target, which keeps its state.

    Raises:
        DeploymentEnded: it had already ended.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if locked.ended_at is not None:
            raise DeploymentEnded(f"Deployment #{locked.pk} has already ended.")
        who = f"cancelled by {user}" if user is not None else "cancelled"
        open_targets = DeploymentTarget.objects.filter(deployment=locked).exclude(
            status__in=FINISHED_STATUSES
        )
        device_ids = list(open_targets.values_list("device_id", flat=True))
        cancelled = open_targets.update(
            status=TargetStatus.CANCELLED, message=who[:500], updated_at=now
        )
        locked.cancelled_at = now
        locked.cancelled_by = user
        locked.ended_at = now
        locked.save(update_fields=["cancelled_at", "cancelled_by", "ended_at"])
        deployment_id = locked.pk

        def tell_devices() -> None:  # a device running it stops before its next batch
            for device_id in device_ids:
                bus.publish(device_id, {"type": "cancel", "deployment_id": deployment_id})

        transaction.on_commit(tell_devices)
    log.info("deployment %s %s (%d target(s) stopped)", locked.pk, who, cancelled)
    _org_event(
        locked.organization_id,
        "deployment.ended",
        {"deployment_id": locked.pk, "status": "cancelled"},
    )
    return locked


@dataclass(frozen=True)
class ExpiryReport:
    timed_out: int  # targets marked timed out
    ended: int  # deployments that ended


def deployments_expire(
    *, organization: Organization | None = None, now: Any = None
) -> ExpiryReport:
    """Mark timed out every target of a deployment past its deadline (``expires_at``) that has
    not ended, then end the deployments whose targets all ended. Idempotent; one organisation's
    only when ``organization`` is given (a page read), all of them otherwise (the beat task).
    """
    now = now or timezone.now()
    late = DeploymentTarget.objects.filter(
        deployment__expires_at__lte=now, deployment__ended_at__isnull=True
    ).exclude(status__in=FINISHED_STATUSES)
    if organization is not None:
        late = late.filter(deployment__organization=organization)
    deployment_ids = sorted(set(late.values_list("deployment_id", flat=True)))
    if not deployment_ids:
        return ExpiryReport(timed_out=0, ended=0)
    late = DeploymentTarget.objects.filter(deployment_id__in=deployment_ids).exclude(
        status__in=FINISHED_STATUSES
    )
    # The SET expressions read the row as it was: the message names the stage it stopped at.
    timed_out = late.filter(status=TargetStatus.PENDING).update(
        status=TargetStatus.TIMED_OUT,
        message="the device never answered before the deployment's deadline",
        updated_at=now,
    )
    timed_out += late.update(
        status=TargetStatus.TIMED_OUT,
        message=Concat(
            Value("no result before the deployment's deadline (last stage: "),
            F("status"),
            Value(")"),
            output_field=CharField(),
        ),
        updated_at=now,
    )
    ended = deployments_end_finished(deployment_ids=deployment_ids, now=now)
    if timed_out:
        log.warning("%d deployment target(s) timed out, %d deployment(s) ended", timed_out, ended)
    organizations = set(
        Deployment.objects.filter(pk__in=deployment_ids).values_list("organization_id", "pk")
    )
    for organization_id, deployment_id in sorted(organizations):
        _org_event(
            organization_id,
            "deployment.ended",
            {"deployment_id": deployment_id, "status": "expired"},
        )
    return ExpiryReport(timed_out=timed_out, ended=ended)
