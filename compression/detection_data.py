"""Object-detection data sets: YOLO, Pascal VOC and COCO zips, their validation report, and the
built-in ``mnist_scenes`` set (real MNIST digits pasted onto crops of two real photographs).

A sample is an RGB image with its boxes in absolute ``x1, y1, x2, y2`` pixels (floats, the
image's own pixel grid, ``0 <= x1 < x2 <= width``) and one class index per box. Images with no
box are kept as negatives (background images). Every data set has three fixed splits made from
its images and a *split seed* alone (see :func:`compression.datasets.stratified_split3`), the
images stratified by the class that has the most boxes in them, negatives as one more stratum.

Reading a zip never stops at the first bad label: every problem is collected into the
:class:`DetectionReport` with its file and line (YOLO), object (VOC) or annotation id (COCO).
What each problem does to the data:

* a box partly outside the image is **clipped** to the image and kept (``out_of_image``);
  a box wholly outside is dropped (``out_of_image`` too, saying so);
* a box of zero or negative width or height is dropped (``degenerate_box``);
* a box of a class that is not in the class list is dropped (``unknown_class``);
* a label line or annotation that cannot be read is dropped (``malformed``);
* a label file whose image is missing is skipped (``label_without_image``);
* a second image with the same name (YOLO: the same stem, which names its label file; VOC:
  the same ``<filename>``; COCO: the same ``file_name`` or ``id``) is dropped (``duplicate_image``);
* an image that fails to decode is dropped (``corrupt_image``).

A data set left with no usable box at all is refused with :class:`DatasetError`.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from compression.dataset_files import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    SPLITS,
    _find_root,
    _visible,
    read_mnist_5k,
    stratified_split,
    stratified_split3,
)
from compression.errors import DatasetError

if TYPE_CHECKING:
    from compression.detection_torch import DetectionDataset

DetectionFormat = Literal["yolo", "voc", "coco", "builtin"]
FORMATS: tuple[DetectionFormat, ...] = ("yolo", "voc", "coco")
ProblemKind = Literal[
    "out_of_image",
    "degenerate_box",
    "unknown_class",
    "malformed",
    "label_without_image",
    "duplicate_image",
    "corrupt_image",
]
PROBLEM_KINDS: tuple[ProblemKind, ...] = (
    "out_of_image",
    "degenerate_box",
    "unknown_class",
    "malformed",
    "label_without_image",
    "duplicate_image",
    "corrupt_image",
)
# The report lists this many problems one by one (all of them are counted).
MAX_LISTED_PROBLEMS = 200
# Box-size histogram: sqrt(box area) in pixels, bins [0, 8), [8, 16), ... [512, inf).
SIZE_BIN_EDGES: tuple[float, ...] = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)


class UnsafeAnnotationError(DatasetError):
    """An annotation file is hostile (an XML DTD or entity declaration): the whole data set is
    refused, as an unsafe zip entry refuses the whole archive."""


class NotDetectionError(DatasetError):
    """The folder is in none of the detection formats (it may be an image-folder set)."""


# --- samples and bundles -------------------------------------------------------------------


@dataclass
class DetectionSample:
    """One image and its boxes.

    ``image`` is ``(H, W, 3) uint8`` RGB; ``boxes`` is ``(N, 4) float32`` absolute
    ``x1, y1, x2, y2`` pixels inside the image; ``labels`` is ``(N,) int64`` class indices.
    ``name`` is the image's path inside the data set (or a generated name).
    """

    name: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    # The image's (width, height) in its file when it was shrunk on reading (``max_side``);
    # the boxes are in the pixels of ``image``, the report in those of the file.
    source_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes but {len(self.labels)} labels")

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def file_size(self) -> tuple[int, int]:
        """``(width, height)`` of the image in its file."""
        return self.source_size or (self.width, self.height)


@dataclass
class DetectionBundle:
    """A detection data set: class names, three fixed splits and the report of its reading."""

    name: str
    format: DetectionFormat
    classes: list[str]
    train: list[DetectionSample]
    val: list[DetectionSample]
    test: list[DetectionSample]
    report: DetectionReport
    split_seed: int = DEFAULT_SPLIT_SEED

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[DetectionSample]:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        samples: list[DetectionSample] = getattr(self, name)
        return samples

    def dataset(self, name: str) -> DetectionDataset:
        from compression.detection_torch import DetectionDataset

        return DetectionDataset(self.split(name))


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the source. ``line`` is a 1-based line of a YOLO label file, or
    ``0`` where the place is ``where`` (``object 2`` of a VOC file, ``annotation id 17``)."""

    kind: ProblemKind
    file: str
    message: str
    line: int = 0
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "where": self.where,
            "message": self.message,
        }

    def __str__(self) -> str:
        place = f":{self.line}" if self.line else (f" ({self.where})" if self.where else "")
        return f"{self.file}{place}: {self.message}"


