"""Image-classification data sets: the bundled digits, and image folders uploaded as a zip.

Images are decoded once into memory at the target size (uint8 for folders, so a large set stays
small) and normalised per channel with statistics of the training split.
"""

from __future__ import annotations

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

from compression.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Pillow warns above this many pixels and we treat the warning as an error: a 32x32 training
# set has no business holding a 180-megapixel image, and decompression bombs look exactly so.
MAX_IMAGE_PIXELS = 50_000_000
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation", "test")


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
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    stats: SourceStats = field(default_factory=SourceStats)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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

    def val_loader(
        self, batch_size: int = 256, *, num_workers: int = 0, pin_memory: bool = False
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        return DataLoader(
            self.val,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_batch_as_is,
            pin_memory=pin_memory,
        )

    def calibration_arrays(self, n: int, *, seed: int = 0) -> list[np.ndarray]:
        """``n`` single-sample float32 arrays of shape (1, C, H, W) drawn from the training split."""
        rng = np.random.default_rng(seed)
        count = len(self.train)
        indices = rng.choice(count, size=min(n, count), replace=False)
        return [self.train[int(i)][0].unsqueeze(0).numpy().astype(np.float32) for i in indices]

    def subset(
        self, *, train: int | None = None, val: int | None = None, seed: int = 0
    ) -> DatasetBundle:
        """A smaller bundle with the first ``train``/``val`` items of a seeded shuffle (for tests)."""
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
            mean=self.mean,
            std=self.std,
            stats=self.stats,
        )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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
        n_val = round(len(items) * val_fraction)
        # Keep at least one item of each class on both sides when the class has two or more.
        n_val = min(max(n_val, 1), len(items) - 1) if len(items) >= 2 else 0
        val_idx += items[:n_val]
        train_idx += items[n_val:]
    return sorted(train_idx), sorted(val_idx)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.to(torch.float32)
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_digits(*, size: int = 32, seed: int = 0, val_fraction: float = 0.2) -> DatasetBundle:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, upscaled to ``size``.

    One channel, bilinear upscaling, a seeded stratified split; works offline.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = torch.from_numpy(np.asarray(raw.images, dtype=np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    labels = torch.from_numpy(np.asarray(raw.target, dtype=np.int64))
    train_idx, val_idx = stratified_split(labels.tolist(), val_fraction=val_fraction, seed=seed)
    mean, std = _channel_stats(images[train_idx])
    full = ImageTensorDataset(images, labels, mean, std)
    stats = SourceStats(layout="builtin")
    stats.image_sizes["8x8"] = len(labels)
    return DatasetBundle(
        name="digits",
        classes=[str(d) for d in range(10)],
        input_shape=(1, size, size),
        train=full.subset(train_idx),
        val=full.subset(val_idx),
        mean=mean,
        std=std,
        stats=stats,
    )


# --- image folders -------------------------------------------------------------------------


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


def load_image_folder_zip(
    zip_path: Path | str,
    work_dir: Path | str,
    *,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
    max_total_bytes: int | None = None,
) -> DatasetBundle:
    """Read an image-folder zip: ``train/<class>/*`` + ``val/<class>/*``, or ``<class>/*``.

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

    if train_dir is not None:
        stats.layout = "split"
        train_files = _class_files(train_dir, stats, dest)
        val_files = _class_files(val_dir, stats, dest) if val_dir is not None else {}
        classes = sorted(c for c, f in train_files.items() if f)
        extra = sorted(set(c for c, f in val_files.items() if f) - set(classes))
        if extra:
            raise DatasetError(f"validation classes missing from train/: {', '.join(extra)}")
    else:
        stats.layout = "flat"
        train_files = _class_files(root, stats, dest)
        val_files = {}
        classes = sorted(c for c, f in train_files.items() if f)
    if len(classes) < 2:
        raise DatasetError(
            "need at least 2 class folders with images: use train/<class>/*.png and "
            "val/<class>/*.png, or <class>/*.png"
        )
    index = {c: i for i, c in enumerate(classes)}
    train_list = [(p, index[c]) for c in classes for p in train_files.get(c, [])]
    train_x, train_y = _decode_all(train_list, size=size, channels=channels, stats=stats, base=dest)
    if val_files:
        val_list = [(p, index[c]) for c in classes for p in val_files.get(c, [])]
        val_x, val_y = _decode_all(val_list, size=size, channels=channels, stats=stats, base=dest)
    else:
        tr, va = stratified_split(train_y.tolist(), val_fraction=val_fraction, seed=seed)
        val_x, val_y = train_x[va], train_y[va]
        train_x, train_y = train_x[tr], train_y[tr]
    if len(train_y) == 0 or len(val_y) == 0:
        raise DatasetError(
            f"no decodable images in the {'training' if len(train_y) == 0 else 'validation'} split "
            f"({len(stats.corrupt)} corrupt files)"
        )
    mean, std = _channel_stats(train_x)
    return DatasetBundle(
        name=zip_path.stem,
        classes=classes,
        input_shape=(channels, size, size),
        train=ImageTensorDataset(train_x, train_y, mean, std),
        val=ImageTensorDataset(val_x, val_y, mean, std),
        mean=mean,
        std=std,
        stats=stats,
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
        counts={"train": count(bundle.train), "val": count(bundle.val)},
        image_sizes=dict(bundle.stats.image_sizes),
        min_size=(by_area[0][0], by_area[0][1]) if by_area else None,
        max_size=(by_area[-1][0], by_area[-1][1]) if by_area else None,
        corrupt=list(bundle.stats.corrupt),
        ignored=list(bundle.stats.ignored),
        layout=bundle.stats.layout,
    )


def check_dataset_matches_model(bundle: DatasetBundle, model: Any) -> None:
    """Refuse a data set whose classes or channels do not fit the model (a ModelState).

    Raises:
        DatasetError: naming both class counts, or both channel counts / input sizes.
    """
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
