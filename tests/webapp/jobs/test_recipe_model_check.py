"""A recipe its model cannot run is refused when the job is created, never queued to fail
mid-run: BN-scale pruning on the BatchNorm-free LeNet-5, through the service and the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from jobs_factories import make_digits, make_model_version

from compression.inspection import inspect_module
from compression.zoo import create_model
from webapp.catalog.models import ItemStatus, ModelAsset, ModelVersion
from webapp.jobs.errors import JobInputError
from webapp.jobs.models import Job
from webapp.jobs.recipes import model_facts_for_version, recipe_check

pytestmark = pytest.mark.django_db

BN_SCALE = {"stages": [{"method": "channel_pruning", "config": {"importance": "bn_scale"}}]}
FIELD = "recipe.stages[0].config.importance"


def _version(org: Any, arch: str, *, stored_arch: str | None = None) -> ModelVersion:
    """A ready torch version whose info is the real inspection of ``arch`` (no file needed:
    the check reads what the catalog stored)."""
    info = inspect_module(create_model(arch, num_classes=10, in_channels=1), (1, 32, 32)).to_dict()
    asset = ModelAsset.objects.create(organization=org, name=f"{arch}-{stored_arch}")
    return ModelVersion.objects.create(
        organization=org, asset=asset, number=1, format="torch",
        arch=arch if stored_arch is None else stored_arch, num_classes=10, in_channels=1,
        input_size=32, status=ItemStatus.READY, info=info,
    )  # fmt: skip


def _post(data: dict[str, Any], headers: dict[str, str]) -> Any:
    return Client().post(
        reverse("api:jobs-list"), data=json.dumps(data), content_type="application/json",
        **headers,
    )  # fmt: skip


def test_recipe_check_refuses_bn_scale_on_lenet5_naming_l1_and_l2(org_a):
    org, _ = org_a
    with pytest.raises(JobInputError) as refused:
        recipe_check(BN_SCALE, model_version=make_model_version(org), dataset=make_digits(org))
    assert refused.value.field == FIELD
    assert "lenet5 has no BatchNorm layers" in refused.value.message
    assert "use importance l1 or l2" in refused.value.message


def test_the_stored_layer_table_alone_is_enough_to_refuse(org_a):
    org, _ = org_a
    version = _version(org, "lenet5", stored_arch="")  # an upload with no zoo name recorded
    facts = model_facts_for_version(version)
    assert facts.arch is None and facts.has_batchnorm is False
    with pytest.raises(JobInputError, match="use importance l1 or l2"):
        recipe_check(BN_SCALE, model_version=version, dataset=make_digits(org))


def test_recipe_check_passes_the_same_recipe_on_vgg11_bn(org_a):
    org, _ = org_a
    version = _version(org, "vgg11_bn")
    assert model_facts_for_version(version).has_batchnorm is True
    checked = recipe_check(BN_SCALE, model_version=version, dataset=make_digits(org))
    assert checked.data["stages"][0]["config"]["importance"] == "bn_scale"


def test_the_api_answers_400_naming_l1_and_l2_and_queues_nothing(
    org_a, token_for, django_capture_on_commit_callbacks
):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post({"model_version": mv.pk, "dataset": ds.pk, "recipe": BN_SCALE},
                         token_for(user))  # fmt: skip
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == FIELD
    assert body["detail"].startswith(f"{FIELD}: channel_pruning: importance bn_scale")
    assert "use importance l1 or l2" in body["detail"]
    assert not Job.objects.exists()
    assert callbacks == []


def test_the_api_queues_the_same_recipe_on_vgg11_bn(
    org_a, token_for, django_capture_on_commit_callbacks
):
    org, user = org_a
    mv, ds = _version(org, "vgg11_bn"), make_digits(org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post({"model_version": mv.pk, "dataset": ds.pk, "recipe": BN_SCALE},
                         token_for(user))  # fmt: skip
    assert response.status_code == 201, response.content
    assert Job.objects.get().model_version_id == mv.pk
    assert callbacks  # the job is enqueued on commit
