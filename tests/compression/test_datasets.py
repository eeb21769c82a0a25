"""Data sets: the bundled digits and MNIST, fixed three-way splits, image-folder zips in every
layout, preprocessing records, reports and model checks."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compression.datasets import (
    check_dataset_matches_model,
    dataset_report,
    load_builtin,
    load_digits,
    load_image_folder_zip,
    load_mnist,
    stratified_split3,
)
from compression.errors import DatasetError, UnsafeArchiveError
from compression.preprocessing import (
    ONNX_METADATA_KEY,
    Preprocessing,
    PreprocessingError,
    read_onnx,
    stamp_onnx,
)
from compression.stage import ModelState


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits(size=32)


def test_digits_are_single_channel_32px_and_normalised(digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits.train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert digits.input_shape == (1, 32, 32) and digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    stacked = torch.stack([digits.train[i][0] for i in range(len(digits.train))])
    assert abs(float(stacked.mean())) < 0.05 and abs(float(stacked.std()) - 1.0) < 0.05


def _rows(ds: torch.utils.data.Dataset) -> set[bytes]:  # type: ignore[type-arg]
    return {bytes(ds.images[i].numpy().tobytes()) for i in range(len(ds))}  # type: ignore[attr-defined]


def test_the_digits_splits_are_fixed_disjoint_and_stratified(digits) -> None:  # type: ignore[no-untyped-def]
    again = load_digits(size=32)
    for name in ("train", "val", "test"):
        assert torch.equal(digits.split(name).labels, again.split(name).labels)
        assert torch.equal(digits.split(name).images, again.split(name).images)
    assert digits.fingerprint() == again.fingerprint()
    # Only the data set's own split seed moves images between splits; nothing else can.
    other = load_digits(size=32, split_seed=1)
    assert not torch.equal(digits.test.images, other.test.images)
    assert digits.fingerprint() != other.fingerprint()
    report = dataset_report(digits)
    for split, share in (("val", 0.15), ("test", 0.2)):
        counts = report.counts[split]
        assert set(counts) == {str(d) for d in range(10)}
        assert all(abs(n - share * 180) <= 4 for n in counts.values())  # ~180 per class
    assert report.split_seed == 0 and report.split_sources == dict.fromkeys(
        ("train", "val", "test"), "fixed"
    )


def test_split3_carves_test_first_so_val_never_moves_test_images() -> None:
    labels = [i % 4 for i in range(400)]
    tr, va, te = stratified_split3(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(te) == 80 and len(va) == 40 and len(tr) == 280
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    _, va2, te2 = stratified_split3(labels, val_fraction=0.25, test_fraction=0.2, seed=3)
    assert te2 == te and va2 != va
    with pytest.raises(DatasetError):
        stratified_split3(labels, val_fraction=0.5, test_fraction=0.5, seed=0)


def test_mnist_is_5000_real_digits_with_a_fixed_split() -> None:
    mnist = load_mnist()
    assert mnist.input_shape == (1, 28, 28) and mnist.name == "mnist"
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3500, 500, 1000)
    assert mnist.train.images.dtype == torch.uint8  # kept small in memory
    counts = dataset_report(mnist).counts["test"]
    assert set(counts.values()) == {100}  # stratified: 100 of each digit
    # Real handwriting: most pixels are background, strokes are bright.
    raw = mnist.test.images.float() / 255
    assert 0.08 < float(raw.mean()) < 0.2 and float(raw.max()) == 1.0
    assert not (_rows(mnist.train) & _rows(mnist.test))
    big = load_builtin("mnist", size=32)
    assert big.input_shape == (1, 32, 32)
    assert torch.equal(big.test.labels, mnist.test.labels)
    with pytest.raises(DatasetError, match="unknown built-in"):
        load_builtin("cifar")


def test_preprocessing_record_round_trips_and_applies(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pre = digits.preprocessing
    assert pre.input_shape == (1, 32, 32) and pre.mean == digits.mean
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    x = digits.test.images[:4].numpy()
    expected = torch.stack([digits.test[i][0] for i in range(4)]).numpy()
    assert np.allclose(pre.normalize(x), expected, atol=1e-6)
    unit = pre.with_normalization("unit")
    assert unit.mean == (0.0,) and unit.std == (1.0,)
    with pytest.raises(PreprocessingError, match="3-channel"):
        pre.with_normalization("imagenet")
    with pytest.raises(PreprocessingError, match="std"):
        Preprocessing(input_size=(8, 8), channels=1, mean=(0.0,), std=(0.0,), class_names=())
    with pytest.raises(PreprocessingError, match="malformed"):
        Preprocessing.from_dict({"channels": 1})
    declared = digits.with_preprocessing(unit)
    assert declared.normalization == "unit"
    assert torch.allclose(declared.test[0][0], digits.test.images[0].float())
    assert declared.fingerprint() != digits.fingerprint()


def test_preprocessing_is_stamped_into_onnx_metadata(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32])],
    )
    model = helper.make_model(graph)
    model.metadata_props.add(key="author", value="someone")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_onnx(path) is None
    stamp_onnx(path, digits.preprocessing)
    stamp_onnx(path, digits.preprocessing)  # replaces, never duplicates
    loaded = onnx.load(str(path))
    keys = [p.key for p in loaded.metadata_props]
    assert keys.count(ONNX_METADATA_KEY) == 1 and "author" in keys
    assert read_onnx(path) == digits.preprocessing


def test_the_train_loader_order_depends_only_on_its_seed(digits) -> None:  # type: ignore[no-untyped-def]
    def first_labels(seed: int) -> list[int]:
        _, y = next(iter(digits.train_loader(32, seed=seed)))
        return y.tolist()

    torch.manual_seed(123)
    a = first_labels(5)
    torch.manual_seed(999)  # global state must not matter
    assert first_labels(5) == a
    assert first_labels(6) != a


def test_calibration_arrays_are_single_float32_samples(digits) -> None:  # type: ignore[no-untyped-def]
    arrays = digits.calibration_arrays(8, seed=0)
    assert len(arrays) == 8
    assert all(a.shape == (1, 1, 32, 32) and a.dtype == np.float32 for a in arrays)
    assert np.array_equal(arrays[0], digits.calibration_arrays(8, seed=0)[0])


def _png(color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _folder_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_a_split_image_folder_zip_keeps_its_splits(tmp_path: Path) -> None:
    entries = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                entries[f"pets/{split}/{cls}/{i}.png"] = _png(color)
    bundle = load_image_folder_zip(
        _folder_zip(tmp_path / "pets.zip", entries), tmp_path / "work", size=16
    )
    assert bundle.classes == ["cat", "dog"] and bundle.input_shape == (3, 16, 16)
    report = dataset_report(bundle)
    assert report.counts == {
        "train": {"cat": 4, "dog": 4},
        "val": {"cat": 2, "dog": 2},
        "test": {"cat": 3, "dog": 3},
    }
    assert report.layout == "split" and report.image_sizes == {"20x12": 18}
    assert report.split_sources == {"train": "folder", "val": "folder", "test": "folder"}
    x, y = bundle.val[0]
    assert x.shape == (3, 16, 16) and y == 0


def test_a_zip_test_folder_is_the_test_split_and_val_is_carved(tmp_path: Path) -> None:
    entries = {}
    for cls, base in (("cat", 10), ("dog", 200)):
        for i in range(10):
            entries[f"train/{cls}/{i}.png"] = _png((base + i, 0, 0))
        for i in range(3):
            entries[f"test/{cls}/{i}.png"] = _png((base + 40 + i, 9, 9))
    src = _folder_zip(tmp_path / "t.zip", entries)
    bundle = load_image_folder_zip(src, tmp_path / "w", size=8, split_seed=4)
    report = dataset_report(bundle)
    assert report.counts["test"] == {"cat": 3, "dog": 3}  # never read as validation
    assert sum(report.counts["val"].values()) >= 2 and sum(report.counts["train"].values()) >= 14
    assert report.split_sources == {"train": "folder", "val": "carved", "test": "folder"}
    test_colours = {int(bundle.test.images[i, 0, 0, 0]) for i in range(len(bundle.test))}
    assert test_colours == {50, 51, 52, 240, 241, 242}
    again = load_image_folder_zip(src, tmp_path / "w2", size=8, split_seed=4)
    assert torch.equal(again.val.images, bundle.val.images)


def test_test_and_val_folders_without_train_are_refused(tmp_path: Path) -> None:
    entries = {f"{s}/{c}/0.png": _png((1, 2, 3)) for s in ("val", "test") for c in ("a", "b")}
    with pytest.raises(DatasetError, match="no train/ folder"):
        load_image_folder_zip(_folder_zip(tmp_path / "v.zip", entries), tmp_path / "w")


def test_a_flat_folder_zip_is_split_by_class_with_a_seed(tmp_path: Path) -> None:
    entries = {
        f"{cls}/{i}.png": _png(c)
        for cls, c in (("a", (9, 9, 9)), ("b", (200, 200, 200)))
        for i in range(10)
    }
    src = _folder_zip(tmp_path / "flat.zip", entries)
    one = load_image_folder_zip(src, tmp_path / "w1", size=8, channels=1, split_seed=0)
    two = load_image_folder_zip(src, tmp_path / "w2", size=8, channels=1, split_seed=0)
    assert dataset_report(one).counts == {
        "train": {"a": 6, "b": 6},
        "val": {"a": 2, "b": 2},
        "test": {"a": 2, "b": 2},
    }
    assert one.input_shape == (1, 8, 8) and dataset_report(one).layout == "flat"
    assert torch.equal(one.val.labels, two.val.labels)
    assert torch.equal(one.test.images, two.test.images)


def test_a_corrupt_image_is_skipped_and_reported(tmp_path: Path) -> None:
    entries = {f"{cls}/{i}.png": _png((i * 20, 0, 0)) for cls in ("x", "y") for i in range(5)}
    entries["x/broken.png"] = b"\x89PNG\r\n\x1a\nthis is not really a png"
    entries["y/notes.txt"] = b"ignored"
    bundle = load_image_folder_zip(_folder_zip(tmp_path / "c.zip", entries), tmp_path / "w", size=8)
    report = dataset_report(bundle).to_dict()
    assert [c["path"] for c in report["corrupt"]] == ["x/broken.png"]
    assert report["ignored"] == ["y/notes.txt"]
    assert sum(report["totals"].values()) == 10


def test_an_unsafe_dataset_zip_is_refused(tmp_path: Path) -> None:
    src = _folder_zip(tmp_path / "evil.zip", {"../a/1.png": _png((1, 1, 1))})
    with pytest.raises(UnsafeArchiveError):
        load_image_folder_zip(src, tmp_path / "w")


def test_a_zip_with_one_class_is_refused(tmp_path: Path) -> None:
    src = _folder_zip(tmp_path / "one.zip", {f"only/{i}.png": _png((1, 1, 1)) for i in range(3)})
    with pytest.raises(DatasetError, match="at least 2 class"):
        load_image_folder_zip(src, tmp_path / "w")


def test_a_class_count_mismatch_names_both_counts(digits) -> None:  # type: ignore[no-untyped-def]
    model = ModelState(input_shape=(1, 32, 32), num_classes=5)
    with pytest.raises(DatasetError, match="10 classes but the model outputs 5"):
        check_dataset_matches_model(digits, model)


def test_a_channel_mismatch_names_both_channel_counts(digits) -> None:  # type: ignore[no-untyped-def]
    model = ModelState(input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(DatasetError, match="1-channel images but the model expects 3"):
        check_dataset_matches_model(digits, model)
