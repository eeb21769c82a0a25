"""Every organisation starts with the digits, MNIST and a few zoo models to try first."""

from __future__ import annotations

import pytest

from webapp.catalog import services
from webapp.catalog.models import Dataset, ItemStatus, ModelVersion

pytestmark = pytest.mark.django_db


def test_builtin_samples_are_created_once_per_organisation(
    org_a, org_b, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        services.builtin_samples_ensure(organization=org_a)
        services.builtin_samples_ensure(organization=org_a)
    services.builtin_samples_ensure(organization=org_b)

    keys = set(
        ModelVersion.objects.filter(organization=org_a).values_list("builtin_key", flat=True)
    )
    assert keys == {m["key"] for m in services.BUILTIN_MODELS}
    assert Dataset.objects.filter(organization=org_a, builtin_key="digits").count() == 1
    assert (
        Dataset.objects.filter(organization=org_a, builtin_key="mnist", kind="mnist").count() == 1
    )
    assert ModelVersion.objects.filter(organization=org_b, is_builtin=True).count() == len(keys)
    assert len(callbacks) == len(keys) + 2  # one inspection per model, one validation per set


def test_the_builtin_lenet5_is_built_trained_and_inspected_on_the_worker(org_a):
    services.builtin_samples_ensure(organization=org_a)
    version = ModelVersion.objects.get(organization=org_a, builtin_key="zoo:lenet5")
    assert not version.file and version.status == ItemStatus.PENDING

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.file and version.params == 61706
    assert version.info["builtin"]["weights"] == "trained on digits"
    # Percent, like every accuracy: chance on ten digits is 10%, one epoch reaches about 86%.
    val_acc = version.info["builtin"]["val_acc"]
    assert 80.0 < val_acc <= 100.0, val_acc
