"""Data sets: the bundled digits, image-folder zips in both layouts, reports and model checks."""

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
    load_digits,
    load_image_folder_zip,
)
from compression.errors import DatasetError, UnsafeArchiveError
from compression.stage import ModelState


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits(size=32, seed=0)


def test_digits_are_single_channel_32px_and_normalised(digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits.train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert digits.input_shape == (1, 32, 32) and digits.num_classes == 10
    assert len(digits.train) + len(digits.val) == 1797
    stacked = torch.stack([digits.train[i][0] for i in range(len(digits.train))])
    assert abs(float(stacked.mean())) < 0.05 and abs(float(stacked.std()) - 1.0) < 0.05


def test_the_digits_split_is_stratified_and_seeded(digits) -> None:  # type: ignore[no-untyped-def]
    again = load_digits(size=32, seed=0)
    other = load_digits(size=32, seed=1)
    assert torch.equal(digits.val.labels, again.val.labels)
    assert torch.equal(digits.val.images, again.val.images)
    assert not torch.equal(digits.val.images, other.val.images)
    counts = dataset_report(digits).counts["val"]
    assert set(counts) == {str(d) for d in range(10)}
    assert min(counts.values()) >= 30  # about 20% of each class of ~180


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
    for split, n in (("train", 4), ("val", 2)):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                entries[f"pets/{split}/{cls}/{i}.png"] = _png(color)
    bundle = load_image_folder_zip(
        _folder_zip(tmp_path / "pets.zip", entries), tmp_path / "work", size=16
    )
    assert bundle.classes == ["cat", "dog"] and bundle.input_shape == (3, 16, 16)
    report = dataset_report(bundle)
    assert report.counts == {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2}}
    assert report.layout == "split" and report.image_sizes == {"20x12": 12}
    x, y = bundle.val[0]
    assert x.shape == (3, 16, 16) and y == 0


def test_a_flat_folder_zip_is_split_by_class_with_a_seed(tmp_path: Path) -> None:
    entries = {
        f"{cls}/{i}.png": _png(c)
        for cls, c in (("a", (9, 9, 9)), ("b", (200, 200, 200)))
        for i in range(10)
    }
    src = _folder_zip(tmp_path / "flat.zip", entries)
    one = load_image_folder_zip(src, tmp_path / "w1", size=8, channels=1, seed=0, val_fraction=0.2)
    two = load_image_folder_zip(src, tmp_path / "w2", size=8, channels=1, seed=0, val_fraction=0.2)
    assert dataset_report(one).counts == {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}}
    assert one.input_shape == (1, 8, 8) and dataset_report(one).layout == "flat"
    assert torch.equal(one.val.labels, two.val.labels)


def test_a_corrupt_image_is_skipped_and_reported(tmp_path: Path) -> None:
    entries = {f"{cls}/{i}.png": _png((i * 20, 0, 0)) for cls in ("x", "y") for i in range(5)}
    entries["x/broken.png"] = b"\x89PNG\r\n\x1a\nthis is not really a png"
    entries["y/notes.txt"] = b"ignored"
    bundle = load_image_folder_zip(_folder_zip(tmp_path / "c.zip", entries), tmp_path / "w", size=8)
    report = dataset_report(bundle).to_dict()
    assert [c["path"] for c in report["corrupt"]] == ["x/broken.png"]
    assert report["ignored"] == ["y/notes.txt"]
    assert report["totals"]["train"] + report["totals"]["val"] == 10


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
