"""Upload forms for browsers without JavaScript (small files in one request); the drag-and-drop
zone sends the same fields through the chunked upload API."""

from __future__ import annotations

from django import forms

from compression.zoo import list_models


def _arch_choices() -> list[tuple[str, str]]:
    return [("", "— ONNX carries its own graph —")] + [(name, name) for name in list_models()]


class ModelUploadForm(forms.Form):
    file = forms.FileField(
        help_text=".safetensors, a weights-only state dict (.pt/.pth), or .onnx. "
        "Pickled modules are refused."
    )
    name = forms.CharField(
        max_length=200, required=False, help_text="Model name; the same name adds a version."
    )
    arch = forms.ChoiceField(
        choices=_arch_choices,
        required=False,
        label="Architecture",
        help_text="The zoo architecture the weights belong to (weights files only).",
    )
    num_classes = forms.IntegerField(
        min_value=1, required=False, help_text="Read from the weights when left blank."
    )
    in_channels = forms.IntegerField(
        min_value=1, max_value=4, required=False, help_text="1 for grayscale, 3 for RGB."
    )
    input_size = forms.IntegerField(
        min_value=8, max_value=1024, required=False, help_text="Square input side in pixels."
    )


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        help_text="An image-folder .zip: train/<class>/*.png and val/<class>/*.png, "
        "or <class>/*.png."
    )
    name = forms.CharField(max_length=200, required=False)
