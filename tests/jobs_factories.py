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


def lenet5_file(path: Path, *, num_classes: int = 2, in_channels: int = 3) -> Path:
    """A LeNet-5 safetensors file to upload (2 classes, RGB: fits :func:`image_zip`)."""
    from compression import zoo
    from compression.model_io import save_model_safetensors

    save_model_safetensors(
        zoo.create_model("lenet5", num_classes=num_classes, in_channels=in_channels), path
    )
    return path


def image_zip(
    path: Path, *, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 12
) -> Path:
    """A ``<class>/*.png`` zip of tiny coloured images that a LeNet can tell apart."""
    import io
    import stat
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for ci, name in enumerate(classes):
            for i in range(per_class):
                base = np.array([200 * ci + 20, 100, 220 - 200 * ci], dtype=np.int16)
                img = np.clip(base + rng.integers(-20, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                info = zipfile.ZipInfo(f"{name}/{i}.png", date_time=(2024, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, buf.getvalue())
    return path
