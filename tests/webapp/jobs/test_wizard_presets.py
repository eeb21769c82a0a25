"""Goal presets are built from the model's facts, and every one passes the recipe check on every
built-in model (trained or still untrained), an uploaded LeNet-5 and an ONNX version."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from jobs_factories import make_digits, make_model_version

from compression.inspection import inspect_module, inspect_onnx
from compression.onnx_export import export_onnx
from compression.zoo import create_model
from webapp.catalog import services as catalog_services
from webapp.catalog.models import ItemStatus, ModelAsset, ModelVersion
from webapp.jobs.presets import (
    PRESETS,
    build_preset,
    device_is_arm,
    model_profile_for_version,
    presets_for_model,
)
from webapp.jobs.recipes import recipe_check

pytestmark = pytest.mark.django_db

GOALS = [key for key in PRESETS if key != "custom"]


def _builtin_versions(org: Any, *, trained: bool) -> list[ModelVersion]:
    """The organisation's built-in samples, made ready with their real inspection (the sandbox
    build is the catalog's own test subject), trained or untrained."""
    catalog_services.builtin_samples_ensure(organization=org)
    versions = list(ModelVersion.objects.filter(organization=org, is_builtin=True))
    assert {v.arch for v in versions} == {"lenet5", "resnet20", "vgg11_bn"}
    for v in versions:
        module = create_model(v.arch, num_classes=10, in_channels=1)
        v.info = inspect_module(module, (1, 32, 32), num_classes=10, arch=v.arch).to_dict()
        if trained:
            v.info["trained"] = {"dataset": "mnist", "epochs": 1, "test_accuracy": 90.0}
        v.status = ItemStatus.READY
        v.save()
    return versions


def _onnx_version(org: Any) -> ModelVersion:
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            create_model("lenet5", num_classes=10, in_channels=1), (1, 32, 32), Path(tmp) / "m.onnx"
        )
        info = inspect_onnx(path).to_dict()
    asset = ModelAsset.objects.create(organization=org, name="lenet-onnx")
    return ModelVersion.objects.create(
        organization=org, asset=asset, number=1, format="onnx", num_classes=10, in_channels=1,
        input_size=32, status=ItemStatus.READY, info=info,
    )  # fmt: skip


def _recipe(stages: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    recipe: dict[str, Any] = {"stages": stages}
    if reference != "baseline":
        recipe["targets"] = {"reference": reference}
    return recipe


@pytest.mark.parametrize("trained", [True, False])
def test_every_preset_passes_the_recipe_check_on_every_model(org_a, trained):
    org, _ = org_a
    dataset = make_digits(org)
    versions = [
        *_builtin_versions(org, trained=trained),
        make_model_version(org),
        _onnx_version(org),
    ]
    checked = 0
    for version in versions:
        profile = model_profile_for_version(version)
        for key in GOALS:
            for arm in (False, True):
                built = build_preset(key, profile, arm=arm)
                if version.format == "onnx" and key == "balanced":
                    assert built.unavailable and not built.stages
                    continue
                assert not built.unavailable, (version, key)
                recipe_check(
                    _recipe(built.stages, built.reference), model_version=version, dataset=dataset
                )
                checked += 1
    assert checked == (4 * 3 + 2) * 2


def test_importance_follows_batchnorm_and_untrained_weights_are_trained_first(org_a):
    org, _ = org_a
    by_arch = {v.arch: v for v in _builtin_versions(org, trained=False)}
    lenet = build_preset("smallest", model_profile_for_version(by_arch["lenet5"]))
    vgg = build_preset("smallest", model_profile_for_version(by_arch["vgg11_bn"]))
    assert lenet.methods == vgg.methods == ["finetune", "channel_pruning", "finetune", "ptq_int8"]
    assert lenet.stages[1]["config"]["importance"] == "l2"
    assert vgg.stages[1]["config"]["importance"] == "bn_scale"
    assert lenet.reference == vgg.reference == "stage:0"

    uploaded = build_preset("balanced", model_profile_for_version(make_model_version(org)))
    assert uploaded.methods == ["channel_pruning", "finetune"]  # trained: no training stage
    assert uploaded.reference == "baseline"


def test_an_onnx_version_is_offered_int8_quantization_only(org_a):
    org, _ = org_a
    offered = {p.key: p for p in presets_for_model(model_profile_for_version(_onnx_version(org)))}
    assert offered["smallest"].methods == offered["fastest"].methods == ["ptq_int8"]
    assert "ONNX" in offered["balanced"].unavailable


def test_fastest_tunes_int8_for_an_arm_device():
    assert device_is_arm("kitchen-pi", "Raspberry Pi 4, 4 GB")
    assert device_is_arm("board", "", "aarch64")
    assert not device_is_arm("build-box", "Intel Xeon x86_64")
