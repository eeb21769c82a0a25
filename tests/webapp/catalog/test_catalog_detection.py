"""Detection data sets in the catalog: a YOLO zip uploaded as a plain dataset is recognised,
validated in the sandboxed child and shown with its report, problems and box-drawn samples;
a detection upload that is not one, one without a usable box and a hostile VOC file are
refused; the built-in mnist_scenes set validates; jobs and the wizard keep detection sets
away from classifiers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from compression.errors import DatasetError
from webapp.catalog import loaders, services
from webapp.catalog.models import Dataset, DatasetKind, DatasetTask, ItemStatus, Upload

pytestmark = pytest.mark.django_db

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data.encode() if isinstance(data, str) else data)
    return path


def yolo_zip(path: Path, *, bad_line: bool = True) -> Path:
    files: dict[str, bytes | str] = {"shapes/classes.txt": "square\nround\n"}
    for i in range(12):
        files[f"shapes/images/{i:02d}.png"] = _png(20 * i)
        lines = ["0 0.5 0.5 0.5 0.5"] + (["1 0.2 0.2 0.2 0.2"] if i % 2 else [])
        files[f"shapes/labels/{i:02d}.txt"] = "\n".join(lines) + "\n"
    if bad_line:
        files["shapes/labels/03.txt"] += "9 0.5 0.5 0.1 0.1\n"  # line 3: unknown class
    return _zip(path, files)


def _upload(org, user, path, **kw) -> Dataset:  # type: ignore[no-untyped-def]
    dataset = services.dataset_upload_create(organization=org, user=user, path=path, **kw)
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()
    return dataset


def test_a_yolo_zip_uploaded_as_a_dataset_becomes_a_detection_set_with_its_report(
    org_a, user_a, client_a, tmp_path
):
    dataset = _upload(org_a, user_a, yolo_zip(tmp_path / "shapes.zip"))

    assert dataset.status == ItemStatus.READY, dataset.error
    assert (dataset.task, dataset.kind) == (DatasetTask.DETECTION, DatasetKind.DETECTION_ZIP)
    report = dataset.report
    assert report["format"] == "yolo" and report["classes"] == ["square", "round"]
    assert dataset.num_classes == 2 and report["images"] == 12
    assert report["boxes_per_class"] == {"square": 12, "round": 6}
    assert sum(report["totals"].values()) == 12 and all(report["totals"].values())
    assert report["problem_counts"] == {"unknown_class": 1}
    assert report["problems"][0] | {"message": ""} == {
        "kind": "unknown_class",
        "file": "shapes/labels/03.txt",
        "line": 3,
        "where": "",
        "message": "",
    }
    thumbs = dataset.thumbnails
    assert set(thumbs) == {"square", "round"} and all(1 <= len(v) <= 2 for v in thumbs.values())

    page = client_a.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "Object detection" in page and "read as <span data-format>YOLO</span>" in page
    assert "shapes/labels/03.txt:3</code> — class id 9 is not in 0..1; dropped" in page
    assert 'id="det-size-histogram"' in page and "catalog/detection.js" in page
    assert 'data-class="round"' in page and page.count("data-det-sample") == sum(
        len(v) for v in thumbs.values()
    )
    # the samples are PNGs the worker drew, the boxes in colour over the image
    row = next(r for r in report["class_rows"] if r["name"] == "round")
    assert row == row | {"boxes": 6, "thumbs": list(range(len(thumbs["round"])))}
    assert f"/thumbnails/{row['thumb_index']}/0.png" in page
    response = client_a.get(f"/datasets/{dataset.pk}/thumbnails/{row['thumb_index']}/0.png")
    assert response.status_code == 200 and response.content.startswith(PNG_MAGIC)
    sample = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert sample.size == (192, 144)
    colours = {c for _, c in sample.getcolors(1 << 16) or []}
    assert (86, 180, 233) in colours  # the "round" class's box colour


def test_the_report_survives_a_page_without_problems(org_a, user_a, client_a, tmp_path):
    dataset = _upload(org_a, user_a, yolo_zip(tmp_path / "clean.zip", bad_line=False))
    assert dataset.report["problem_total"] == 0
    assert "data-no-problems" in client_a.get(f"/datasets/{dataset.pk}/").content.decode()


def test_a_detection_upload_that_is_not_one_is_refused(org_a, user_a, tmp_path):
    files: dict[str, bytes | str] = {f"{c}/{i}.png": _png(i) for c in ("a", "b") for i in range(3)}
    dataset = _upload(org_a, user_a, _zip(tmp_path / "folders.zip", files), task="detection")
    assert dataset.kind == DatasetKind.DETECTION_ZIP
    assert dataset.status == ItemStatus.INVALID and "not a detection data set" in dataset.error


def test_an_image_folder_zip_stays_a_classification_set(org_a, user_a, tmp_path):
    files: dict[str, bytes | str] = {f"{c}/{i}.png": _png(i) for c in ("a", "b") for i in range(5)}
    dataset = _upload(org_a, user_a, _zip(tmp_path / "folders.zip", files))
    assert dataset.status == ItemStatus.READY, dataset.error
    assert (dataset.task, dataset.kind) == (DatasetTask.CLASSIFICATION, DatasetKind.IMAGE_ZIP)


def test_a_detection_zip_without_a_usable_box_is_refused(org_a, user_a, tmp_path):
    files: dict[str, bytes | str] = {"classes.txt": "cat\n"}
    for i in range(4):
        files[f"images/{i}.png"] = _png(i)
        files[f"labels/{i}.txt"] = "0 0.5 0.5 0 0\n"
    dataset = _upload(org_a, user_a, _zip(tmp_path / "empty.zip", files))
    assert dataset.status == ItemStatus.INVALID
    assert "no usable box" in dataset.error and "labels/0.txt:1" in dataset.error
    assert not dataset.file  # the refused archive is deleted


def test_a_voc_file_with_an_entity_bomb_is_refused(org_a, user_a, tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;&l;">]>'
        "<annotation><filename>0.png</filename><object><name>&l2;</name></object></annotation>"
    )
    files: dict[str, bytes | str] = {"VOC/JPEGImages/0.png": _png(1), "VOC/Annotations/0.xml": bomb}
    dataset = _upload(org_a, user_a, _zip(tmp_path / "voc.zip", files))
    assert dataset.status == ItemStatus.INVALID
    assert "Annotations/0.xml: refused" in dataset.error and "entities" in dataset.error


def test_an_unknown_task_is_refused_at_upload(org_a, user_a, tmp_path):
    from webapp.catalog.errors import CatalogInputError

    with pytest.raises(CatalogInputError, match="task must be one of auto, detection"):
        services.dataset_upload_create(
            organization=org_a, user=user_a, path=yolo_zip(tmp_path / "s.zip"), task="segmentation"
        )


def test_a_resumable_upload_carries_the_task(org_a, user_a, tmp_path):
    data = yolo_zip(tmp_path / "s.zip").read_bytes()
    upload = services.upload_create(
        organization=org_a,
        user=user_a,
        kind="dataset",
        filename="s.zip",
        total_size=len(data),
        params={"task": "detection"},
    )
    assert upload.params["task"] == "detection"
    services.upload_append_chunk(
        upload=upload, content_range=f"bytes 0-{len(data) - 1}/{len(data)}", stream=io.BytesIO(data)
    )
    dataset = services.upload_complete(upload=upload, user=user_a)
    assert isinstance(dataset, Dataset)
    assert (dataset.task, dataset.kind) == (DatasetTask.DETECTION, DatasetKind.DETECTION_ZIP)


def test_the_builtin_mnist_scenes_set_validates_once_with_fixed_splits_for_every_organisation(
    org_a, client_a, org_b, client_b, monkeypatch
):
    """The first organisation's set is generated and validated in the sandbox child; the set
    follows from its fingerprint alone, so the second organisation's row gets the same report
    and samples without the child generating the scenes again."""
    from webapp.catalog import sandbox
    from webapp.catalog.services import builtin_cache as cache

    # The code digest as it is now, so others' edits to compression/ meanwhile change no key.
    digest = cache.code_digest()
    monkeypatch.setattr(cache, "code_digest", lambda: digest)
    for org in (org_a, org_b):
        services.builtin_samples_ensure(organization=org)
    first = Dataset.objects.get(organization=org_a, builtin_key="mnist_scenes")
    assert first.task == DatasetTask.DETECTION and first.kind == DatasetKind.MNIST_SCENES
    services.dataset_validate(dataset=first)
    first.refresh_from_db()
    assert first.status == ItemStatus.READY, first.error
    report = first.report
    assert report["totals"] == {"train": 1050, "val": 150, "test": 300}
    assert report["split_sources"] == {"train": "fixed", "val": "fixed", "test": "fixed"}
    assert report["classes"] == [str(d) for d in range(10)] and report["negatives"] == 0
    assert len(first.thumbnails) == 10
    page = client_a.get(f"/datasets/{first.pk}/").content.decode()
    assert 'data-split-source="fixed"' in page and "Object detection" in page
    with pytest.raises(DatasetError, match="object-detection data set"):
        loaders.dataset_load(first, work_dir=Path("/nonexistent"))

    key = cache.dataset_cache_key(first)
    assert key and key.startswith("dataset-mnist_scenes-seed0-") and cache.dataset_get(key)

    def no_child(*args: object, **kw: object) -> None:
        raise AssertionError("the cached set was generated again")

    monkeypatch.setattr(sandbox, "run_child", no_child)
    second = Dataset.objects.get(organization=org_b, builtin_key="mnist_scenes")
    services.dataset_validate(dataset=second)
    second.refresh_from_db()
    assert second.status == ItemStatus.READY, second.error
    strip = lambda r: {k: v for k, v in r.items() if k != "thumbnails"}  # noqa: E731
    assert strip(second.report) == strip(first.report)
    assert second.report["totals"] == {"train": 1050, "val": 150, "test": 300}
    assert list(second.thumbnails) == list(first.thumbnails)
    # the samples are the second organisation's own stored copies of the same PNGs
    name_a, name_b = first.thumbnails["3"][0], second.thumbnails["3"][0]
    assert name_b.startswith(f"catalog/{org_b.pk}/") and name_a != name_b
    with default_storage.open(name_a) as fa, default_storage.open(name_b) as fb:
        assert fa.read() == fb.read()
    page = client_b.get(f"/datasets/{second.pk}/").content.decode()
    assert 'data-split-source="fixed"' in page and "Object detection" in page


def test_a_changed_generator_or_a_broken_entry_validates_afresh(org_a, monkeypatch, tmp_path):
    from compression import detection_data
    from webapp.catalog import sandbox
    from webapp.catalog.services import builtin_cache as cache

    services.builtin_samples_ensure(organization=org_a)
    dataset = Dataset.objects.get(organization=org_a, builtin_key="mnist_scenes")
    key = cache.dataset_cache_key(dataset)
    assert key is not None
    png = tmp_path / "sample.png"
    png.write_bytes(_png(7))
    cache.dataset_put(key, report={"classes": ["a"], "marker": 1}, thumbnails={"a": [png]})
    assert cache.dataset_get(key) == (
        {"classes": ["a"], "marker": 1},
        {"a": [cache.cache_root() / key / "files" / "0_0.png"]},
    )

    children: list[dict[str, object]] = []

    def child_refuses(request: dict[str, object], **kw: object) -> None:
        children.append(request)
        raise sandbox.SandboxError("generated again")

    monkeypatch.setattr(sandbox, "run_child", child_refuses)
    monkeypatch.setattr(
        detection_data, "MNIST_SCENES_VERSION", detection_data.MNIST_SCENES_VERSION + 1
    )
    new_key = cache.dataset_cache_key(dataset)
    assert new_key != key and cache.dataset_get(str(new_key)) is None
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()
    assert [c["kind"] for c in children] == ["mnist_scenes"]
    assert dataset.status == ItemStatus.INVALID and "generated again" in dataset.error

    # the seed and the code that makes the result are in the key too
    dataset.split_seed = 1
    assert cache.dataset_cache_key(dataset) not in (key, new_key)
    dataset.split_seed = 0
    edited = tmp_path / "inspect_child.py"
    edited.write_bytes(cache.CHILD_SOURCE.read_bytes() + b"# edited\n")
    monkeypatch.setattr(cache, "CHILD_SOURCE", edited)
    assert cache.dataset_cache_key(dataset) not in (key, new_key)
    # an entry that cannot be read is a miss, not an error
    (cache.cache_root() / key / cache.ENTRY_FILE).write_text("{not json")
    assert cache.dataset_get(key) is None


def test_storing_an_entry_prunes_the_same_items_entries_unused_for_an_hour(tmp_path):
    import os
    import time

    from webapp.catalog.services import builtin_cache as cache

    png = tmp_path / "sample.png"
    png.write_bytes(_png(3))
    old, recent, other = "model-lenet5-aaaa", "model-lenet5-bbbb", "model-vgg11_bn-cccc"
    for key in (old, recent, other):
        cache.cache_put(key, payload={"key": key}, files={"w.bin": png})
    hour_ago = time.time() - cache.PRUNE_AFTER_S - 60
    for key in (old, other):
        os.utime(cache.cache_root() / key, (hour_ago, hour_ago))
    assert cache.cache_get(old) is not None  # reading an entry marks it used now
    assert (cache.cache_root() / old).stat().st_mtime > time.time() - 60
    os.utime(cache.cache_root() / old, (hour_ago, hour_ago))

    cache.cache_put("model-lenet5-dddd", payload={}, files={"w.bin": png})

    left = sorted(p.name for p in cache.cache_root().iterdir())
    assert left == ["model-lenet5-bbbb", "model-lenet5-dddd", "model-vgg11_bn-cccc"]
    assert cache.cache_get(recent) == (
        {"key": recent},
        {"w.bin": cache.cache_root() / recent / "files" / "w.bin"},
    )


def test_the_page_and_the_api_upload_take_the_task(org_a, client_a, tmp_path):
    files: dict[str, bytes | str] = {f"{c}/{i}.png": _png(i) for c in ("a", "b") for i in range(3)}
    path = _zip(tmp_path / "folders.zip", files)
    with path.open("rb") as fh:
        response = client_a.post("/datasets/", {"file": fh, "task": "detection", "name": "pg"})
    assert response.status_code == 302
    assert Dataset.objects.get(name="pg").kind == DatasetKind.DETECTION_ZIP
    with path.open("rb") as fh:
        response = client_a.post("/api/v1/datasets/", {"file": fh, "task": "detection"})
    assert response.status_code == 201, response.content
    assert (response.json()["kind"], response.json()["task"]) == ("detection_zip", "detection")
    with path.open("rb") as fh:
        response = client_a.post("/api/v1/datasets/", {"file": fh, "task": "segmentation"})
    assert response.status_code == 400 and "task" in response.json()
    response = client_a.post(
        "/api/v1/uploads/",
        {"kind": "dataset", "filename": "f.zip", "size": 10, "task": "detection"},
        content_type="application/json",
    )
    assert response.status_code == 201
    assert Upload.objects.get(pk=response.json()["id"]).params["task"] == "detection"


def test_class_thumbnails_on_the_page_follow_the_class_not_the_stored_key_order(
    org_a, user_a, client_a, tmp_path
):
    # jsonb keeps shorter keys first: {"cat", "airplane"}, while the classes sort "airplane" first
    from catalog_files import image_folder_zip

    zp = image_folder_zip(tmp_path / "vehicles.zip", classes=("airplane", "cat"), per_class=5)
    dataset = _upload(org_a, user_a, zp)
    assert dataset.report["classes"] == ["airplane", "cat"] and list(dataset.thumbnails) == [
        "cat",
        "airplane",
    ]
    page = client_a.get(f"/datasets/{dataset.pk}/").content.decode()
    first = page.index("<td>airplane</td>")
    url = page[page.index('src="', first) + 5 : page.index('"', page.index('src="', first) + 5)]
    image = Image.open(io.BytesIO(client_a.get(url).content)).convert("RGB")
    assert image.getpixel((0, 0)) == (20, 100, 200)  # the airplane images' colour (class 0)
