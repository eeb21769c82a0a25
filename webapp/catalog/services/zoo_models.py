"""A new, untrained model from the zoo: an architecture (detectors included) with its options,
sized for a chosen data set, stored as a :mod:`compression.checkpoint` (safetensors weights and
a JSON sidecar; never pickle) so a job can train it with a ``finetune`` stage first.

The weights come from EdgeSlim's own code (``compression.zoo``), not from a user's file, so the
version is built and described here and is ready at once: no sandboxed inspection is needed.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from webapp.accounts.models import Organization, User
from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import (
    Dataset,
    DatasetKind,
    DatasetTask,
    ItemStatus,
    ModelFormat,
    ModelVersion,
)
from webapp.catalog.services.common import (
    _hash_and_size,
    _source_chunks,
    _store,
    catalog_event_send,
    storage_delete_quietly,
    storage_name_for,
)
from webapp.catalog.services.versions import _asset_for_update, _next_number

# What the form and the API accept for each zoo option (compression.zoo checks the rest: a
# width rounds channels to multiples of 8, a detector's input size is a multiple of 32).
OPTION_LIMITS: dict[str, tuple[float, float]] = {
    "width": (0.0625, 2.0),
    "input_size": (32, 640),
}
# A classifier's square input side when it is not given: the architecture's own.
CLASSIFIER_SIZE_LIMITS = (8, 1024)
MAX_CLASSES = 1000
# Data sets whose images are 1-channel (a classifier made for them takes 1 channel).
ONE_CHANNEL_KINDS = frozenset({DatasetKind.DIGITS, DatasetKind.MNIST})


def zoo_architectures(task: str | None = None) -> list[dict[str, Any]]:
    """The zoo's architectures as the form and the API list them: name, task, options and
    their defaults (what ``create_model`` uses when an option is left out)."""
    import inspect

    from compression import zoo

    out: list[dict[str, Any]] = []
    for name in zoo.list_models(task=task):
        options = zoo.model_options(name)
        factory = zoo._MODELS[name]
        params = inspect.signature(factory).parameters
        defaults = {
            opt: params[opt].default
            for opt in options
            if opt in params and params[opt].default is not inspect.Parameter.empty
        }
        out.append(
            {
                "arch": name,
                "task": zoo.model_task(name),
                "options": list(options),
                "defaults": defaults,
                "input_size": zoo.default_input_size(name),
            }
        )
    return out


def _check_arch(arch: Any) -> str:
    from compression import zoo

    name = str(arch or "").strip()
    if not name:
        raise CatalogInputError(
            "Pick an architecture: " + ", ".join(zoo.list_models()) + ".", field="arch"
        )
    if not zoo.has_model(name):
        raise CatalogInputError(
            f"Unknown architecture {name!r}; known: {', '.join(zoo.list_models())}.", field="arch"
        )
    return name


def _check_options(arch: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The options ``arch`` takes, as numbers, each within :data:`OPTION_LIMITS`."""
    from compression import zoo

    allowed = zoo.model_options(arch)
    clean: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value in (None, ""):
            continue  # left blank: the architecture's default
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise CatalogInputError(
                f"{key!r} is not an option of {arch!r} (its options: {known}).", field=key
            )
        lo, hi = OPTION_LIMITS.get(key, (-math.inf, math.inf))
        try:
            number = float(value) if key == "width" else int(str(value).strip())
        except (TypeError, ValueError):
            raise CatalogInputError(f"{key} must be a number, not {value!r}.", field=key) from None
        if isinstance(value, bool) or not math.isfinite(number) or not lo <= number <= hi:
            raise CatalogInputError(f"{key} must be between {lo:g} and {hi:g}.", field=key)
        clean[key] = number
    return clean


