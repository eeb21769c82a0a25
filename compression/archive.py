"""Extract untrusted zip files: every name is validated first, and byte caps hold while streaming.

Nothing is written unless the whole archive passes the name checks; output goes to a private
temporary folder that is renamed into place only on success, and is removed on any failure.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from compression.errors import UnsafeArchiveError

GiB = 1024**3
MiB = 1024**2

NESTED_ARCHIVE_SUFFIXES = (
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz", ".xz", ".txz", ".zst", ".7z", ".rar", ".jar",
)  # fmt: skip
MAX_NAME_BYTES = 1024  # a whole path inside the archive
MAX_COMPONENT_BYTES = 255  # one path component (the usual filesystem limit)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for one archive. ``max_ratio`` applies to an entry once it passes
    ``ratio_min_bytes``, and to the whole archive (everything it expands to over its own size
    on disk) once the total passes ``total_ratio_min_bytes``: a thousand entries of 1 MiB of
    zeros each pass the per-entry check but not the archive's."""

    max_entries: int = 20_000
    max_total_bytes: int = 2 * GiB
    max_entry_bytes: int = 512 * MiB
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1 * MiB
    total_ratio_min_bytes: int = 64 * MiB
    archive_bytes: int = 0  # the archive's size on disk; 0: the entries' compressed sizes


def _archive_ratio_exceeded(limits: ArchiveLimits, expanded: int, packed: int) -> bool:
    return expanded > limits.total_ratio_min_bytes and expanded > limits.max_ratio * max(packed, 1)


def _refuse(name: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"archive refused: entry {name!r} {why}")


def _check_name(info: zipfile.ZipInfo) -> str:
    """Return the NFC-normalised name of a safe entry, or raise."""
    raw = info.orig_filename  # zipfile cuts names at NUL in .filename; the original keeps it
    if "\x00" in raw:
        raise _refuse(raw, "contains a NUL byte")
    if "\\" in raw:
        raise _refuse(raw, "contains a backslash")
    if raw.startswith("/"):
        raise _refuse(raw, "is an absolute path")
    if _DRIVE.match(raw):
        raise _refuse(raw, "starts with a drive letter")
    if any(ord(ch) < 32 for ch in raw):
        raise _refuse(raw, "contains a control character")
    name = unicodedata.normalize("NFC", raw)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise _refuse(raw[:80] + "...", f"has a name longer than {MAX_NAME_BYTES} bytes")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise _refuse(raw, "has an empty name")
    for part in parts:
        if part == "..":
            raise _refuse(raw, "points outside the archive ('..')")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _refuse(
                raw[:80] + "...", f"has a path component longer than {MAX_COMPONENT_BYTES} bytes"
            )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(raw, "is a symbolic link")
    # Many writers store permission bits only (no file type); only a stated odd type is refused.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(raw, "is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise _refuse(raw, "is encrypted")
    if not info.is_dir() and name.lower().endswith(NESTED_ARCHIVE_SUFFIXES):
        raise _refuse(raw, "is a nested archive; upload one flat zip")
    return "/".join(parts) + ("/" if info.is_dir() else "")


def validate_zip(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every entry's name and declared size; return ``(info, safe_name)`` pairs."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(
            f"archive refused: {len(infos)} entries, more than the limit of {limits.max_entries}"
        )
    seen: dict[str, str] = {}
    files: set[str] = set()
    out: list[tuple[zipfile.ZipInfo, str]] = []
    declared_total = 0
    for info in infos:
        name = _check_name(info)
        key = name.rstrip("/")
        if key in seen and not (info.is_dir() and seen[key].endswith("/")):
            raise _refuse(
                info.orig_filename, f"duplicates {seen[key]!r} (after Unicode normalisation)"
            )
        seen[key] = name
        if not info.is_dir():
            files.add(key)
            declared_total += info.file_size
            if info.file_size > limits.max_entry_bytes:
                raise _refuse(
                    info.orig_filename, f"declares {info.file_size} bytes, over the per-file limit"
                )
            if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(
                info.compress_size, 1
            ):
                raise _refuse(
                    info.orig_filename, f"compresses more than {limits.max_ratio:g}:1 (zip bomb?)"
                )
        out.append((info, name))
    if declared_total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"archive refused: it declares {declared_total} bytes, over the limit of {limits.max_total_bytes}"
        )
    packed = limits.archive_bytes or sum(i.compress_size for i in infos)
    if _archive_ratio_exceeded(limits, declared_total, packed):
        raise UnsafeArchiveError(
            f"archive refused: its {packed} bytes expand to {declared_total} bytes, more than "
            f"{limits.max_ratio:g} times its size (zip bomb?)"
        )
    # A file that is also a folder of another entry cannot be extracted faithfully.
    for key in seen:
        for parent in PurePosixPath(key).parents:
            if str(parent) in files:
                raise _refuse(key, f"sits below {str(parent)!r}, which is a file")
    return out


