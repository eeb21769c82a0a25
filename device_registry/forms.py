"""Forms of the device pages."""

from __future__ import annotations

from typing import Any

from django import forms

from device_registry.models import TargetKind
from webapp.names import validate_name


class DeviceRegisterForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_name])
    hardware = forms.CharField(
        max_length=200, required=False, help_text="e.g. Raspberry Pi 4 Model B, 4 GB"
    )
    tags = forms.CharField(
        max_length=400, required=False, help_text="Space- or comma-separated, e.g. pi arm64 lab"
    )


class ArtifactUploadForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, validators=[validate_name])
    file = forms.FileField(
        help_text="An ONNX model, or an EdgeSlim compressed container (.esdc) that devices "
        "decode before they benchmark it."
    )
    eval_file = forms.FileField(
        required=False, help_text="Optional .npz with arrays x (inputs) and y (labels)."
    )


def _int_list(text: str, *, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError as exc:
        raise forms.ValidationError(f"{field}: whole numbers separated by commas") from exc
    return values


class DeploymentForm(forms.Form):
    artifact = forms.TypedChoiceField(coerce=int)
    target_kind = forms.ChoiceField(choices=TargetKind.choices, initial=TargetKind.DEVICE)
    device = forms.TypedChoiceField(coerce=int, required=False)
    tag = forms.CharField(max_length=40, required=False)
    warmup = forms.IntegerField(min_value=0, max_value=10_000, initial=10)
    runs = forms.IntegerField(min_value=1, max_value=100_000, initial=50)
    threads = forms.IntegerField(min_value=1, max_value=256, initial=1)
    batch_sizes = forms.CharField(initial="1", help_text="e.g. 1, 4, 16")
    providers = forms.CharField(initial="CPUExecutionProvider", help_text="in priority order")
    input_shape = forms.CharField(
        required=False, help_text="Full input shape when the model's is symbolic, e.g. 1,3,224,224"
    )
    profile = forms.BooleanField(required=False, help_text="Per-operator time profile")
    accuracy = forms.BooleanField(
        required=False,
        help_text="Top-1 on the artifact's eval set (mAP@0.5 and mAP@0.5:0.95 for a detector)",
    )

    def __init__(self, *args: Any, artifacts: Any = (), devices: Any = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fields["artifact"].choices = [(a.pk, f"{a.name} ({a.size} bytes)") for a in artifacts]  # type: ignore[attr-defined]
        self.fields["device"].choices = [("", "—")] + [(d.pk, d.name) for d in devices]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("target_kind")
        if kind == TargetKind.DEVICE and not data.get("device"):
            self.add_error("device", "Pick a device.")
        if kind == TargetKind.TAG and not data.get("tag"):
            self.add_error("tag", "Give a tag.")
        try:
            data["batch_sizes_list"] = _int_list(data.get("batch_sizes", ""), field="batch sizes")
            shape = data.get("input_shape") or ""
            data["input_shape_list"] = _int_list(shape, field="input shape") if shape else None
        except forms.ValidationError as exc:
            self.add_error(None, exc)
        data["providers_list"] = data.get("providers", "").replace(",", " ").split()
        return data

    @property
    def target_value(self) -> str:
        kind = self.cleaned_data["target_kind"]
        if kind == TargetKind.DEVICE:
            return str(self.cleaned_data["device"])
        if kind == TargetKind.TAG:
            return str(self.cleaned_data["tag"]).strip().lower()
        return ""
