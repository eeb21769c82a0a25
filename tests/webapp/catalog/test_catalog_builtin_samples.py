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
    assert len(callbacks) == len(keys) + 3  # one inspection per model, one validation per set


def test_the_builtin_lenet5_is_trained_on_mnist_and_recorded_as_such(
    org_a, org_b, settings, monkeypatch
):
    # Two full epochs (about 7 s); the test settings otherwise train a few batches only.
    settings.EDGESLIM_BUILTIN_TRAIN_EPOCHS = 2
    settings.EDGESLIM_BUILTIN_TRAIN_MAX_BATCHES = 0
    # The code digest as it is now, so others' edits to compression/ meanwhile change no key.
    from webapp.catalog.services import builtin_cache

    digest = builtin_cache.code_digest()
    monkeypatch.setattr(builtin_cache, "code_digest", lambda: digest)
    services.builtin_samples_ensure(organization=org_a)
    version = ModelVersion.objects.get(organization=org_a, builtin_key="zoo:lenet5")
    assert not version.file and version.status == ItemStatus.PENDING
    assert "training on the built-in mnist (2 epochs)" in version.info["pending_message"]

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.file and version.params == 61706
    trained = version.info["trained"]
    assert (trained["dataset"], trained["epochs"]) == ("mnist", 2)
    # Percent on the 1,000 test images: chance on ten digits is 10%, two epochs reach about 94%.
    assert 85.0 < trained["test_accuracy"] <= 100.0, trained
    assert version.info["builtin"]["weights"] == "trained on mnist"
    # The record it was trained with: 32x32 grayscale, MNIST's own statistics.
    pre = version.preprocessing
    assert (pre["input_size"], pre["channels"]) == ([32, 32], 1) and pre["mean"][0] > 0.05

    # The same build for a second organisation is a copy of the first: the same weights,
    # training record and inspection, without the sandbox child training or inspecting again.
    from django.core.files.storage import default_storage

    from webapp.catalog import sandbox

    def no_child(*args: object, **kw: object) -> None:
        raise AssertionError("the cached build was made again")

    monkeypatch.setattr(sandbox, "run_child", no_child)
    services.builtin_samples_ensure(organization=org_b)
    copy = ModelVersion.objects.get(organization=org_b, builtin_key="zoo:lenet5")
    services.model_version_inspect(version=copy)
    copy.refresh_from_db()
    assert copy.status == ItemStatus.READY, copy.error
    assert copy.file.name != version.file.name and copy.file.name.startswith(f"catalog/{org_b.pk}/")
    assert copy.sha256 == version.sha256 and copy.params == version.params
    with default_storage.open(copy.file.name) as fh:
        assert len(fh.read()) == version.size_bytes
    assert copy.info == version.info and copy.preprocessing == version.preprocessing


@pytest.mark.parametrize("key", ["zoo:resnet20"])  # VGG-11-BN: the same path, 40 s slower
def test_every_builtin_is_trained_even_in_the_shortened_test_build(org_a, key):
    services.builtin_samples_ensure(organization=org_a)
    version = ModelVersion.objects.get(organization=org_a, builtin_key=key)

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.info["trained"]["epochs"] == 1  # the test settings' one short epoch
    assert 0.0 <= version.info["trained"]["test_accuracy"] <= 100.0
    assert version.preprocessing["mean"]
