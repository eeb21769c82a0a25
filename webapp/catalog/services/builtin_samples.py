"""The built-in samples every organisation starts with: zoo models trained on the built-in
MNIST, and the built-in data sets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from webapp.accounts.models import Organization
from webapp.catalog.models import (
    Dataset,
    DatasetKind,
    DatasetTask,
    ItemStatus,
    ModelFormat,
    ModelVersion,
)
from webapp.catalog.services.common import (
    DATASET_VALIDATE_TASK,
    MODEL_VERSION_INSPECT_TASK,
    _enqueue,
)
from webapp.catalog.services.versions import _asset_for_update, _next_number

# The built-in samples every organisation starts with: zoo architectures sized for digits.
BUILTIN_DATASET_KEY = "digits"
# key -> (name, kind) of every built-in dataset; ``mnist`` holds 5,000 real MNIST digits.
BUILTIN_DATASETS: dict[str, tuple[str, str]] = {
    "digits": ("Digits (built-in)", DatasetKind.DIGITS),
    "mnist": ("MNIST 5k (built-in)", DatasetKind.MNIST),
    # Object detection: MNIST digits pasted onto crops of two photographs (docs/detection.md).
    "mnist_scenes": ("MNIST scenes, detection (built-in)", DatasetKind.MNIST_SCENES),
}
DETECTION_DATASET_KINDS = frozenset({DatasetKind.MNIST_SCENES})
# The data set the built-in models are trained on at first start (in the catalog worker), at
# each model's own input size (32x32), and the epochs each gets there (about 20 s, 3 min and
# 5 min on one CPU core; ``EDGESLIM_BUILTIN_TRAIN_EPOCHS`` overrides them, tests lower it).
BUILTIN_TRAIN_DATASET = "mnist"
BUILTIN_MODELS: tuple[dict[str, Any], ...] = (
    {
        "key": "zoo:lenet5",
        "name": "LeNet-5 (built-in)",
        "arch": "lenet5",
        "description": "LeNet-5 trained on the built-in MNIST at 32x32: a quick start.",
        "train_epochs": 5,
    },
    {
        "key": "zoo:resnet20",
        "name": "ResNet-20 (built-in)",
        "arch": "resnet20",
        "description": "ResNet-20 for 1-channel 32x32 digits, trained on the built-in MNIST.",
        "train_epochs": 3,
    },
    {
        "key": "zoo:vgg11_bn",
        "name": "VGG-11-BN (built-in)",
        "arch": "vgg11_bn",
        "description": "VGG-11 with BatchNorm for 1-channel 32x32 digits, trained on the built-in "
        "MNIST: a large model that channel pruning shrinks well.",
        "train_epochs": 2,
        # AdamW at 3e-3 left it at 55% test accuracy after 2 epochs (docs/first-hour.md's run);
        # SGD with momentum at 0.05 reaches about 97% in the same 2 epochs (the compression
        # benchmark trains it so).
        "train_optimizer": "sgd",
        "train_lr": 0.05,
    },
)


def builtin_train_epochs(spec: dict[str, Any]) -> int:
    """Epochs a built-in sample is trained for: the setting when set, else the model's own."""
    override = int(getattr(settings, "EDGESLIM_BUILTIN_TRAIN_EPOCHS", 0) or 0)
    return override or int(spec.get("train_epochs") or 0)


def builtin_samples_ensure(*, organization: Organization) -> None:
    """Give ``organization`` the built-in datasets (digits, mnist, mnist_scenes) and the zoo samples
    (idempotent, cheap when done), and re-validate its datasets whose stored report predates
    the train/val/test split.

    Rows are created pending; the catalog worker builds the weights (each model trained on the
    built-in MNIST, :data:`BUILTIN_TRAIN_DATASET`) and inspects them, like any upload.
    """
    datasets_revalidate_stale(organization=organization)
    keys = [m["key"] for m in BUILTIN_MODELS]
    have_models = ModelVersion.objects.filter(
        organization=organization, builtin_key__in=keys
    ).count()
    have_datasets = set(
        Dataset.objects.filter(
            organization=organization, builtin_key__in=list(BUILTIN_DATASETS)
        ).values_list("builtin_key", flat=True)
    )
    if len(have_datasets) == len(BUILTIN_DATASETS) and have_models == len(keys):
        return
    from compression import zoo

    with transaction.atomic():
        for key, (name, kind) in BUILTIN_DATASETS.items():
            if key in have_datasets:
                continue
            try:
                with transaction.atomic():
                    dataset = Dataset.objects.create(
                        organization=organization,
                        name=name,
                        kind=kind,
                        task=DatasetTask.DETECTION
                        if kind in DETECTION_DATASET_KINDS
                        else DatasetTask.CLASSIFICATION,
                        status=ItemStatus.PENDING,
                        is_builtin=True,
                        builtin_key=key,
                    )
                    _enqueue(DATASET_VALIDATE_TASK, dataset.pk)
            except IntegrityError:
                pass  # another request made it first
        for spec in BUILTIN_MODELS:
            if ModelVersion.objects.filter(
                organization=organization, builtin_key=spec["key"]
            ).exists():
                continue
            try:
                with transaction.atomic():
                    asset = _asset_for_update(
                        organization=organization,
                        name=spec["name"],
                        user=None,
                        description=spec["description"],
                    )
                    if not asset.is_builtin:
                        asset.is_builtin = True
                        asset.save(update_fields=["is_builtin"])
                    version = ModelVersion.objects.create(
                        organization=organization,
                        asset=asset,
                        number=_next_number(asset),
                        format=ModelFormat.TORCH,
                        source_filename=f"{spec['arch']}.safetensors",
                        arch=spec["arch"],
                        num_classes=10,
                        in_channels=1,
                        input_size=zoo.default_input_size(spec["arch"]),
                        status=ItemStatus.PENDING,
                        is_builtin=True,
                        builtin_key=spec["key"],
                        info={
                            "train_epochs": builtin_train_epochs(spec),
                            "pending_message": f"training on the built-in "
                            f"{BUILTIN_TRAIN_DATASET} ({builtin_train_epochs(spec)} epochs) in "
                            "the background; ready in a few minutes",
                        },
                    )
                    _enqueue(MODEL_VERSION_INSPECT_TASK, version.pk)
            except IntegrityError:
                continue


def datasets_revalidate_stale(*, organization: Organization | None = None) -> int:
    """Send ready datasets whose report has no test count (validated before datasets owned a
    train/val/test split) back to pending and enqueue their validation. Returns how many.

    Their split seed is the field's (0 for migrated rows), so the new report describes exactly
    the split every later load makes. Called on the catalog pages and by the
    ``catalog_revalidate_datasets`` management command.
    """
    qs = Dataset.objects.filter(status=ItemStatus.READY, report__has_key="totals").exclude(
        report__totals__has_key="test"
    )
    if organization is not None:
        qs = qs.filter(organization=organization)
    ids = list(qs.values_list("pk", flat=True)[:500])
    if not ids:
        return 0
    with transaction.atomic():
        changed = Dataset.objects.filter(pk__in=ids, status=ItemStatus.READY).update(
            status=ItemStatus.PENDING
        )
        for pk in ids:
            _enqueue(DATASET_VALIDATE_TASK, pk)
    return int(changed)


def builtin_spec(version: ModelVersion) -> dict[str, Any] | None:
    return next((m for m in BUILTIN_MODELS if m["key"] == version.builtin_key), None)
