"""Upload forms for browsers without JavaScript (small files in one request); the drag-and-drop
zone sends the same fields through the chunked upload API."""

from __future__ import annotations

from django import forms

from compression.zoo import list_models
from webapp.names import validate_name

NORMALIZATION_CHOICES = [
    ("dataset", "Dataset statistics (mean/std of the training split)"),
    ("imagenet", "ImageNet mean/std (3-channel models)"),
    ("unit", "Plain 0-1 scaling (mean 0, std 1)"),
]


def _arch_choices() -> list[tuple[str, str]]:
    return [("", "— ONNX carries its own graph —")] + [
        (name, name) for name in list_models(task="classification")
    ]


class ModelUploadForm(forms.Form):
    file = forms.FileField(
        help_text=".safetensors, a weights-only state dict (.pt/.pth), or .onnx. "
        "Pickled modules are refused."
    )
    name = forms.CharField(
        max_length=200,
        required=False,
        validators=[validate_name],
        help_text="Model name; the same name adds a version.",
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
    normalization = forms.ChoiceField(
        choices=NORMALIZATION_CHOICES,
        required=False,
        initial="dataset",
        help_text="The statistics the model was trained with; the baseline is measured with them.",
    )


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        help_text="An image-folder .zip: train/<class>/*.png with optional val/<class>/ and "
        "test/<class>/ folders, or <class>/*.png; or a detection .zip (YOLO, Pascal VOC or COCO)."
    )
    task = forms.ChoiceField(
        choices=[("auto", "Detect from the layout"), ("detection", "Object detection")],
        required=False,
        initial="auto",
        label="Task",
        help_text="Image folders are classification; YOLO, Pascal VOC and COCO zips are found "
        "by their layout. Choose object detection to refuse anything else.",
    )
    name = forms.CharField(max_length=200, required=False, validators=[validate_name])
    split_seed = forms.IntegerField(
        min_value=0,
        max_value=2**31 - 1,
        required=False,
        label="Split seed",
        help_text="Seeds the val/test carving when the zip has no val/ or test/ folder "
        "(default 0). Fixed for the dataset's life.",
    )
