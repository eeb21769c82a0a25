"""REST API of the device registry (org-scoped; another organisation's ids answer 404)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from device_registry import conf, enrollment, model_versions, selectors, services
from device_registry.models import DeployableArtifact, Deployment, Device, TargetKind
from edgeslim_agent.protocol import BenchSettings, ProtocolError
from webapp.accounts.models import Organization
from webapp.accounts.permissions import api_organization
from webapp.accounts.selectors import get_object_for_org_or_404
from webapp.catalog.models import Dataset, ModelVersion
from webapp.names import validate_name


def _org(request: Request) -> Organization:
    return api_organization(request)


class DeviceSerializer(serializers.ModelSerializer[Device]):
    state = serializers.CharField(read_only=True)

    class Meta:
        model = Device
        fields = [
            "id", "name", "hardware", "tags", "state", "is_host", "created_at", "enrolled_at",
            "revoked_at", "last_seen", "agent_version", "facts",
        ]  # fmt: skip
        read_only_fields = fields


class DeviceRegisterSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100, validators=[validate_name])
    hardware = serializers.CharField(max_length=200, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)


class DeviceRegisteredSerializer(serializers.Serializer[Any]):
    device = DeviceSerializer()
    enrollment_code = serializers.CharField(help_text="One-time; shown once, stored hashed.")
    command = serializers.CharField()


def _enroll_command(request: Request, code: str) -> str:
    base = conf.public_url() or request.build_absolute_uri("/").rstrip("/")
    return enrollment.commands(base_url=base, code=code).enroll


class DeviceListView(APIView):
    @extend_schema(responses=DeviceSerializer(many=True), summary="Devices of the organisation")
    def get(self, request: Request) -> Response:
        devices = selectors.device_list(organization=_org(request), tag=request.GET.get("tag"))
        return Response(DeviceSerializer(devices, many=True).data)

    @extend_schema(
        request=DeviceRegisterSerializer,
        responses={201: DeviceRegisteredSerializer},
        summary="Register a device; answers its one-time enrollment code",
    )
    def post(self, request: Request) -> Response:
        form = DeviceRegisterSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        device, code = services.device_register(
            organization=_org(request),
            name=form.validated_data["name"],
            hardware=form.validated_data.get("hardware", ""),
            tags=form.validated_data.get("tags", []),
            created_by=request.user,  # type: ignore[arg-type]
        )
        return Response(
            {
                "device": DeviceSerializer(device).data,
                "enrollment_code": code,
                "command": _enroll_command(request, code),
            },
            status=status.HTTP_201_CREATED,
        )


class DeviceDetailView(APIView):
    @extend_schema(responses=DeviceSerializer, summary="One device")
    def get(self, request: Request, pk: int) -> Response:
        device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
        return Response(DeviceSerializer(device).data)


class DeviceRevokeView(APIView):
    @extend_schema(request=None, responses=DeviceSerializer, summary="Revoke a device at once")
    def post(self, request: Request, pk: int) -> Response:
        device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
        services.device_revoke(device=device, reason=f"revoked by {request.user} (API)")
        return Response(DeviceSerializer(device).data)


class BenchSettingsSerializer(serializers.Serializer[Any]):
    warmup = serializers.IntegerField(min_value=0, max_value=10_000, default=10)
    runs = serializers.IntegerField(min_value=1, max_value=100_000, default=50)
    threads = serializers.IntegerField(min_value=1, max_value=256, default=1)
    batch_sizes = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096), default=[1]
    )
    providers = serializers.ListField(
        child=serializers.CharField(max_length=64), default=["CPUExecutionProvider"]
    )
    profile = serializers.BooleanField(default=False)
    accuracy = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Top-1 on the artifact's evaluation set; by default on when it has one.",
    )
    input_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_null=True, default=None
    )


class DeploymentCreateSerializer(serializers.Serializer[Any]):
    artifact = serializers.IntegerField(required=False, allow_null=True, default=None)
    model_version = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="A ready ONNX catalog version instead of an artifact: its artifact is made "
        "once, with its data set's test split as the evaluation set.",
    )
    dataset = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="With model_version: the data set whose test split evaluates an uploaded "
        "version (a job's version uses the job's).",
    )
    container = serializers.BooleanField(
        required=False,
        default=False,
        help_text="With model_version: deploy its compressed container (a weight_coding job's) "
        "instead of its ONNX; devices decode it first and report the decode time and memory.",
    )
    target_kind = serializers.ChoiceField(choices=TargetKind.choices)
    target_value = serializers.CharField(required=False, allow_blank=True, default="")
    settings = BenchSettingsSerializer(required=False)
    timeout_s = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=services.TIMEOUT_MIN_S,
        max_value=services.TIMEOUT_MAX_S,
        help_text="Seconds the targets have to finish before they are marked timed out "
        "(default EDGESLIM_DEPLOYMENT_TIMEOUT_S, 24 h).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (attrs.get("artifact") is None) == (attrs.get("model_version") is None):
            raise ValidationError("Give exactly one of artifact and model_version.")
        if attrs.get("dataset") is not None and attrs.get("model_version") is None:
            raise ValidationError({"dataset": "Only with model_version."})
        return attrs


class DeploymentSerializer(serializers.ModelSerializer[Deployment]):
    artifact_name = serializers.CharField(source="artifact.name", read_only=True)
    eval_set = serializers.JSONField(
        source="artifact.eval_meta",
        read_only=True,
        help_text="What the shipped evaluation set holds (dataset, split, split_seed, count); "
        "{} when none or an uploaded .npz. Accuracy results carry top1_pct in percent.",
    )
    artifact_format = serializers.CharField(
        source="artifact.format",
        read_only=True,
        help_text='"onnx", or "container": a compressed container the devices decode first '
        "(their latency results then carry decode_ms, decode_peak_rss_mb, container_bytes and "
        "onnx_bytes).",
    )
    artifact_task = serializers.CharField(
        source="artifact.task",
        read_only=True,
        help_text='"classification", or "detection": every latency result also carries fps and '
        "fps_e2e (without and with decode + NMS) and the end-to-end e2e_p50_ms, e2e_p90_ms, "
        "e2e_p99_ms, e2e_mean_ms; accuracy results carry map50 and map50_95 (0-1) instead of "
        "top1_pct.",
    )
    artifact_size = serializers.IntegerField(source="artifact.size", read_only=True)
    artifact_decoded_size = serializers.IntegerField(
        source="artifact.decoded_size",
        read_only=True,
        allow_null=True,
        help_text="For a container: the bytes of the ONNX it decodes to.",
    )
    status = serializers.SerializerMethodField(
        help_text="running, finished, failed (every target failed), cancelled, or expired (its "
        "deadline passed with targets that never finished: they are timed_out)."
    )
    cancelled_by = serializers.CharField(
        source="cancelled_by.username", read_only=True, allow_null=True, default=None
    )
    targets = serializers.SerializerMethodField(
        help_text="Each device's status: pending, downloading, verifying, benchmarking, "
        "evaluating, succeeded, failed, cancelled or timed_out."
    )
    results = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id", "artifact", "artifact_name", "artifact_format", "artifact_task", "artifact_size",
            "artifact_decoded_size", "eval_set", "target_kind", "target_value", "settings",
            "issued_at", "created_at", "expires_at", "ended_at", "cancelled_at", "cancelled_by",
            "status", "targets", "results",
        ]  # fmt: skip
        read_only_fields = fields

    def get_status(self, obj: Deployment) -> str:
        return selectors.deployment_status(obj)

    def get_targets(self, obj: Deployment) -> list[dict[str, Any]]:
        return [
            {"device": t.device_id, "device_name": t.device.name, "status": t.status,
             "message": t.message, "updated_at": t.updated_at}
            for t in selectors.deployment_targets(deployment=obj)
        ]  # fmt: skip

    def get_results(self, obj: Deployment) -> list[dict[str, Any]]:
        if not self.context.get("with_results"):
            return []
        rows = selectors.deployment_results(organization=obj.organization, deployment=obj)
        return [
            {
                "device": r.device_id,
                "device_name": r.device.name,
                "seq": r.seq,
                "kind": r.kind,
                "payload": r.payload,
            }
            for r in rows
        ]


class DeploymentListView(APIView):
    @extend_schema(responses=DeploymentSerializer(many=True), summary="Deployments")
    def get(self, request: Request) -> Response:
        services.deployments_expire(organization=_org(request))  # deadlines as they stand now
        qs = selectors.deployment_list(organization=_org(request))[:200]
        return Response(DeploymentSerializer(qs, many=True).data)

    @extend_schema(
        request=DeploymentCreateSerializer,
        responses={201: DeploymentSerializer},
        summary="Push an artifact to a device, a tag or the fleet",
    )
    def post(self, request: Request) -> Response:
        org = _org(request)
        form = DeploymentCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        if data.get("model_version") is not None:
            version = get_object_for_org_or_404(ModelVersion, org=org, pk=data["model_version"])
            dataset = None
            if data.get("dataset") is not None:
                dataset = get_object_for_org_or_404(Dataset, org=org, pk=data["dataset"])
            try:
                artifact = model_versions.artifact_for_model_version(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    model_version=version,
                    dataset=dataset,
                    container=bool(data.get("container")),
                )
            except model_versions.NotDeployable as exc:
                raise ValidationError({"model_version": str(exc)}) from exc
        else:
            artifact = get_object_for_org_or_404(DeployableArtifact, org=org, pk=data["artifact"])
        bench = dict(data.get("settings") or {})
        if bench.get("accuracy") is None:  # measured whenever an evaluation set ships
            bench["accuracy"] = bool(artifact.eval_file)
        try:
            settings = BenchSettings(**bench)
            deployment = services.deployment_create(
                organization=org,
                artifact=artifact,
                target_kind=data["target_kind"],
                target_value=data.get("target_value", ""),
                settings=settings,
                created_by=request.user,  # type: ignore[arg-type]
                timeout_s=data.get("timeout_s"),
            )
        except (services.NoTargets, services.NoEvalSet, ProtocolError) as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_201_CREATED)


class DeploymentDetailView(APIView):
    @extend_schema(responses=DeploymentSerializer, summary="One deployment with its results")
    def get(self, request: Request, pk: int) -> Response:
        services.deployments_expire(organization=_org(request))
        deployment = get_object_for_org_or_404(Deployment, org=_org(request), pk=pk)
        return Response(DeploymentSerializer(deployment, context={"with_results": True}).data)


class DeploymentCancelView(APIView):
    @extend_schema(
        request=None,
        responses={200: DeploymentSerializer},
        summary="Cancel a deployment: targets that have not ended are cancelled (409 if it ended)",
    )
    def post(self, request: Request, pk: int) -> Response:
        deployment = get_object_for_org_or_404(Deployment, org=_org(request), pk=pk)
        try:
            deployment = services.deployment_cancel(
                deployment=deployment,
                user=request.user,  # type: ignore[arg-type]
            )
        except services.DeploymentEnded as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(DeploymentSerializer(deployment).data)