@dataclass
class DetectionReport:
    """What a detection data set holds and what was wrong with it."""

    name: str
    format: DetectionFormat
    classes: list[str]
    images: int = 0
    negatives: int = 0  # images without a box, kept as background images
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    images_per_split: dict[str, int] = field(default_factory=dict)
    boxes_per_split: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> boxes
    # sqrt(area) histogram: bin labels ("0-8", ..., "512+") -> box count
    size_histogram: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    problem_counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # the first MAX_LISTED_PROBLEMS
    ignored: list[str] = field(default_factory=list)  # files neither image nor annotation
    split_seed: int = DEFAULT_SPLIT_SEED
    # Where each split came from: "carved" (from all images with the split seed) or "fixed"
    # (the built-in set's own, generated split).
    split_sources: dict[str, str] = field(default_factory=dict)

    @property
    def boxes(self) -> int:
        return sum(self.boxes_per_class.values())

    @property
    def problem_total(self) -> int:
        return sum(self.problem_counts.values())

    def add(self, problem: Problem) -> None:
        self.problem_counts[problem.kind] = self.problem_counts.get(problem.kind, 0) + 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "detection",
            "name": self.name,
            "format": self.format,
            "classes": list(self.classes),
            "images": self.images,
            "negatives": self.negatives,
            "boxes": self.boxes,
            "boxes_per_class": dict(self.boxes_per_class),
            "images_per_split": dict(self.images_per_split),
            "boxes_per_split": dict(self.boxes_per_split),
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "totals": dict(self.images_per_split),
            "size_histogram": dict(self.size_histogram),
            "image_sizes": dict(self.image_sizes),
            "problem_counts": dict(self.problem_counts),
            "problem_total": self.problem_total,
            "problems": [p.to_dict() for p in self.problems],
            "problems_listed": len(self.problems),
            "ignored": list(self.ignored[:MAX_LISTED_PROBLEMS]),
            "split_seed": self.split_seed,
            "split_sources": dict(self.split_sources),
        }


def size_bin_labels() -> list[str]:
    labels = []
    for lo, hi in itertools.pairwise(SIZE_BIN_EDGES):
        labels.append(f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}")
    return labels


def size_histogram(samples: Sequence[DetectionSample]) -> dict[str, int]:
    """Box counts by ``sqrt(width * height)`` in pixels of the image files, over
    :data:`SIZE_BIN_EDGES`."""
    labels = size_bin_labels()
    counts = dict.fromkeys(labels, 0)
    for s in samples:
        if not len(s.boxes):
            continue
        wh = s.boxes[:, 2:] - s.boxes[:, :2]
        fw, fh = s.file_size
        area = wh[:, 0] * wh[:, 1] * (fw / s.width) * (fh / s.height)
        side = np.sqrt(np.clip(area, 0, None))
        idx = np.searchsorted(np.asarray(SIZE_BIN_EDGES[1:-1]), side, side="right")
        for i in idx.tolist():
            counts[labels[i]] += 1
    return counts


def _fill_counts(report: DetectionReport, bundle_splits: dict[str, list[DetectionSample]]) -> None:
    every = [s for ss in bundle_splits.values() for s in ss]
    per_class = Counter(int(v) for s in every for v in s.labels.tolist())
    report.boxes_per_class = {c: per_class.get(i, 0) for i, c in enumerate(report.classes)}
    report.images = len(every)
    report.negatives = sum(1 for s in every if not len(s.boxes))
    report.images_per_split = {k: len(v) for k, v in bundle_splits.items()}
    report.boxes_per_split = {k: sum(len(s.boxes) for s in v) for k, v in bundle_splits.items()}
    report.counts = {}
    for split, part in bundle_splits.items():
        c = Counter(int(v) for s in part for v in s.labels.tolist())
        report.counts[split] = {name: c.get(i, 0) for i, name in enumerate(report.classes)}
    report.size_histogram = size_histogram(every)
    report.image_sizes = dict(Counter("{}x{}".format(*s.file_size) for s in every))


# --- boxes ---------------------------------------------------------------------------------


