"""Rows for the jobs tests: a ready LeNet-5 version, the ready digits dataset, a small recipe.

Catalog rows are made ready directly (inspection is the catalog's own test subject) so these
tests exercise jobs, not uploads.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.storage import default_storage

from webapp.accounts.models import Organization, User
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus, ModelAsset, ModelVersion

_seq = itertools.count(1)

# Two quick stages on digits: one epoch of fine-tuning, then int8 quantization; latency runs
# kept tiny so a whole run takes seconds on two CPU cores.
TWO_STAGE_RECIPE: dict[str, Any] = {
    "name": "finetune-then-int8",
    "seed": 0,
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1},
    "stages": [
        {"method": "finetune", "config": {"epochs": 1, "batch_size": 128}},
        {"method": "ptq_int8", "config": {"calibration_samples": 16}},
    ],
}


def two_stage_recipe(**overrides: Any) -> dict[str, Any]:
    recipe = {**TWO_STAGE_RECIPE, "stages": [dict(s) for s in TWO_STAGE_RECIPE["stages"]]}
    recipe.update(overrides)
    return recipe


def make_model_version(
    organization: Organization,
    *,
    user: User | None = None,
    corrupt: bool = False,
    name: str | None = None,
) -> ModelVersion:
    """A ready LeNet-5 (1 channel, 10 classes, 32x32) stored as safetensors.

    ``corrupt``: the stored file is garbage although the row says ready (disk rot, tampering),
    so loading it in the runner fails.
    """
    from compression import zoo
    from compression.model_io import save_model_safetensors

    asset = ModelAsset.objects.create(
        organization=organization, name=name or f"lenet-{next(_seq)}", created_by=user
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lenet5.safetensors"
        if corrupt:
            path.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
        else:
            save_model_safetensors(zoo.create_model("lenet5", num_classes=10, in_channels=1), path)
        with path.open("rb") as fh:
            stored = default_storage.save(
                f"test-models/{organization.pk}/lenet5.safetensors", File(fh)
            )
        size = path.stat().st_size
    return ModelVersion.objects.create(
        organization=organization,
        asset=asset,
        number=1,
        file=stored,
        format="torch",
        arch="lenet5",
        num_classes=10,
        in_channels=1,
        input_size=32,
        size_bytes=size,
        status=ItemStatus.READY,
        info={"params": 61706},
        created_by=user,
    )


def make_digits(organization: Organization) -> Dataset:
    return Dataset.objects.create(
        organization=organization,
        name=f"digits-{next(_seq)}",
        kind=DatasetKind.DIGITS,
        num_classes=10,
        status=ItemStatus.READY,
        report={"input_shape": [1, 32, 32]},
    )
