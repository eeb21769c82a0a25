"""Model uploads through the services: stored under generated names, inspected in a child
process, refused with a reason when hostile, and versioned with lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from catalog_files import (
    lenet5_onnx,
    lenet5_safetensors,
    media_files,
    pickle_payload,
    pickle_payload_torch_zip,
    pickled_module,
)

from webapp.catalog import loaders, selectors, services
from webapp.catalog.errors import CatalogInputError, UploadTooLarge, WrongFileType
from webapp.catalog.models import ItemStatus, ModelVersion

pytestmark = pytest.mark.django_db


def _upload(org, user, path: Path, **kw) -> ModelVersion:  # type: ignore[no-untyped-def]
    return services.model_upload_create(organization=org, user=user, path=path, **kw)


def test_a_safetensors_upload_is_stored_under_a_generated_name_and_left_pending(
    org_a, user_a, tmp_path, django_capture_on_commit_callbacks
):
    src = lenet5_safetensors(tmp_path / "my lenet ünïcode.safetensors")
    with django_capture_on_commit_callbacks() as callbacks:
        version = _upload(org_a, user_a, src, arch="lenet5")

    assert version.status == ItemStatus.PENDING
    assert version.number == 1 and version.asset.name == "my lenet ünïcode"
    assert version.source_filename == "my lenet ünïcode.safetensors"
    assert version.file.name.startswith(f"catalog/{org_a.pk}/models/")
    assert "lenet" not in version.file.name and version.file.name.endswith(".safetensors")
    assert version.size_bytes == src.stat().st_size and len(version.sha256) == 64
    assert len(callbacks) == 1  # the inspection is enqueued after commit, not run here


def test_inspection_marks_a_lenet5_ready_with_params_macs_and_layers(org_a, user_a, tmp_path):
    version = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.params == 61706 and version.macs and version.macs > 400_000
    assert (version.num_classes, version.in_channels, version.input_size) == (10, 1, 32)
    assert [layer["name"] for layer in version.info["layers"]][:2] == ["features.0", "features.3"]


def test_an_onnx_upload_is_inspected_and_its_shapes_filled_in(org_a, user_a, tmp_path):
    version = _upload(org_a, user_a, lenet5_onnx(tmp_path / "lenet.onnx"))
    assert version.format == "onnx" and version.arch == ""

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY, version.error
    assert version.params == 61706
    assert (version.num_classes, version.in_channels, version.input_size) == (10, 1, 32)


def test_a_ready_version_loads_for_the_jobs_runner(org_a, user_a, tmp_path):
    version = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")
    services.model_version_inspect(version=version)
    version.refresh_from_db()

    state = loaders.model_version_load(version)

    assert state.module is not None and state.input_shape == (1, 32, 32)
    assert state.num_classes == 10 and state.arch is not None and state.arch.name == "lenet5"


@pytest.mark.parametrize("name", ["virus.exe", "notes.txt", "model.h5", "model"])
def test_a_wrong_file_type_is_refused_before_anything_is_stored(org_a, user_a, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"MZ\x90\x00 not a model")

    with pytest.raises(WrongFileType, match="not a model file"):
        _upload(org_a, user_a, path, arch="lenet5")

    assert media_files(tmp_path) == [] and not ModelVersion.objects.exists()


def test_an_executable_renamed_to_safetensors_is_refused_by_its_first_bytes(
    org_a, user_a, tmp_path
):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 100)

    with pytest.raises(WrongFileType, match="Linux executable"):
        _upload(org_a, user_a, path, arch="lenet5")

    assert media_files(tmp_path) == []


def test_a_weights_file_without_an_architecture_is_refused_naming_the_choices(
    org_a, user_a, tmp_path
):
    with pytest.raises(CatalogInputError, match="lenet5") as info:
        _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"))
    assert info.value.field == "arch"
    assert media_files(tmp_path) == []


def test_a_detection_architecture_is_refused_for_a_weights_file_and_not_offered(
    org_a, user_a, tmp_path
):
    from webapp.catalog.forms import ModelUploadForm

    with pytest.raises(
        CatalogInputError, match="'yolov3_tiny' is a detection architecture"
    ) as info:
        _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="yolov3_tiny")
    assert info.value.field == "arch" and "lenet5" in str(info.value)
    assert media_files(tmp_path) == []
    offered = {value for value, _ in ModelUploadForm().fields["arch"].choices}  # type: ignore[attr-defined]
    assert "lenet5" in offered and not offered & {"yolov3", "yolov3_tiny", "ssdlite_mobilenetv2"}


def test_a_pickled_module_ends_invalid_with_the_export_hint_and_its_file_removed(
    org_a, user_a, tmp_path
):
    version = _upload(org_a, user_a, pickled_module(tmp_path / "whole.pt"), arch="lenet5")
    assert len(media_files(tmp_path)) == 1

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID
    assert version.error.startswith("whole.pt ") and "pickled" in version.error
    assert "safetensors" in version.error and "ONNX" in version.error
    assert not version.file and media_files(tmp_path) == []


@pytest.mark.parametrize("make", [pickle_payload, pickle_payload_torch_zip])
def test_a_pickle_payload_never_runs_and_ends_invalid(org_a, user_a, tmp_path, make):
    canary = tmp_path / "canary"
    version = _upload(org_a, user_a, make(tmp_path / "evil.pt", canary), arch="lenet5")

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID and "refused" in version.error
    assert not canary.exists()
    assert media_files(tmp_path) == []


def test_a_truncated_safetensors_ends_invalid_with_the_reason(org_a, user_a, tmp_path):
    good = lenet5_safetensors(tmp_path / "l.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:5000])
    version = _upload(org_a, user_a, cut, arch="lenet5")

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID and "truncated" in version.error


def test_weights_for_another_architecture_end_invalid_naming_the_mismatch(org_a, user_a, tmp_path):
    version = _upload(
        org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="resnet20"
    )

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID and version.error


def test_the_inspector_child_dying_of_its_memory_cap_marks_the_version_invalid(
    org_a, user_a, tmp_path, settings
):
    settings.EDGESLIM_INSPECT_MEMORY_BYTES = 512 * 1024**2  # too small to even import torch
    version = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID and version.error


def test_a_file_over_the_limit_is_refused_with_413(org_a, user_a, tmp_path, settings):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(UploadTooLarge) as info:
        _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")
    assert info.value.status_code == 413
    assert media_files(tmp_path) == []


def test_the_same_name_adds_versions_and_duplicate_filenames_never_collide(org_a, user_a, tmp_path):
    src = lenet5_safetensors(tmp_path / "same.safetensors")

    first = _upload(org_a, user_a, src, arch="lenet5", name="LeNet")
    second = _upload(org_a, user_a, src, arch="lenet5", name="LeNet")

    assert second.asset_id == first.asset_id and second.number == 2
    assert first.file.name != second.file.name
    assert first.source_filename == second.source_filename == "same.safetensors"


def test_a_long_unicode_filename_with_path_parts_is_normalised_as_metadata(org_a, user_a, tmp_path):
    src = lenet5_safetensors(tmp_path / "l.safetensors")
    hostile = "..\\..\\etc/" + "Ünïcödé\u0000\u202e" + "x" * 400 + ".safetensors"

    version = _upload(org_a, user_a, src, arch="lenet5", filename=hostile)

    assert len(version.source_filename) <= 200
    assert version.source_filename.endswith(".safetensors")
    assert "/" not in version.source_filename and "\\" not in version.source_filename
    assert "\u0000" not in version.source_filename and "\u202e" not in version.source_filename
    assert version.file.name.startswith(f"catalog/{org_a.pk}/models/")


def test_a_job_output_becomes_the_next_version_with_lineage(org_a, user_a, tmp_path):
    parent = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")
    services.model_version_inspect(version=parent)
    parent.refresh_from_db()
    recipe = {"stages": [{"method": "ptq_int8", "config": {}}]}

    child = services.model_version_create_from_job(
        organization=org_a,
        parent=parent,
        job_id=42,
        recipe=recipe,
        file_path=lenet5_onnx(tmp_path / "final.int8.onnx"),
        format="onnx",
        label="int8",
        info={"params": 61706, "format": "onnx"},
    )

    assert child.asset_id == parent.asset_id and child.number == 2
    assert child.parent == parent and child.produced_by_job_id == 42 and child.recipe == recipe
    assert child.status == ItemStatus.READY and child.label == "int8"
    assert (child.num_classes, child.in_channels, child.input_size) == (10, 1, 32)
    assert selectors.model_version_lineage(version=child) == [parent]
    assert list(selectors.model_version_children(version=parent)) == [child]


def test_a_job_output_cannot_name_another_organisations_parent(org_a, org_b, user_a, tmp_path):
    parent = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")
    with pytest.raises(CatalogInputError, match="another organisation"):
        services.model_version_create_from_job(
            organization=org_b,
            parent=parent,
            job_id=1,
            recipe={},
            file_path=tmp_path / "l.safetensors",
            format="torch",
        )


def test_inspecting_a_version_twice_is_harmless(org_a, user_a, tmp_path):
    version = _upload(org_a, user_a, lenet5_safetensors(tmp_path / "l.safetensors"), arch="lenet5")
    services.model_version_inspect(version=version)
    version.refresh_from_db()
    inspected_at = version.inspected_at

    services.model_version_inspect(version=version)

    version.refresh_from_db()
    assert version.inspected_at == inspected_at and version.status == ItemStatus.READY
