"""A built-in data set's validation, computed once per machine and reused by every organisation.

``mnist_scenes`` is generated from its name, its seed and the generator's code alone
(``compression.detection_data.builtin_detection_fingerprint``), so every organisation's copy
validates to the same report and the same box-drawn samples. The first validation (about 7 s
and 1 GB in the sandbox child) stores them under ``DATA_DIR/cache/builtin-datasets/<key>/``;
later ones copy them from there. The key also covers the child's own code (which draws the
samples), so a changed generator or child misses and validates afresh. Why a cache and not a
lazy validation: docs/decisions.md.

An entry is built in a temporary folder beside it and renamed into place, so a reader sees a
whole entry or none. The cache is a speed-up only: an entry that cannot be read is a miss, and
one that cannot be written is logged and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

from webapp.catalog.models import Dataset, DatasetKind

log = logging.getLogger(__name__)

# The built-in kinds whose validation is cached (the ones that cost seconds and a gigabyte).
CACHED_KINDS = frozenset({DatasetKind.MNIST_SCENES})
ENTRY_FILE = "entry.json"
CHILD_SOURCE = Path(__file__).resolve().parent.parent / "inspect_child.py"


def cache_root() -> Path:
    return Path(settings.DATA_DIR) / "cache" / "builtin-datasets"


def cache_key(dataset: Dataset) -> str | None:
    """The entry a built-in data set's validation is kept under; None for any other set."""
    if not dataset.is_builtin or dataset.kind not in CACHED_KINDS:
        return None
    from compression.detection_data import builtin_detection_fingerprint

    generator = builtin_detection_fingerprint(str(dataset.kind), seed=int(dataset.split_seed))
    child = hashlib.sha256(CHILD_SOURCE.read_bytes()).hexdigest()[:8]
    return f"{generator}-{child}"


def cache_get(key: str) -> tuple[dict[str, Any], dict[str, list[Path]]] | None:
    """The stored ``(report, thumbnail files per class)`` for ``key``, or None (a miss)."""
    folder = cache_root() / key
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        report = entry["report"]
        thumbs = {str(k): [folder / str(n) for n in v] for k, v in entry["thumbnails"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(report, dict) or not all(p.is_file() for v in thumbs.values() for p in v):
        return None
    return report, thumbs


def cache_put(key: str, *, report: dict[str, Any], thumbnails: dict[str, list[Path]]) -> None:
    """Store a validation under ``key``, atomically; a failure is logged, never raised."""
    root = cache_root()
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        names: dict[str, list[str]] = {}
        for index, (class_name, files) in enumerate(thumbnails.items()):
            names[class_name] = []
            for n, path in enumerate(files):
                name = f"thumbs/{index}_{n}.png"
                (tmp / "thumbs").mkdir(exist_ok=True)
                shutil.copyfile(path, tmp / name)
                names[class_name].append(name)
        (tmp / ENTRY_FILE).write_text(json.dumps({"report": report, "thumbnails": names}))
        final = root / key
        if final.exists() and cache_get(key) is None:
            shutil.rmtree(final, ignore_errors=True)  # a broken entry: replace it
        try:
            os.rename(tmp, final)
            tmp = None
        except OSError:
            pass  # another worker stored the same entry first; theirs equals ours
    except OSError:
        log.warning("could not cache the validation of %s", key, exc_info=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
