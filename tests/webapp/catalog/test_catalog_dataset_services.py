"""Dataset uploads: validated in a child process, reported with counts and thumbnails, and
hostile archives refused with nothing extracted and the archive deleted."""

from __future__ import annotations

import pytest
from catalog_files import image_folder_zip, media_files, zip_bomb, zip_slip, zip_symlink

from webapp.catalog import loaders, services
from webapp.catalog.errors import WrongFileType
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus

pytestmark = pytest.mark.django_db


def _upload(org, user, path, **kw) -> Dataset:  # type: ignore[no-untyped-def]
    return services.dataset_upload_create(organization=org, user=user, path=path, **kw)


def test_an_image_folder_zip_is_reported_with_counts_sizes_corrupt_files_and_thumbnails(
    org_a, user_a, tmp_path
):
    dataset = _upload(org_a, user_a, image_folder_zip(tmp_path / "pets.zip", corrupt=1))
    assert dataset.status == ItemStatus.PENDING and dataset.kind == DatasetKind.IMAGE_ZIP

    services.dataset_validate(dataset=dataset)

    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.READY, dataset.error
    report = dataset.report
    assert report["classes"] == ["cat", "dog"] and dataset.num_classes == 2
    totals = report["totals"]
    assert totals["train"] + totals["val"] + totals["test"] == 12
    assert totals["test"] >= 2 and totals["val"] >= 2  # stratified: each class in each split
    assert report["split_seed"] == 0 and dataset.split_seed == 0
    assert report["split_sources"] == {"train": "carved", "val": "carved", "test": "carved"}
    assert report["min_size"] == [16, 16] and report["max_size"] == [21, 21]
    assert [c["path"] for c in report["corrupt"]] == ["cat/broken0.png"]
    thumbs = dataset.thumbnails
    assert set(thumbs) == {"cat", "dog"} and all(len(v) == 4 for v in thumbs.values())
    assert all(
        n.startswith(f"catalog/{org_a.pk}/thumbs/{dataset.pk}/") for v in thumbs.values() for n in v
    )


def test_validation_leaves_no_extracted_files_behind(org_a, user_a, tmp_path, settings):
    dataset = _upload(org_a, user_a, image_folder_zip(tmp_path / "pets.zip"))

    services.dataset_validate(dataset=dataset)

    work = tmp_path / "data" / "work"
    assert not work.exists() or list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [(zip_slip, "outside the archive"), (zip_symlink, "symbolic link"), (zip_bomb, "zip bomb")],
)
def test_a_hostile_zip_ends_invalid_with_nothing_extracted_and_the_archive_deleted(
    org_a, user_a, tmp_path, make, reason
):
    dataset = _upload(org_a, user_a, make(tmp_path / "evil.zip"))

    services.dataset_validate(dataset=dataset)

    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.INVALID and reason in dataset.error
    assert media_files(tmp_path) == [] and not dataset.file
    assert (
        not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()
    )
    work = tmp_path / "data" / "work"
    assert not work.exists() or list(work.iterdir()) == []


def test_a_zip_without_two_classes_ends_invalid_saying_how_to_lay_it_out(org_a, user_a, tmp_path):
    dataset = _upload(
        org_a, user_a, image_folder_zip(tmp_path / "one.zip", classes=("only",), per_class=3)
    )

    services.dataset_validate(dataset=dataset)

    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.INVALID and "at least 2 class folders" in dataset.error


@pytest.mark.parametrize("name", ["data.tar.gz", "data.txt", "data.exe"])
def test_a_dataset_that_is_not_a_zip_is_refused_before_it_is_stored(org_a, user_a, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x1f\x8b not a zip")

    with pytest.raises(WrongFileType):
        _upload(org_a, user_a, path)

    assert media_files(tmp_path) == [] and not Dataset.objects.exists()


def test_a_text_file_named_zip_is_refused_by_its_first_bytes(org_a, user_a, tmp_path):
    path = tmp_path / "data.zip"
    path.write_text("hello, I am not an archive")
    with pytest.raises(WrongFileType, match="not a zip archive"):
        _upload(org_a, user_a, path)


def test_a_ready_zip_dataset_loads_for_the_jobs_runner_at_the_models_shape(org_a, user_a, tmp_path):
    dataset = _upload(org_a, user_a, image_folder_zip(tmp_path / "pets.zip"))
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()

    bundle = loaders.dataset_load(dataset, work_dir=tmp_path / "job", size=28, channels=1)

    assert bundle.classes == ["cat", "dog"] and bundle.input_shape == (1, 28, 28)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 12
    assert len(bundle.test) == dataset.report["totals"]["test"]
    assert not any((tmp_path / "job").rglob("*.png"))  # extracted images were removed


def test_the_builtin_digits_are_validated_and_load(org_a, tmp_path):
    services.builtin_samples_ensure(organization=org_a)
    digits = Dataset.objects.get(organization=org_a, builtin_key="digits")

    services.dataset_validate(dataset=digits)

    digits.refresh_from_db()
    assert digits.status == ItemStatus.READY and digits.num_classes == 10
    totals = digits.report["totals"]
    assert totals["train"] + totals["val"] + totals["test"] == 1797 and totals["test"] > 300
    assert digits.report["split_sources"]["test"] == "fixed"
    bundle = loaders.dataset_load(digits, work_dir=tmp_path)
    assert bundle.input_shape == (1, 32, 32)


def test_a_pending_dataset_does_not_load(org_a, user_a, tmp_path):
    from compression.errors import DatasetError

    dataset = _upload(org_a, user_a, image_folder_zip(tmp_path / "pets.zip"))
    with pytest.raises(DatasetError, match="pending"):
        loaders.dataset_load(dataset, work_dir=tmp_path)
