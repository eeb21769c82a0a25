"""Detection data sets: YOLO, Pascal VOC and COCO zips generated here, every problem kind
reported with its file and line, hostile XML refused, and the built-in ``mnist_scenes`` set."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compression.detection_data import (
    DetectionSample,
    SceneConfig,
    UnsafeAnnotationError,
    compose_scene,
    detect_format,
    load_builtin_detection,
    load_detection_zip,
    load_mnist_scenes,
    paste_digit,
    read_detection_folder,
    size_histogram,
    split_samples,
)
from compression.errors import DatasetError, UnsafeArchiveError

W, H = 40, 30  # every generated image is 40 wide, 30 high


def _png(color: int = 90, size: tuple[int, int] = (W, H)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (color, 2 * color % 256, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(tmp_path: Path, files: dict[str, bytes | str], name: str = "det.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in files.items():
            zf.writestr(arc, data.encode() if isinstance(data, str) else data)
    return path


def _load(tmp_path: Path, files: dict[str, bytes | str], **kw):  # type: ignore[no-untyped-def]
    zp = _zip(tmp_path, files)
    work = tmp_path / "work"
    return load_detection_zip(zp, work, **kw)


def _yolo_files(n: int = 10) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {"ds/classes.txt": "cat\ndog\n"}
    for i in range(n):
        files[f"ds/images/im{i}.png"] = _png(10 * i)
        # a cat box in the image centre (x 10..30, y 7.5..22.5) and, on odd images, a dog
        lines = ["0 0.5 0.5 0.5 0.5"] + (["1 0.25 0.25 0.2 0.2"] if i % 2 else [])
        files[f"ds/labels/im{i}.txt"] = "\n".join(lines) + "\n"
    return files


def _all(bundle):  # type: ignore[no-untyped-def]
    return bundle.train + bundle.val + bundle.test


def _by_name(bundle):  # type: ignore[no-untyped-def]
    return {s.name: s for s in _all(bundle)}


def _problems(report, kind):  # type: ignore[no-untyped-def]
    return [p for p in report.problems if p.kind == kind]


# --- YOLO ----------------------------------------------------------------------------------


def test_yolo_zip_is_detected_and_read_in_absolute_pixels(tmp_path: Path) -> None:
    bundle = _load(tmp_path, _yolo_files())
    assert bundle.format == "yolo" and bundle.classes == ["cat", "dog"]
    samples = _by_name(bundle)
    assert len(samples) == 10
    s = samples["ds/images/im1.png"]
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    np.testing.assert_allclose(s.boxes[0], [10, 7.5, 30, 22.5])
    np.testing.assert_allclose(s.boxes[1], [6, 4.5, 14, 10.5])
    assert s.labels.tolist() == [0, 1]
    r = bundle.report
    assert r.boxes_per_class == {"cat": 10, "dog": 5} and r.images == 10 and r.negatives == 0
    assert r.problem_total == 0
    assert sum(r.images_per_split.values()) == 10 and all(r.images_per_split.values())
    # sqrt(20*15)=17.3 -> 16-32; sqrt(8*6)=6.9 -> 0-8
    assert r.size_histogram["16-32"] == 10 and r.size_histogram["0-8"] == 5


def test_yolo_names_from_data_yaml_and_negatives_kept(tmp_path: Path) -> None:
    files = _yolo_files()
    del files["ds/classes.txt"]
    files["ds/data.yaml"] = "nc: 2\nnames: {0: cat, 1: dog}\n"
    files["ds/images/empty.png"] = _png(7)  # no label file: a background image
    files["ds/images/blank.png"] = _png(8)
    files["ds/labels/blank.txt"] = "\n"  # an empty label file: also a background image
    bundle = _load(tmp_path, files)
    assert bundle.classes == ["cat", "dog"]
    assert bundle.report.negatives == 2 and bundle.report.images == 12
    assert len(_by_name(bundle)["ds/images/empty.png"].boxes) == 0


def test_yolo_without_class_names_is_refused(tmp_path: Path) -> None:
    files = _yolo_files()
    del files["ds/classes.txt"]
    with pytest.raises(DatasetError, match=r"classes\.txt"):
        _load(tmp_path, files)


def test_yolo_problems_are_listed_by_file_and_line(tmp_path: Path) -> None:
    files = _yolo_files()
    files["ds/labels/im0.txt"] = (
        "0 0.5 0.5 0.5 0.5\n"  # line 1 fine
        "7 0.5 0.5 0.2 0.2\n"  # line 2 unknown class
        "0 0.5 0.5 0 0.2\n"  # line 3 zero width
        "1 0.9 0.5 0.4 0.2\n"  # line 4 past the right edge: clipped
        "1 1.5 0.5 0.2 0.2\n"  # line 5 wholly outside: dropped
        "0 0.5 0.5\n"  # line 6 too few fields
        "x 0.5 0.5 0.2 0.2\n"  # line 7 not a number
    )
    files["ds/labels/ghost.txt"] = "0 0.5 0.5 0.1 0.1\n"  # no image
    files["ds/images/im3.jpg"] = _png(3)  # same stem as im3.png
    bundle = _load(tmp_path, files)
    r = bundle.report
    f = "ds/labels/im0.txt"
    assert [(p.file, p.line) for p in _problems(r, "unknown_class")] == [(f, 2)]
    assert [(p.file, p.line) for p in _problems(r, "degenerate_box")] == [(f, 3)]
    out = _problems(r, "out_of_image")
    assert [(p.file, p.line) for p in out] == [(f, 4), (f, 5)]
    assert "clipped" in out[0].message and "dropped" in out[1].message
    assert [(p.file, p.line) for p in _problems(r, "malformed")] == [(f, 6), (f, 7)]
    assert [p.file for p in _problems(r, "label_without_image")] == ["ds/labels/ghost.txt"]
    dup = _problems(r, "duplicate_image")
    assert len(dup) == 1 and dup[0].file == "ds/images/im3.png"
    assert str(out[0]) == f"{f}:4: " + out[0].message
    # the clipped box is kept and lies inside the image: x 0.7*40=28 .. 40
    s = _by_name(bundle)["ds/images/im0.png"]
    assert s.labels.tolist() == [0, 1]
    np.testing.assert_allclose(s.boxes[1], [28, 12, 40, 18])
    assert r.problem_counts == {
        "unknown_class": 1,
        "degenerate_box": 1,
        "out_of_image": 2,
        "malformed": 2,
        "label_without_image": 1,
        "duplicate_image": 1,
    }
    d = r.to_dict()
    assert {"kind": "unknown_class", "file": f, "line": 2} in [
        {k: p[k] for k in ("kind", "file", "line")} for p in d["problems"]
    ]
    assert d["problem_total"] == 8


def test_corrupt_image_is_reported_and_skipped(tmp_path: Path) -> None:
    files = _yolo_files()
    files["ds/images/im2.png"] = b"not a png"
    bundle = _load(tmp_path, files)
    assert [p.file for p in _problems(bundle.report, "corrupt_image")] == ["ds/images/im2.png"]
    assert bundle.report.images == 9


def test_a_dataset_without_a_usable_box_is_refused(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"classes.txt": "cat\n"}
    for i in range(4):
        files[f"images/{i}.png"] = _png(i)
        files[f"labels/{i}.txt"] = "3 0.5 0.5 0.2 0.2\n"
    with pytest.raises(DatasetError, match=r"no usable box.*labels/0\.txt:1: class id 3"):
        _load(tmp_path, files)


def test_unsafe_zip_is_refused_before_reading(tmp_path: Path) -> None:
    files = _yolo_files()
    files["../evil.txt"] = "x"
    with pytest.raises(UnsafeArchiveError):
        _load(tmp_path, files)


# --- Pascal VOC ----------------------------------------------------------------------------


def _voc_xml(filename: str, objects: list[tuple[str, tuple[float, ...]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (
        f"<annotation><filename>{filename}</filename>"
        f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>{objs}</annotation>"
    )


def _voc_files(n: int = 8) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {}
    for i in range(n):
        files[f"VOC/JPEGImages/{i:03d}.png"] = _png(20 * i)
        objs = [("bird", (2, 3, 12, 13))] + ([("car", (20, 5, 38, 25))] if i % 2 else [])
        files[f"VOC/Annotations/{i:03d}.xml"] = _voc_xml(f"{i:03d}.png", objs)
    return files


def test_voc_zip_is_detected_and_read(tmp_path: Path) -> None:
    files = _voc_files()
    files["VOC/JPEGImages/neg.png"] = _png(1)  # no annotation: a negative
    bundle = _load(tmp_path, files)
    assert bundle.format == "voc" and bundle.classes == ["bird", "car"]
    s = _by_name(bundle)["VOC/JPEGImages/001.png"]
    np.testing.assert_allclose(s.boxes, [[2, 3, 12, 13], [20, 5, 38, 25]])
    assert s.labels.tolist() == [0, 1]
    assert bundle.report.boxes_per_class == {"bird": 8, "car": 4}
    assert bundle.report.negatives == 1 and bundle.report.problem_total == 0


def test_voc_problems_name_the_file_and_object(tmp_path: Path) -> None:
    files = _voc_files()
    files["VOC/classes.txt"] = "bird\ncar\n"
    files["VOC/Annotations/000.xml"] = _voc_xml(
        "000.png",
        [
            ("bird", (2, 3, 12, 13)),
            ("plane", (2, 3, 12, 13)),  # object 2: not in classes.txt
            ("car", (10, 3, 10, 13)),  # object 3: zero width
            ("car", (-5, 3, 12, 13)),  # object 4: clipped at x=0
        ],
    )
    files["VOC/Annotations/orphan.xml"] = _voc_xml("orphan.png", [("bird", (1, 1, 5, 5))])
    files["VOC/Annotations/again.xml"] = _voc_xml("001.png", [("bird", (1, 1, 5, 5))])
    files["VOC/Annotations/bad.xml"] = "<annotation><object>"
    bundle = _load(tmp_path, files)
    r = bundle.report
    f = "VOC/Annotations/000.xml"
    assert [(p.file, p.where) for p in _problems(r, "unknown_class")] == [(f, "object 2")]
    assert [(p.file, p.where) for p in _problems(r, "degenerate_box")] == [(f, "object 3")]
    assert [(p.file, p.where) for p in _problems(r, "out_of_image")] == [(f, "object 4")]
    assert [p.file for p in _problems(r, "label_without_image")] == ["VOC/Annotations/orphan.xml"]
    dup = _problems(r, "duplicate_image")
    assert [p.file for p in dup] == ["VOC/Annotations/again.xml"]
    assert [p.file for p in _problems(r, "malformed")] == ["VOC/Annotations/bad.xml"]
    assert str(_problems(r, "unknown_class")[0]).startswith(f"{f} (object 2): class 'plane'")
    np.testing.assert_allclose(_by_name(bundle)["VOC/JPEGImages/000.png"].boxes[1], [0, 3, 12, 13])


@pytest.mark.parametrize(
    "payload",
    [
        # billion laughs
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        "<annotation><filename>000.png</filename><object><name>&lol2;</name></object></annotation>",
        # an external entity that would read a local file
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<annotation><filename>&xxe;</filename></annotation>",
        # a bare DTD
        '<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "http://example.invalid/a.dtd">'
        "<annotation><filename>000.png</filename></annotation>",
    ],
)
def test_voc_xml_with_a_dtd_or_entities_is_refused(tmp_path: Path, payload: str) -> None:
    files = _voc_files()
    files["VOC/Annotations/000.xml"] = payload
    with pytest.raises(
        UnsafeAnnotationError, match=r"Annotations/000\.xml: refused.*DTD or entities"
    ):
        _load(tmp_path, files)


# --- COCO ----------------------------------------------------------------------------------


def _coco_files(n: int = 8) -> tuple[dict[str, bytes | str], dict]:  # type: ignore[type-arg]
    files: dict[str, bytes | str] = {}
    images, anns = [], []
    for i in range(n):
        files[f"coco/images/{i}.png"] = _png(15 * i)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H})
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 3, "bbox": [5, 5, 10, 8]})
        if i % 2:
            anns.append(
                {"id": 200 + i, "image_id": i + 1, "category_id": 7, "bbox": [20, 10, 15, 15]}
            )
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "ball"}],
    }
    return files, doc


def test_coco_zip_is_detected_and_read(tmp_path: Path) -> None:
    files, doc = _coco_files()
    doc["images"].append({"id": 99, "file_name": "neg.png", "width": W, "height": H})
    files["coco/images/neg.png"] = _png(2)
    files["coco/annotations/instances.json"] = json.dumps(doc)
    bundle = _load(tmp_path, files)
    assert bundle.format == "coco"
    assert bundle.classes == ["ball", "person"]  # by category id: 3, 7
    s = _by_name(bundle)["coco/images/1.png"]
    np.testing.assert_allclose(s.boxes, [[5, 5, 15, 13], [20, 10, 35, 25]])
    assert s.labels.tolist() == [0, 1]
    assert bundle.report.boxes_per_class == {"ball": 8, "person": 4}
    assert bundle.report.negatives == 1 and bundle.report.problem_total == 0


def test_coco_problems_name_the_annotation_id(tmp_path: Path) -> None:
    files, doc = _coco_files()
    doc["annotations"] += [
        {"id": 301, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},
        {"id": 302, "image_id": 1, "category_id": 3, "bbox": [1, 1, -5, 5]},
        {"id": 303, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},
        {"id": 304, "image_id": 555, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"id": 305, "image_id": 1, "category_id": 3, "bbox": "1,1,5,5"},
    ]
    doc["images"] += [
        {"id": 50, "file_name": "missing.png"},
        {"id": 1, "file_name": "7.png"},  # repeats id 1
    ]
    files["coco/annotations.json"] = json.dumps(doc)
    r = _load(tmp_path, files).report
    j = "coco/annotations.json"
    got = {p.kind: (p.file, p.where) for p in r.problems}
    assert got["unknown_class"] == (j, "annotation id 301")
    assert got["degenerate_box"] == (j, "annotation id 302")
    assert got["out_of_image"] == (j, "annotation id 303")
    assert got["malformed"] == (j, "annotation id 305")
    assert [p.where for p in _problems(r, "label_without_image")] == [
        "image id 50",
        "annotation id 304",
    ]
    assert got["duplicate_image"] == (j, "image id 1")


def test_unrecognised_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a detection data set"):
        _load(tmp_path, {"cats/a.png": _png(), "dogs/b.png": _png()})
    assert detect_format(tmp_path / "work" / "extracted") is None


# --- splits and the histogram --------------------------------------------------------------


def test_splits_are_fixed_by_the_split_seed(tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    with zipfile.ZipFile(_zip(tmp_path, _yolo_files(30))) as zf:
        zf.extractall(ext)
    a = read_detection_folder(ext, split_seed=3)
    b = read_detection_folder(ext, split_seed=3)
    c = read_detection_folder(ext, split_seed=4)

    def names(bundle):  # type: ignore[no-untyped-def]
        return [[s.name for s in bundle.split(k)] for k in ("train", "val", "test")]

    assert names(a) == names(b) and names(a) != names(c)
    tr, va, te = (set(x) for x in names(a))
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == 30


def test_split_stratifies_negatives_too() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    samples = [
        DetectionSample(f"{i}", img, np.array([[0, 0, 4, 4]] * (i % 3 > 0)), [i % 2] * (i % 3 > 0))
        for i in range(60)
    ]
    parts = split_samples(samples, 2, split_seed=0)
    assert all(any(not len(s.boxes) for s in p) for p in parts.values())


def test_size_histogram_bins_by_sqrt_area() -> None:
    img = np.zeros((600, 600, 3), np.uint8)
    s = DetectionSample(
        "a", img, [[0, 0, 4, 4], [0, 0, 8, 8], [0, 0, 100, 400], [0, 0, 600, 600]], [0] * 4
    )
    h = size_histogram([s])
    assert h["0-8"] == 1 and h["8-16"] == 1 and h["128-256"] == 1 and h["512+"] == 1


# --- the built-in set ----------------------------------------------------------------------

SMALL = SceneConfig(seed=5, size=64, n_train=20, n_val=6, n_test=10)


def test_paste_digit_boxes_exactly_the_drawn_ink() -> None:
    digit = np.zeros((28, 28), np.uint8)
    digit[6:20, 12:16] = 255  # a "1"
    canvas = np.full((64, 64, 3), 100, np.uint8)
    box = paste_digit(canvas, digit, 10, 20, 28, (255, 0, 0))
    changed = np.argwhere((canvas != 100).any(axis=2))
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert box == (x0, y0, x1 + 1, y1 + 1)


def test_compose_scene_boxes_match_the_pasted_digits() -> None:
    from compression.datasets import read_mnist_5k

    pixels, labels = read_mnist_5k()
    rng = random.Random(0)
    for i in range(5):
        background = np.full((64, 64, 3), 128, np.uint8)
        image, boxes, classes = compose_scene(
            background, [(pixels[i], int(labels[i]))], rng, SceneConfig(size=64)
        )
        assert classes == [int(labels[i])] and len(boxes) == 1
        changed = np.argwhere((image != 128).any(axis=2))
        (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
        assert boxes[0] == (x0, y0, x1 + 1, y1 + 1)


def test_mnist_scenes_is_deterministic_and_boxes_lie_inside() -> None:
    a = load_mnist_scenes(SMALL)
    b = load_mnist_scenes(SMALL)
    c = load_mnist_scenes(SceneConfig(seed=6, size=64, n_train=20, n_val=6, n_test=10))
    assert a.classes == [str(d) for d in range(10)] and a.format == "builtin"
    assert [len(a.train), len(a.val), len(a.test)] == [20, 6, 10]
    for sa, sb in zip(_all(a), _all(b), strict=True):
        assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.boxes, sb.boxes)
        assert np.array_equal(sa.labels, sb.labels)
    assert not np.array_equal(a.train[0].image, c.train[0].image)
    for s in _all(a):
        assert s.image.shape == (64, 64, 3)
        assert 1 <= len(s.boxes) <= 5
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2:] <= 64).all()
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all()
        assert set(s.labels.tolist()) <= set(range(10))
    assert a.report.images == 36 and a.report.boxes == sum(len(s.boxes) for s in _all(a))


def test_mnist_scenes_test_digits_come_from_a_disjoint_pool(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import compression.detection_data as dd

    used: dict[str, set[int]] = {"fit": set(), "test": set()}
    real = dd.compose_scene

    def spy(background, digits, rng, cfg):  # type: ignore[no-untyped-def]
        key = "test" if background is spy.test_bg else "fit"  # type: ignore[attr-defined]
        used[key].update(id_of[d.tobytes()] for d, _ in digits)
        return real(background, digits, rng, cfg)

    pixels, _ = dd.read_mnist_5k()
    id_of = {p.tobytes(): i for i, p in enumerate(pixels)}
    real_crop = dd._crop

    def crop(photo, size, rng, test):  # type: ignore[no-untyped-def]
        out = real_crop(photo, size, rng, test)
        spy.test_bg = out if test else None  # type: ignore[attr-defined]
        return out

    monkeypatch.setattr(dd, "compose_scene", spy)
    monkeypatch.setattr(dd, "_crop", crop)
    dd.load_mnist_scenes(SMALL)
    assert used["fit"] and used["test"] and not (used["fit"] & used["test"])


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(DatasetError, match="mnist_scenes"):
        load_builtin_detection("coco2017")


def test_max_side_shrinks_images_and_boxes_but_reports_file_pixels(tmp_path: Path) -> None:
    files = _yolo_files(6)
    for i in range(6):
        files[f"ds/images/im{i}.png"] = _png(10 * i, size=(400, 300))
    bundle = _load(tmp_path, files, max_side=100)
    s = _by_name(bundle)["ds/images/im1.png"]
    assert s.image.shape == (75, 100, 3) and s.source_size == (400, 300)
    np.testing.assert_allclose(s.boxes[0], [25, 18.75, 75, 56.25])  # (100, 75, 300, 225) / 4
    assert bundle.report.image_sizes == {"400x300": 6}
    # sqrt(200*150)=173 -> 128-256 in the file's pixels (43 px in the shrunk image)
    assert bundle.report.size_histogram["128-256"] == 6
