"""Datasets own a fixed train/val/test split; mnist is built in; a model version's declared
preprocessing is checked on upload and applied when a job loads its data."""

from __future__ import annotations

import zipfile

import pytest
import torch
from catalog_files import _entry, _png_bytes, image_folder_zip, split_folder_zip
from django.urls import reverse
from jobs_factories import lenet5_file

from webapp.catalog import loaders, services
from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus, ModelVersion

pytestmark = pytest.mark.django_db


def _ready_zip(org, user, path, **kw) -> Dataset:  # type: ignore[no-untyped-def]
    dataset = services.dataset_upload_create(organization=org, user=user, path=path, **kw)
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.READY, dataset.error
    return dataset


def test_the_stored_split_is_the_one_every_load_makes_and_the_seed_moves_it(
    org_a, user_a, tmp_path
):
    zip_path = tmp_path / "shades.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:  # every image a different shade: splits differ
        for ci, name in enumerate(("cat", "dog")):
            for i in range(10):
                zf.writestr(_entry(f"{name}/{i}.png"), _png_bytes((100 * ci, 20 * i, 50)))
    seeded = _ready_zip(org_a, user_a, zip_path, split_seed=5)
    assert seeded.split_seed == 5 and seeded.report["split_seed"] == 5

    first = loaders.dataset_load(seeded, work_dir=tmp_path / "a")
    again = loaders.dataset_load(seeded, work_dir=tmp_path / "b")

    assert len(first.test) == seeded.report["totals"]["test"]
    assert torch.equal(first.test.images, again.test.images)
    assert first.fingerprint() == again.fingerprint()
    other = _ready_zip(org_a, user_a, zip_path, split_seed=0)
    moved = loaders.dataset_load(other, work_dir=tmp_path / "c")
    assert moved.fingerprint() != first.fingerprint()  # the seed is the dataset's, and it counts


def test_a_zips_test_folder_is_kept_as_the_test_split(org_a, user_a, tmp_path):
    dataset = _ready_zip(org_a, user_a, split_folder_zip(tmp_path / "s.zip", train=8, test=3))

    report = dataset.report
    assert (
        report["totals"]["test"] == 6 and report["totals"]["train"] + report["totals"]["val"] == 16
    )
    assert report["split_sources"] == {"train": "folder", "val": "carved", "test": "folder"}
    bundle = loaders.dataset_load(dataset, work_dir=tmp_path / "job")
    assert len(bundle.test) == 6


def test_the_dataset_page_and_api_show_the_splits_their_sources_and_the_seed(
    org_a, user_a, client_a, tmp_path
):
    dataset = _ready_zip(org_a, user_a, split_folder_zip(tmp_path / "s.zip"), split_seed=3)

    html = client_a.get(reverse("catalog:dataset_detail", args=[dataset.pk])).content.decode()
    assert 'data-split-source="folder"' in html and 'data-split-source="carved"' in html
    assert "scored on test" in html and "<dd data-split-seed>3</dd>" in html
    data = client_a.get(reverse("api:catalog-dataset-detail", args=[dataset.pk])).json()
    assert data["split_seed"] == 3
    assert data["splits"]["test"] == {"count": 6, "source": "folder"}


def test_builtin_mnist_validates_with_its_fixed_split_and_loads_for_lenet5(org_a, tmp_path):
    services.builtin_samples_ensure(organization=org_a)
    mnist = Dataset.objects.get(organization=org_a, builtin_key="mnist")
    assert mnist.kind == DatasetKind.MNIST

    services.dataset_validate(dataset=mnist)

    mnist.refresh_from_db()
    assert mnist.status == ItemStatus.READY, mnist.error
    assert mnist.report["totals"] == {"train": 3500, "val": 500, "test": 1000}
    assert mnist.report["input_shape"] == [1, 28, 28]
    assert set(mnist.report["split_sources"].values()) == {"fixed"}
    assert sum(len(v) for v in mnist.thumbnails.values()) == 40
    bundle = loaders.dataset_load(mnist, work_dir=tmp_path, size=32, channels=1)
    assert bundle.input_shape == (1, 32, 32) and len(bundle.test) == 1000
    with pytest.raises(Exception, match="1-channel"):
        loaders.dataset_load(mnist, work_dir=tmp_path, channels=3)


def test_imagenet_normalization_on_a_one_channel_model_is_refused_beside_the_field(
    org_a, user_a, client_a, tmp_path
):
    weights = lenet5_file(tmp_path / "lenet.safetensors", num_classes=10, in_channels=1)
    with pytest.raises(CatalogInputError, match="3-channel") as info:
        services.model_upload_create(
            organization=org_a,
            user=user_a,
            path=weights,
            arch="lenet5",
            in_channels=1,
            normalization="imagenet",
        )
    assert info.value.field == "normalization"

    with weights.open("rb") as fh:
        page = client_a.post(
            reverse("models"),
            {"file": fh, "arch": "lenet5", "in_channels": 1, "normalization": "imagenet"},
        )
    assert page.status_code == 400
    assert page.context["form"].errors["normalization"][0].startswith("ImageNet normalization")
    assert not ModelVersion.objects.filter(organization=org_a).exclude(is_builtin=True).exists()


def test_a_declared_normalization_is_recorded_and_applied_when_a_job_loads_its_data(
    org_a, user_a, tmp_path
):
    weights = lenet5_file(tmp_path / "lenet.safetensors", num_classes=2, in_channels=3)
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=weights, arch="lenet5", normalization="imagenet"
    )
    services.model_version_inspect(version=version)
    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.preprocessing["normalization"] == "imagenet"
    assert version.preprocessing["mean"] == [0.485, 0.456, 0.406]
    dataset = _ready_zip(org_a, user_a, image_folder_zip(tmp_path / "pets.zip"))

    data = loaders.bundle_for_model_version(dataset, version, work_dir=tmp_path / "job")

    assert data.normalization == "imagenet" and data.mean == (0.485, 0.456, 0.406)
    raw = data.test.images[:1].to(torch.float32) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(data.test[0][0], ((raw - mean) / std)[0], atol=1e-6)
    plain = loaders.dataset_load(dataset, work_dir=tmp_path / "plain", size=32, channels=3)
    assert plain.normalization == "dataset" and plain.mean != data.mean