def _classes_from(
    *, arch_task: str, dataset: Dataset | None, num_classes: Any
) -> tuple[int, str | None]:
    """The class count (the data set's when one is chosen) and the data set's kind."""
    if dataset is not None:
        dataset_task = dataset.task or DatasetTask.CLASSIFICATION
        if dataset_task != arch_task:
            raise CatalogInputError(
                f"the architecture is a {arch_task} model but {dataset.name!r} is a "
                f"{dataset_task} data set; pick a data set of the same task",
                field="dataset",
            )
        if dataset.status != ItemStatus.READY:
            raise CatalogInputError(
                f"the data set {dataset.name!r} is {dataset.status}, not ready; its classes are "
                "known once it is validated",
                field="dataset",
            )
        classes = dataset.num_classes or len((dataset.report or {}).get("classes") or [])
        if not classes:
            raise CatalogInputError(
                f"the data set {dataset.name!r} names no classes", field="dataset"
            )
        if num_classes not in (None, "") and int(num_classes) != int(classes):
            raise CatalogInputError(
                f"num_classes {num_classes} does not match the {classes} classes of "
                f"{dataset.name!r}; leave it blank to take the data set's",
                field="num_classes",
            )
        return int(classes), str(dataset.kind)
    if num_classes in (None, ""):
        raise CatalogInputError(
            "Choose a data set (its classes size the model's output) or give num_classes.",
            field="dataset",
        )
    try:
        classes = int(num_classes)
    except (TypeError, ValueError):
        raise CatalogInputError(
            f"num_classes must be a whole number, not {num_classes!r}.", field="num_classes"
        ) from None
    if isinstance(num_classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise CatalogInputError(
            f"num_classes must be between 1 and {MAX_CLASSES}.", field="num_classes"
        )
    return classes, None


def zoo_model_create(
    *,
    organization: Organization,
    user: User | None,
    arch: Any,
    dataset: Dataset | None = None,
    num_classes: Any = None,
    in_channels: Any = None,
    input_size: Any = None,
    options: dict[str, Any] | None = None,
    name: str = "",
    description: str = "",
    seed: int = 0,
) -> ModelVersion:
    """A new untrained version of zoo architecture ``arch``, ready at once.

    The class count comes from ``dataset`` (which must be of the architecture's task, ready, and
    of ``organization``) or from ``num_classes``. ``options`` are the architecture's own
    (detectors: ``width``, ``input_size``); a classifier takes ``input_size`` and
    ``in_channels`` as version fields (1 for the built-in digit sets, else 3 by default).
    Detectors take 3-channel images. The weights are the zoo's initialisation under ``seed``.

    Raises:
        CatalogInputError: an unknown architecture, an option it does not take or out of
            range, a data set of the other task, or a class count that does not fit; the
            ``field`` names the input.
    """
    import torch

    from compression import inspection, zoo
    from compression.checkpoint import save_checkpoint
    from compression.errors import ConfigError
    from compression.stage import ArchSpec, ModelState

    arch = _check_arch(arch)
    task = zoo.model_task(arch)
    if dataset is not None and dataset.organization_id != organization.pk:
        raise CatalogInputError("The data set belongs to another organisation.", field="dataset")
    clean = _check_options(arch, options)
    classes, kind = _classes_from(arch_task=task, dataset=dataset, num_classes=num_classes)
    if task == "detection":
        if in_channels not in (None, "", 3, "3"):
            raise CatalogInputError(
                f"{arch!r} is a detector; detectors take 3-channel (RGB) images.",
                field="in_channels",
            )
        channels = 3
        if input_size not in (None, ""):
            clean.setdefault("input_size", int(input_size))
        side = int(clean.get("input_size") or zoo.default_input_size(arch))
    else:
        default_channels = 1 if kind in ONE_CHANNEL_KINDS else 3
        try:
            channels = int(in_channels) if in_channels not in (None, "") else default_channels
            side = int(input_size) if input_size not in (None, "") else zoo.default_input_size(arch)
        except (TypeError, ValueError):
            raise CatalogInputError("Sizes must be whole numbers.", field="input_size") from None
        if channels not in (1, 3, 4):
            raise CatalogInputError("in_channels must be 1, 3 or 4.", field="in_channels")
        if kind in ONE_CHANNEL_KINDS and channels != 1:
            raise CatalogInputError(
                f"{dataset.name if dataset else kind!r} holds 1-channel images; make the model "
                "with 1 input channel",
                field="in_channels",
            )
        lo, hi = CLASSIFIER_SIZE_LIMITS
        if not lo <= side <= hi:
            raise CatalogInputError(
                f"input_size must be between {lo} and {hi} pixels.", field="input_size"
            )
    torch.manual_seed(int(seed))
    try:
        module = zoo.create_model(arch, num_classes=classes, in_channels=channels, **clean)
        module.eval()
        shape = (channels, side, side)
        info = inspection.inspect_module(module, shape, num_classes=classes, arch=arch).to_dict()
    except ConfigError as exc:
        raise CatalogInputError(f"{arch}: {exc.field} {exc.message}", field=exc.field) from None
    except (RuntimeError, ValueError) as exc:
        raise CatalogInputError(
            f"{arch} does not build at input {side}x{side}: {exc}", field="input_size"
        ) from None
    state = ModelState(
        input_shape=shape,
        num_classes=classes,
        task="detection" if task == "detection" else "classification",
        module=module,
        arch=ArchSpec(arch, classes, channels, options=tuple(sorted(clean.items()))),
    )
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        weights = save_checkpoint(state, Path(tmp) / "model")
        sidecar = json.loads(weights.with_suffix(".json").read_text())
        sha256, size = _hash_and_size(_source_chunks(None, weights))
        stored = _store(
            uploaded_file=None,
            path=weights,
            storage_name=storage_name_for(organization, "models", ".safetensors"),
        )
    asset_name = (name or "").strip()[:200] or f"{arch} (untrained)"
    info["checkpoint"] = sidecar
    info["zoo"] = {
        "arch": arch,
        "options": clean,
        "untrained": True,
        "seed": int(seed),
        "dataset_id": dataset.pk if dataset is not None else None,
    }
    try:
        with transaction.atomic():
            asset = _asset_for_update(
                organization=organization, name=asset_name, user=user, description=description
            )
            version = ModelVersion.objects.create(
                organization=organization,
                asset=asset,
                number=_next_number(asset),
                file=stored,
                format=ModelFormat.TORCH,
                source_filename=f"{arch}.safetensors",
                arch=arch,
                num_classes=classes,
                in_channels=channels,
                input_size=side,
                task=task,
                size_bytes=size,
                sha256=sha256,
                info=info,
                status=ItemStatus.READY,
                inspected_at=timezone.now(),
                created_by=user,
            )
            org_id, pk = organization.pk, version.pk
            transaction.on_commit(
                lambda: catalog_event_send(
                    organization_id=org_id, item="model_version", pk=pk, status="ready"
                )
            )
    except BaseException:
        storage_delete_quietly(stored)
        raise
    return version