def check_box(
    box: Sequence[float],
    width: int,
    height: int,
    report: DetectionReport,
    *,
    file: str,
    line: int = 0,
    where: str = "",
) -> tuple[float, float, float, float] | None:
    """Return ``box`` (xyxy pixels) clipped to the image, or ``None`` when it is unusable;
    record what was wrong in ``report``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        report.add(Problem("malformed", file, "box has a non-finite coordinate", line, where))
        return None
    if x2 <= x1 or y2 <= y1:
        report.add(
            Problem(
                "degenerate_box",
                file,
                f"box has zero or negative size ({x2 - x1:g} x {y2 - y1:g} px); dropped",
                line,
                where,
            )
        )
        return None
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        shown = f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) in a {width}x{height} image"
        if cx2 <= cx1 or cy2 <= cy1:
            report.add(
                Problem("out_of_image", file, f"box {shown} lies outside it; dropped", line, where)
            )
            return None
        report.add(
            Problem("out_of_image", file, f"box {shown} extends past it; clipped", line, where)
        )
    return cx1, cy1, cx2, cy2


# --- reading images ------------------------------------------------------------------------


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[0]), int(im.size[1])


def decode_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3) uint8`` of an image file; decompression bombs raise."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_max = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                im.load()
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        finally:
            Image.MAX_IMAGE_PIXELS = old_max


@dataclass
class _Pending:
    """An image and its raw boxes before decoding (boxes are already checked and clipped)."""

    path: Path
    name: str
    boxes: list[tuple[float, float, float, float]]
    labels: list[int]


def _image_files(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and _visible(p.relative_to(folder)) and p.suffix.lower() in IMAGE_EXTENSIONS:
            yield p


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _find_dir(root: Path, name: str) -> Path | None:
    """A folder called ``name`` (any case) at ``root`` or one level down."""
    for depth in (root, *[p for p in sorted(root.iterdir()) if p.is_dir()]):
        for p in sorted(depth.iterdir()):
            if p.is_dir() and p.name.lower() == name.lower() and _visible(Path(p.name)):
                return p
    return None


# --- YOLO ----------------------------------------------------------------------------------


def _yolo_classes(root: Path, base: Path) -> list[str]:
    import yaml

    for name in ("classes.txt", "obj.names", "classes.names"):
        for p in sorted(root.rglob(name)):
            if _visible(p.relative_to(base)):
                names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
                names = [n for n in names if n]
                if names:
                    return names
    for pattern in ("data.yaml", "data.yml", "*.yaml", "*.yml"):
        for p in sorted(root.glob(pattern)):
            try:
                # safe_load: no Python objects; aliases of a hostile file are bounded by size
                doc = yaml.safe_load(p.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{_rel(p, base)} is not readable YAML: {exc}") from exc
            if not isinstance(doc, dict) or "names" not in doc:
                continue
            names = doc["names"]
            if isinstance(names, dict):
                try:
                    keys = sorted(int(k) for k in names)
                except (TypeError, ValueError) as exc:
                    raise DatasetError(f"{_rel(p, base)}: names keys must be integers") from exc
                if keys != list(range(len(keys))):
                    raise DatasetError(f"{_rel(p, base)}: names ids must run 0..{len(keys) - 1}")
                names = [names[k] if k in names else names[str(k)] for k in keys]
            if isinstance(names, list) and names and all(isinstance(n, str | int) for n in names):
                return [str(n) for n in names]
            raise DatasetError(f"{_rel(p, base)}: names must be a list or an id -> name mapping")
    raise DatasetError(
        "a YOLO data set needs its class names: add classes.txt (one name a line, in id order) "
        "or a data.yaml with names: [...]"
    )


def _read_yolo(root: Path, base: Path, report: DetectionReport) -> list[_Pending]:
    images_dir = _find_dir(root, "images")
    labels_dir = _find_dir(root, "labels")
    if images_dir is None or labels_dir is None:
        raise DatasetError("a YOLO data set has images/ and labels/ folders")
    classes = _yolo_classes(root, base)
    report.classes = classes
    by_stem: dict[str, Path] = {}
    for p in _image_files(images_dir):
        key = p.relative_to(images_dir).with_suffix("").as_posix()
        if key in by_stem:
            report.add(
                Problem(
                    "duplicate_image",
                    _rel(p, base),
                    f"same name as {_rel(by_stem[key], base)} (both would read "
                    f"labels/{key}.txt); dropped",
                )
            )
            continue
        by_stem[key] = p
    label_files: dict[str, Path] = {}
    for p in sorted(labels_dir.rglob("*")):
        if not p.is_file() or not _visible(p.relative_to(base)):
            continue
        if p.suffix.lower() != ".txt":
            report.ignored.append(_rel(p, base))
            continue
        key = p.relative_to(labels_dir).with_suffix("").as_posix()
        if key not in by_stem:
            report.add(
                Problem("label_without_image", _rel(p, base), f"no image images/{key}.*; skipped")
            )
            continue
        label_files[key] = p
    pending = []
    for key, img in by_stem.items():
        try:
            width, height = _image_size(img)
        except Exception as exc:
            report.add(Problem("corrupt_image", _rel(img, base), f"{type(exc).__name__}: {exc}"))
            continue
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        lbl = label_files.get(key)
        if lbl is not None:
            rel = _rel(lbl, base)
            try:
                text = lbl.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                report.add(Problem("malformed", rel, "not UTF-8 text; file skipped"))
                text = ""
            for lineno, line in enumerate(text.splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 5:
                    report.add(
                        Problem(
                            "malformed",
                            rel,
                            f"expected 'class cx cy w h', got {len(fields)} fields",
                            lineno,
                        )
                    )
                    continue
                try:
                    cls_f = float(fields[0])
                    cx, cy, w, h = (float(v) for v in fields[1:])
                except ValueError:
                    report.add(Problem("malformed", rel, f"not numbers: {line[:60]!r}", lineno))
                    continue
                if not math.isfinite(cls_f) or cls_f != int(cls_f):
                    report.add(Problem("malformed", rel, f"class id {fields[0]!r}", lineno))
                    continue
                cls = int(cls_f)
                if not 0 <= cls < len(classes):
                    report.add(
                        Problem(
                            "unknown_class",
                            rel,
                            f"class id {cls} is not in 0..{len(classes) - 1}; dropped",
                            lineno,
                        )
                    )
                    continue
                box = (
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                )
                kept = check_box(box, width, height, report, file=rel, line=lineno)
                if kept is not None:
                    boxes.append(kept)
                    labels.append(cls)
        pending.append(_Pending(img, _rel(img, base), boxes, labels))
    return pending


# --- Pascal VOC ----------------------------------------------------------------------------


def parse_voc_xml(data: bytes, file: str) -> Any:
    """The root element of a VOC annotation, parsed with defusedxml: a DTD, an entity
    declaration or an external reference is refused (no billion laughs, no file reads)."""
    import xml.etree.ElementTree as ET

    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        return DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise UnsafeAnnotationError(
            f"{file}: refused, the XML declares a DTD or entities ({type(exc).__name__})"
        ) from exc
    except ET.ParseError as exc:
        raise DatasetError(f"{file}: not well-formed XML ({exc})") from exc


def _voc_float(obj: Any, tag: str) -> float:
    el = obj.find(tag)
    if el is None or el.text is None:
        raise ValueError(f"no <{tag}>")
    return float(el.text.strip())


def _read_voc(root: Path, base: Path, report: DetectionReport) -> list[_Pending]:
    ann_dir = _find_dir(root, "Annotations")
    img_dir = _find_dir(root, "JPEGImages") or _find_dir(root, "images")
    if ann_dir is None or img_dir is None:
        raise DatasetError("a Pascal VOC data set has Annotations/ and JPEGImages/ folders")
    images = {p.relative_to(img_dir).as_posix(): p for p in _image_files(img_dir)}
    by_stem: dict[str, list[str]] = {}
    for k in images:
        by_stem.setdefault(Path(k).stem, []).append(k)
    fixed = None
    for name in ("classes.txt", "labels.txt"):
        cand = root / name
        if cand.is_file():
            fixed = [ln.strip() for ln in cand.read_text(encoding="utf-8").splitlines()]
            fixed = [n for n in fixed if n]
    parsed: list[tuple[str, str, list[tuple[str, tuple[float, float, float, float], str]]]] = []
    claimed: dict[str, str] = {}
    for xml_path in sorted(ann_dir.rglob("*")):
        if not xml_path.is_file() or not _visible(xml_path.relative_to(base)):
            continue
        rel = _rel(xml_path, base)
        if xml_path.suffix.lower() != ".xml":
            report.ignored.append(rel)
            continue
        try:
            doc = parse_voc_xml(xml_path.read_bytes(), rel)
        except UnsafeAnnotationError:
            raise
        except DatasetError as exc:
            report.add(Problem("malformed", rel, str(exc).split(": ", 1)[-1] + "; file skipped"))
            continue
        fn_el = doc.find("filename")
        fname = (fn_el.text or "").strip() if fn_el is not None else ""
        key = fname if fname in images else None
        if key is None:
            stems = by_stem.get(Path(fname).stem if fname else xml_path.stem, [])
            key = stems[0] if len(stems) == 1 else None
        if key is None:
            report.add(
                Problem(
                    "label_without_image",
                    rel,
                    f"no image {fname or xml_path.stem + '.*'} in {_rel(img_dir, base)}/; skipped",
                )
            )
            continue
        if key in claimed:
            report.add(
                Problem(
                    "duplicate_image",
                    rel,
                    f"names image {key}, which {claimed[key]} already annotates; dropped",
                )
            )
            continue
        claimed[key] = rel
        objects = []
        for i, obj in enumerate(doc.findall("object"), 1):
            where = f"object {i}"
            name_el = obj.find("name")
            cname = (name_el.text or "").strip() if name_el is not None else ""
            bb = obj.find("bndbox")
            try:
                if not cname:
                    raise ValueError("no <name>")
                if bb is None:
                    raise ValueError("no <bndbox>")
                box = (
                    _voc_float(bb, "xmin"),
                    _voc_float(bb, "ymin"),
                    _voc_float(bb, "xmax"),
                    _voc_float(bb, "ymax"),
                )
            except ValueError as exc:
                report.add(Problem("malformed", rel, f"{exc}; object dropped", where=where))
                continue
            objects.append((cname, box, where))
        parsed.append((key, rel, objects))
    for key in images:
        if key not in claimed:  # an image without annotation file: a negative
            parsed.append((key, "", []))
    classes = fixed if fixed else sorted({c for _, _, objs in parsed for c, _, _ in objs})
    report.classes = classes
    index = {c: i for i, c in enumerate(classes)}
    pending = []
    for key, rel, objects in sorted(parsed):
        img = images[key]
        try:
            width, height = _image_size(img)
        except Exception as exc:
            report.add(Problem("corrupt_image", _rel(img, base), f"{type(exc).__name__}: {exc}"))
            continue
        boxes, labels = [], []
        for cname, box, where in objects:
            if cname not in index:
                report.add(
                    Problem(
                        "unknown_class",
                        rel,
                        f"class {cname!r} is not in classes.txt; dropped",
                        where=where,
                    )
                )
                continue
            kept = check_box(box, width, height, report, file=rel, where=where)
            if kept is not None:
                boxes.append(kept)
                labels.append(index[cname])
        pending.append(_Pending(img, _rel(img, base), boxes, labels))
    return pending


# --- COCO ----------------------------------------------------------------------------------


def _coco_files(root: Path, base: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for p in sorted(root.rglob("*.json")):
        if not _visible(p.relative_to(base)):
            continue
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if (
            isinstance(doc, dict)
            and isinstance(doc.get("images"), list)
            and isinstance(doc.get("annotations"), list)
        ):
            found.append((p, doc))
    return found


def _read_coco(root: Path, base: Path, report: DetectionReport) -> list[_Pending]:
    files = _coco_files(root, base)
    if not files:
        raise DatasetError('a COCO data set has a JSON file with "images" and "annotations"')
    all_images = list(_image_files(root))
    by_rel = {_rel(p, root): p for p in all_images}
    by_base: dict[str, list[Path]] = {}
    for p in all_images:
        by_base.setdefault(p.name, []).append(p)
    categories: dict[int, str] | None = None
    pending: list[_Pending] = []
    used: set[Path] = set()
    for json_path, doc in files:
        rel_json = _rel(json_path, base)
        cats = {}
        for c in doc.get("categories") or []:
            if isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c:
                cats[int(c["id"])] = str(c["name"])
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DatasetError(f"{rel_json}: its categories differ from the other annotation file")
        ids = sorted(categories)
        report.classes = [categories[i] for i in ids]
        index = {cid: i for i, cid in enumerate(ids)}
        entries: dict[int, tuple[Path, int, int]] = {}
        seen_names: dict[str, int] = {}
        for n, im in enumerate(doc["images"]):
            if not isinstance(im, dict) or not isinstance(im.get("id"), int):
                report.add(Problem("malformed", rel_json, "image entry without an integer id", where=f"images[{n}]"))  # fmt: skip
                continue
            iid, fname = int(im["id"]), str(im.get("file_name", ""))
            where = f"image id {iid}"
            if iid in entries or fname in seen_names:
                other = iid if iid in entries else seen_names[fname]
                report.add(
                    Problem(
                        "duplicate_image",
                        rel_json,
                        f"{fname!r} repeats image id {other}'s id or file name; dropped",
                        where=where,
                    )
                )
                continue
            path = None
            for cand in (json_path.parent / fname, root / fname, root / "images" / fname):
                if cand.is_file() and cand.resolve().is_relative_to(base.resolve()):
                    path = cand
                    break
            if path is None and len(by_base.get(Path(fname).name, [])) == 1:
                path = by_base[Path(fname).name][0]
            if path is None or path.suffix.lower() not in IMAGE_EXTENSIONS:
                report.add(
                    Problem(
                        "label_without_image",
                        rel_json,
                        f"image file {fname!r} is not in the archive; its annotations skipped",
                        where=where,
                    )
                )
                continue
            seen_names[fname] = iid
            try:
                width, height = _image_size(path)
            except Exception as exc:
                report.add(Problem("corrupt_image", _rel(path, base), f"{type(exc).__name__}: {exc}"))  # fmt: skip
                continue
            entries[iid] = (path, width, height)
        boxes: dict[int, list[tuple[float, float, float, float]]] = {i: [] for i in entries}
        labels: dict[int, list[int]] = {i: [] for i in entries}
        for n, ann in enumerate(doc["annotations"]):
            aid = ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}"
            where = f"annotation id {aid}"
            if not isinstance(ann, dict):
                report.add(Problem("malformed", rel_json, "annotation is not an object", where=where))  # fmt: skip
                continue
            target = ann.get("image_id")
            bbox = ann.get("bbox")
            if not (
                isinstance(bbox, list)
                and len(bbox) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            ):
                report.add(Problem("malformed", rel_json, "bbox is not [x, y, w, h]", where=where))
                continue
            if not isinstance(target, int) or target not in entries:
                report.add(
                    Problem(
                        "label_without_image",
                        rel_json,
                        f"image_id {target!r} names no usable image; dropped",
                        where=where,
                    )
                )
                continue
            cid = ann.get("category_id")
            if not isinstance(cid, int) or cid not in index:
                report.add(
                    Problem(
                        "unknown_class",
                        rel_json,
                        f"category_id {cid!r} is not among the categories; dropped",
                        where=where,
                    )
                )
                continue
            _, width, height = entries[target]
            x, y, w, h = (float(v) for v in bbox)
            kept = check_box(
                (x, y, x + w, y + h), width, height, report, file=rel_json, where=where
            )
            if kept is not None:
                boxes[target].append(kept)
                labels[target].append(index[cid])
        for iid, (path, _, _) in entries.items():
            used.add(path)
            pending.append(_Pending(path, _rel(path, base), boxes[iid], labels[iid]))
    for p in by_rel.values():
        if p not in used:
            report.ignored.append(_rel(p, base))
    pending.sort(key=lambda pd: pd.name)
    return pending


def format_from_names(names: Sequence[str]) -> DetectionFormat | None:
    """A guess at a zip's detection format from its entry names alone (nothing extracted):
    ``voc`` for ``Annotations/*.xml``, ``yolo`` for ``labels/*.txt`` beside ``images/``,
    ``coco`` for any ``.json`` (confirmed only once read: see :func:`detect_format`)."""
    parts = [[p.lower() for p in n.split("/") if p] for n in names]
    parts = [p for p in parts if p and not any(x.startswith(".") or x == "__macosx" for x in p)]
    if any("annotations" in p[:-1] and p[-1].endswith(".xml") for p in parts):
        return "voc"
    if any("labels" in p[:-1] and p[-1].endswith(".txt") for p in parts) and any(
        "images" in p[:-1] for p in parts
    ):
        return "yolo"
    if any(p[-1].endswith(".json") for p in parts):
        return "coco"
    return None


# --- drawing -------------------------------------------------------------------------------

# Distinct box colours (Okabe-Ito, then a few more), cycled by class index.
BOX_COLORS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
    (255, 0, 0),
    (0, 255, 0),
)


def draw_boxes(sample: DetectionSample, classes: Sequence[str], *, side: int = 192) -> Any:
    """A PIL image of ``sample`` scaled so its longer side is ``side`` pixels, every box drawn
    in its class's colour with the class name above it."""
    from PIL import Image, ImageDraw

    scale = side / max(sample.width, sample.height)
    size = (max(1, round(sample.width * scale)), max(1, round(sample.height * scale)))
    image = Image.fromarray(sample.image).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
        color = BOX_COLORS[int(label) % len(BOX_COLORS)]
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=color, width=2)
        name = str(classes[int(label)]) if 0 <= int(label) < len(classes) else str(label)
        ty = y1 - 11 if y1 >= 11 else y2 + 1
        text_box = draw.textbbox((x1, ty), name)
        draw.rectangle(text_box, fill=(0, 0, 0))
        draw.text((x1, ty), name, fill=color)
    return image


def samples_per_class(
    bundle: DetectionBundle, per_class: int = 2
) -> dict[str, list[DetectionSample]]:
    """Up to ``per_class`` images holding each class (train first, then val and test), an
    image used for one class not used again for another where others exist."""
    out: dict[str, list[DetectionSample]] = {c: [] for c in bundle.classes}
    used: set[int] = set()
    every = bundle.train + bundle.val + bundle.test
    for i, name in enumerate(bundle.classes):
        for s in every:
            if len(out[name]) >= per_class:
                break
            if id(s) not in used and i in s.labels.tolist():
                out[name].append(s)
                used.add(id(s))
    return out


# --- format detection and loading ----------------------------------------------------------


def detect_format(root: Path) -> DetectionFormat | None:
    """``yolo``, ``voc`` or ``coco`` from an extracted folder's layout, or ``None``.

    VOC: an ``Annotations/`` folder with ``.xml`` files; YOLO: a ``labels/`` folder with
    ``.txt`` files next to ``images/``; COCO: a JSON file with ``images`` and ``annotations``.
    """
    root = _find_root(root)
    ann = _find_dir(root, "Annotations")
    if ann is not None and any(p.suffix.lower() == ".xml" for p in ann.rglob("*")):
        return "voc"
    labels = _find_dir(root, "labels")
    if (
        labels is not None
        and _find_dir(root, "images") is not None
        and any(p.suffix.lower() == ".txt" for p in labels.rglob("*"))
    ):
        return "yolo"
    if _coco_files(root, root):
        return "coco"
    return None


def _dominant_class(labels: np.ndarray, negative: int) -> int:
    if not len(labels):
        return negative
    counts = Counter(int(v) for v in labels.tolist())
    return min(counts, key=lambda c: (-counts[c], c))


def split_samples(
    samples: Sequence[DetectionSample],
    num_classes: int,
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, list[DetectionSample]]:
    """Train/val/test from the split seed alone, stratified by each image's dominant class."""
    strata = [_dominant_class(s.labels, num_classes) for s in samples]
    tr, va, te = stratified_split3(
        strata, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )
    return {
        "train": [samples[i] for i in tr],
        "val": [samples[i] for i in va],
        "test": [samples[i] for i in te],
    }


def _finish(
    name: str,
    fmt: DetectionFormat,
    report: DetectionReport,
    samples: list[DetectionSample],
    *,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
) -> DetectionBundle:
    n_boxes = sum(len(s.boxes) for s in samples)
    if n_boxes == 0:
        first = "; ".join(str(p) for p in report.problems[:3])
        raise DatasetError(
            f"no usable box in {len(samples)} images"
            + (f" ({report.problem_total} problems, first: {first})" if first else "")
            + "; a detection data set needs at least one labelled object"
        )
    splits = split_samples(
        samples,
        len(report.classes),
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    for label, part in splits.items():
        if not part:
            raise DatasetError(
                f"the {label} split is empty: {len(samples)} usable images are too few to split"
            )
    _fill_counts(report, splits)
    report.split_sources = dict.fromkeys(SPLITS, "carved")
    return DetectionBundle(
        name=name,
        format=fmt,
        classes=list(report.classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        report=report,
        split_seed=split_seed,
    )


def read_detection_folder(
    folder: Path | str,
    *,
    name: str = "",
    fmt: DetectionFormat | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_side: int | None = None,
) -> DetectionBundle:
    """Read an extracted YOLO, VOC or COCO folder (``fmt`` detected when not given).

    Images are decoded into memory; ``max_side`` shrinks any image whose longer side is larger
    to that many pixels (its boxes with it) to bound the memory a large set takes. The report
    still counts sizes in the files' pixels.

    Raises:
        DatasetError: the layout is not recognised, a VOC file declares a DTD or entities,
            the class names are missing, or no usable box is left.
    """
    base = Path(folder)
    root = _find_root(base)
    fmt = fmt or detect_format(root)
    if fmt is None:
        raise NotDetectionError(
            "not a detection data set: expected YOLO (images/ + labels/*.txt + classes.txt or "
            "data.yaml), Pascal VOC (Annotations/*.xml + JPEGImages/) or COCO (a JSON file with "
            "images and annotations, and the images)"
        )
    if fmt not in FORMATS:
        raise DatasetError(f"unknown detection format {fmt!r}; use one of {', '.join(FORMATS)}")
    report = DetectionReport(name=name or root.name, format=fmt, classes=[], split_seed=split_seed)
    reader = {"yolo": _read_yolo, "voc": _read_voc, "coco": _read_coco}[fmt]
    pending = reader(root, base, report)
    if not report.classes:
        raise DatasetError("no class names found; a detection data set needs at least one class")
    samples = []
    for pd in pending:
        try:
            image = decode_rgb(pd.path)
        except Exception as exc:  # any decoder failure makes the image unusable, not the set
            report.add(Problem("corrupt_image", pd.name, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        boxes = np.asarray(pd.boxes, dtype=np.float32).reshape(-1, 4)
        source: tuple[int, int] | None = None
        h, w = image.shape[:2]
        if max_side is not None and max(h, w) > max_side:
            image, boxes = _shrink(image, boxes, max_side)
            source = (w, h)
        samples.append(DetectionSample(pd.name, image, boxes, np.asarray(pd.labels), source))
    return _finish(
        report.name,
        fmt,
        report,
        samples,
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


def _shrink(image: np.ndarray, boxes: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR)
    factors = np.asarray([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    return np.asarray(small, dtype=np.uint8).copy(), boxes * factors


def load_detection_zip(
    zip_path: Path | str,
    work_dir: Path | str,
    *,
    fmt: DetectionFormat | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_total_bytes: int | None = None,
    max_side: int | None = None,
) -> DetectionBundle:
    """Extract a detection zip safely (:func:`compression.archive.safe_extract_zip`, into
    ``work_dir/extracted``) and read it with :func:`read_detection_folder`.

    Raises:
        UnsafeArchiveError: the archive is refused.
        DatasetError: see :func:`read_detection_folder`.
    """
    from compression.archive import safe_extract_zip

    zip_path = Path(zip_path)
    dest = Path(work_dir) / "extracted"
    kwargs: dict[str, Any] = {}
    if max_total_bytes is not None:
        kwargs["max_total_bytes"] = max_total_bytes
    safe_extract_zip(zip_path, dest, **kwargs)
    return read_detection_folder(
        dest,
        name=zip_path.stem,
        fmt=fmt,
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_side=max_side,
    )


# --- the built-in set: MNIST digits on photographs -----------------------------------------

BUILTIN_DETECTION_DATASETS = ("mnist_scenes",)
SCENE_PHOTOS = ("china.jpg", "flower.jpg")
# Columns of each photo that only test images crop from (train and val crop left of it).
TEST_BAND = 0.25


@dataclass(frozen=True)
class SceneConfig:
    """How ``mnist_scenes`` is generated. Everything follows from these values."""

    seed: int = 0
    size: int = 96  # square images, pixels
    n_train: int = 1050
    n_val: int = 150
    n_test: int = 300
    min_digits: int = 1
    max_digits: int = 5
    min_side: float = 0.16  # a digit's pasted side, as a share of the image side
    max_side: float = 0.42
    max_overlap: float = 0.1  # largest IoU between two digits of one image
    test_digit_fraction: float = 0.2  # MNIST digits kept for test images only


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paste_digit(
    canvas: np.ndarray, digit: np.ndarray, x: int, y: int, side: int, color: Sequence[int]
) -> tuple[float, float, float, float] | None:
    """Paste a 28x28 MNIST ``digit`` scaled to ``side`` pixels at ``(x, y)`` onto ``canvas``
    (``(H, W, 3) uint8``, changed in place), its ink in ``color`` blended by the ink's
    intensity. Returns the tight box of the ink actually drawn, or ``None`` if none was."""
    from PIL import Image

    alpha_img = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(alpha_img, dtype=np.float32) / 255.0
    alpha[alpha < 0.1] = 0.0  # bilinear halos below 10% ink are not drawn (nor boxed)
    h, w = canvas.shape[:2]
    a = alpha[: max(0, h - y), : max(0, w - x)]
    if not a.any():
        return None
    region = canvas[y : y + a.shape[0], x : x + a.shape[1]].astype(np.float32)
    ink = np.asarray(color, dtype=np.float32).reshape(1, 1, 3)
    blended = region * (1.0 - a[..., None]) + ink * a[..., None]
    canvas[y : y + a.shape[0], x : x + a.shape[1]] = np.clip(np.rint(blended), 0, 255).astype(
        np.uint8
    )
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    return (
        float(x + cols[0]),
        float(y + rows[0]),
        float(x + cols[-1] + 1),
        float(y + rows[-1] + 1),
    )


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    return [np.asarray(load_sample_image(n), dtype=np.uint8) for n in SCENE_PHOTOS]


def _crop(photo: np.ndarray, size: int, rng: random.Random, test: bool) -> np.ndarray:
    from PIL import Image

    h, w = photo.shape[:2]
    band = round(w * (1.0 - TEST_BAND))
    lo, hi = (band, w) if test else (0, band)
    max_side = min(h, hi - lo)
    side = rng.randint(min(size, max_side), max_side)
    x = rng.randint(lo, hi - side)
    y = rng.randint(0, h - side)
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8).copy()


def compose_scene(
    background: np.ndarray,
    digits: Sequence[tuple[np.ndarray, int]],
    rng: random.Random,
    cfg: SceneConfig,
) -> tuple[np.ndarray, list[tuple[float, float, float, float]], list[int]]:
    """Paste ``digits`` (``(28x28 uint8, class)``) at random scales, places and colours onto
    a copy of ``background``, none overlapping another by more than ``cfg.max_overlap`` IoU.
    A digit that finds no free place in 30 tries is left out."""
    canvas = background.copy()
    size = canvas.shape[0]
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    for digit, cls in digits:
        for _ in range(30):
            side = rng.randint(round(cfg.min_side * size), round(cfg.max_side * size))
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            guess = (float(x), float(y), float(x + side), float(y + side))
            if all(_iou(guess, b) <= cfg.max_overlap for b in boxes):
                break
        else:
            continue
        # Ink contrasts with what is under it: light on a dark patch, dark on a light one.
        under = canvas[y : y + side, x : x + side].mean()
        base = rng.randint(200, 255) if under < 128 else rng.randint(0, 55)
        color = [min(255, max(0, base + rng.randint(-40, 40))) for _ in range(3)]
        box = paste_digit(canvas, digit, x, y, side, color)
        if box is not None:
            boxes.append(box)
            labels.append(int(cls))
    return canvas, boxes, labels


def load_mnist_scenes(cfg: SceneConfig | None = None) -> DetectionBundle:
    """The built-in detection set ``mnist_scenes``: 1 to 5 real MNIST digits per image, pasted
    onto crops of the two photographs scikit-learn ships, with their boxes; 10 classes.

    Deterministic from ``cfg.seed``. Test images use MNIST digits that no train or val image
    uses (a stratified ``test_digit_fraction`` of the 5,000) and crop only the right
    ``TEST_BAND`` of each photo, which train and val crops never touch.
    """
    cfg = cfg or SceneConfig()
    if cfg.size < 32 or not 1 <= cfg.min_digits <= cfg.max_digits:
        raise DatasetError("mnist_scenes needs size >= 32 and 1 <= min_digits <= max_digits")
    pixels, digit_labels = read_mnist_5k()
    fit_pool, test_pool = stratified_split(
        digit_labels.tolist(), val_fraction=cfg.test_digit_fraction, seed=cfg.seed
    )
    photos = _photos()
    classes = [str(d) for d in range(10)]
    report = DetectionReport(
        name="mnist_scenes", format="builtin", classes=classes, split_seed=cfg.seed
    )
    splits: dict[str, list[DetectionSample]] = {}
    for split, count in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        rng = random.Random(f"mnist_scenes/{cfg.seed}/{split}")
        pool = test_pool if split == "test" else fit_pool
        out = []
        for i in range(count):
            photo = photos[rng.randrange(len(photos))]
            background = _crop(photo, cfg.size, rng, test=split == "test")
            n = rng.randint(cfg.min_digits, cfg.max_digits)
            chosen = [pool[rng.randrange(len(pool))] for _ in range(n)]
            digits = [(pixels[j], int(digit_labels[j])) for j in chosen]
            image, boxes, labels = compose_scene(background, digits, rng, cfg)
            out.append(
                DetectionSample(
                    f"{split}/{i:05d}.png", image, np.asarray(boxes), np.asarray(labels)
                )
            )
        splits[split] = out
    _fill_counts(report, splits)
    report.split_sources = dict.fromkeys(SPLITS, "fixed")
    return DetectionBundle(
        name="mnist_scenes",
        format="builtin",
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        report=report,
        split_seed=cfg.seed,
    )


# Bump when something outside the code fingerprinted below changes what ``load_mnist_scenes``
# makes (a change to this module, compression/datasets.py or compression/dataset_files.py changes
# the fingerprint itself).
MNIST_SCENES_VERSION = 1


def builtin_detection_fingerprint(name: str, *, seed: int = 0, size: int | None = None) -> str:
    """A name for exactly what ``load_builtin_detection(name, seed=seed, size=size)`` returns,
    safe as a file name: ``<name>-seed<seed>-v<version>-<digest>``.

    The set is deterministic, so equal fingerprints mean equal sets (images, boxes, report).
    The digest covers :data:`MNIST_SCENES_VERSION`, every :class:`SceneConfig` field, the source
    of the modules that generate and report the set (this one, ``compression.datasets`` and
    ``compression.dataset_files``), the MNIST file's bytes and the scikit-learn release whose
    photographs it crops; so a changed generator gives a new fingerprint without anyone remembering to bump the version.
    """
    import dataclasses
    import hashlib
    import importlib.metadata

    from compression import dataset_files, datasets

    if name not in BUILTIN_DETECTION_DATASETS:
        raise DatasetError(f"unknown built-in detection data set {name!r}")
    cfg = SceneConfig(seed=seed, size=size or SceneConfig.size)
    digest = hashlib.sha256()
    digest.update(json.dumps([name, MNIST_SCENES_VERSION, dataclasses.asdict(cfg)]).encode())
    sources = (Path(__file__), Path(datasets.__file__), Path(dataset_files.__file__))
    for source in (*sources, dataset_files.mnist_5k_path()):
        digest.update(source.read_bytes())
    digest.update(importlib.metadata.version("scikit-learn").encode())
    return f"{name}-seed{seed}-v{MNIST_SCENES_VERSION}-{digest.hexdigest()[:16]}"


def load_builtin_detection(name: str, *, seed: int = 0, size: int | None = None) -> DetectionBundle:
    """A built-in detection set by name (only ``mnist_scenes`` so far)."""
    if name == "mnist_scenes":
        return load_mnist_scenes(SceneConfig(seed=seed, size=size or SceneConfig.size))
    raise DatasetError(
        f"unknown built-in detection data set {name!r}; use one of "
        f"{', '.join(BUILTIN_DETECTION_DATASETS)}"
    )
