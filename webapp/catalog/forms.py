"""Upload forms for browsers without JavaScript (small files in one request); the drag-and-drop
zone sends the same fields through the chunked upload API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def _zoo_arch_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    groups = [("Object detection", "detection"), ("Classification", "classification")]
    return [(label, [(n, n) for n in list_models(task=task)]) for label, task in groups]


class ZooModelForm(forms.Form):
    """A new, untrained model from the zoo (``services.zoo_model_create``)."""

    arch = forms.ChoiceField(
        choices=_zoo_arch_choices,
        label="Architecture",
        help_text="Detectors (YOLOv3-tiny, YOLOv3, SSDlite, Faster R-CNN) or classifiers.",
    )
    dataset = forms.TypedChoiceField(
        coerce=int,
        required=False,
        empty_value=None,
        label="Data set",
        help_text="Its classes size the model's output; it must be of the architecture's task.",
    )
    num_classes = forms.IntegerField(
        min_value=1,
        max_value=1000,
        required=False,
        help_text="Only without a data set (it must match the data set's otherwise).",
    )
    width = forms.FloatField(
        required=False,
        help_text="Detectors: channel multiplier (YOLO default 0.25; smaller trains faster).",
    )
    input_size = forms.IntegerField(
        min_value=8,
        max_value=1024,
        required=False,
        help_text="Square input side in pixels (detectors: a multiple of 32; default 96).",
    )
    in_channels = forms.IntegerField(
        min_value=1,
        max_value=4,
        required=False,
        help_text="Classifiers only: 1 for the built-in digit sets (the default for them), else 3.",
    )
    name = forms.CharField(
        max_length=200,
        required=False,
        validators=[validate_name],
        help_text='Model name; default "<architecture> (untrained)".',
    )

    def __init__(self, *args: Any, datasets: Sequence[tuple[int, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["dataset"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [("", "— none: give the number of classes —"), *datasets]