def safe_extract_zip(
    zip_path: Path | str,
    dest: Path | str,
    *,
    max_entries: int = 20_000,
    max_total_bytes: int = 2 * GiB,
    max_ratio: float = 100.0,
    max_entry_bytes: int = 512 * MiB,
    ratio_min_bytes: int = 1 * MiB,
    total_ratio_min_bytes: int = 64 * MiB,
) -> list[Path]:
    """Extract ``zip_path`` into ``dest`` (which must not exist or be empty).

    Args:
        zip_path: the archive.
        dest: the folder to create.
        max_entries: most entries allowed (files and folders).
        max_total_bytes: most decompressed bytes in all, counted while streaming.
        max_ratio: highest decompressed/compressed ratio, per entry (after ``ratio_min_bytes``)
            and for the whole archive over its size on disk (after ``total_ratio_min_bytes``),
            checked on the declared sizes first and on the bytes that come out while streaming.
        max_entry_bytes: most decompressed bytes in one entry.
        ratio_min_bytes: entries smaller than this are not ratio-checked (tiny files compress well).
        total_ratio_min_bytes: archives expanding to less than this in all are not ratio-checked.

    Returns:
        The extracted files, in archive order.

    Raises:
        UnsafeArchiveError: naming the offending entry; nothing is left in ``dest``.
    """
    zip_path = Path(zip_path)
    try:
        archive_bytes = zip_path.stat().st_size
    except OSError as exc:
        raise UnsafeArchiveError(f"not a readable zip file: {exc}") from exc
    limits = ArchiveLimits(
        max_entries=max_entries,
        max_total_bytes=max_total_bytes,
        max_entry_bytes=max_entry_bytes,
        max_ratio=max_ratio,
        ratio_min_bytes=ratio_min_bytes,
        total_ratio_min_bytes=total_ratio_min_bytes,
        archive_bytes=archive_bytes,
    )
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UnsafeArchiveError(f"extraction target {dest} exists and is not empty")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"not a readable zip file: {exc}") from exc
    with zf:
        entries = validate_zip(zf, limits)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            relative = _stream_entries(zf, entries, staging, limits)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return [dest / r for r in relative]


def _stream_entries(
    zf: zipfile.ZipFile,
    entries: list[tuple[zipfile.ZipInfo, str]],
    root: Path,
    limits: ArchiveLimits,
) -> list[str]:
    root_resolved = root.resolve()
    total = 0
    packed = limits.archive_bytes or sum(info.compress_size for info, _ in entries)
    written: list[str] = []
    for info, name in entries:
        target = root / name
        # Defence in depth: the name checks already exclude escapes, but verify the real path.
        if not str(target.resolve()).startswith(str(root_resolved) + os.sep):
            raise _refuse(info.orig_filename, "resolves outside the target folder")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        entry_bytes = 0
        try:
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    # Count what actually comes out; the sizes in the headers can lie.
                    entry_bytes += len(chunk)
                    total += len(chunk)
                    if entry_bytes > limits.max_entry_bytes:
                        raise _refuse(
                            info.orig_filename,
                            f"expands past the per-file limit of {limits.max_entry_bytes} bytes",
                        )
                    if total > limits.max_total_bytes:
                        raise _refuse(
                            info.orig_filename,
                            f"takes the archive past the limit of {limits.max_total_bytes} bytes",
                        )
                    if _archive_ratio_exceeded(limits, total, packed):
                        raise _refuse(
                            info.orig_filename,
                            f"takes the archive past {limits.max_ratio:g} times its size of "
                            f"{packed} bytes (zip bomb?)",
                        )
                    if (
                        entry_bytes > limits.ratio_min_bytes
                        and entry_bytes > limits.max_ratio * max(info.compress_size, 1)
                    ):
                        raise _refuse(
                            info.orig_filename,
                            f"expands more than {limits.max_ratio:g}:1 (zip bomb?)",
                        )
                    out.write(chunk)
        except UnsafeArchiveError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            # A CRC error or a size mismatch also lands here: the header lied or the data is bad.
            raise _refuse(info.orig_filename, f"could not be extracted: {exc}") from exc
        written.append(name)
    return written
