"""Untrusted zips: names are checked before anything is written, byte caps hold while streaming."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from compression.archive import safe_extract_zip
from compression.errors import UnsafeArchiveError


def _zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _assert_nothing_written(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_it_extracts_a_well_formed_archive(tmp_path: Path) -> None:
    src = _zip(tmp_path / "ok.zip", {"a/b.txt": b"hello", "c.txt": b"x" * 10, "d/": b""})
    files = safe_extract_zip(src, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["a/b.txt", "c.txt"]
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "a/../../evil.txt",
        "/etc/evil.txt",
        "C:/evil.txt",
        "c:evil.txt",
        "a\\..\\evil.txt",
        "ok.txt\x00.png",
    ],
)
def test_zip_slip_names_reject_the_whole_archive(tmp_path: Path, name: str) -> None:
    src = tmp_path / "bad.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("first_good.txt", b"fine")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo would sanitise the name; we want it raw in the file
        info.orig_filename = name
        zf.writestr(info, b"evil")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="entry"):
        safe_extract_zip(src, dest)
    _assert_nothing_written(tmp_path, dest)


def test_a_symlink_entry_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "link.zip"
    with zipfile.ZipFile(src, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        safe_extract_zip(src, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("name", ["inner.zip", "data/x.tar.gz", "a.7z", "b.rar", "c.tar"])
def test_a_nested_archive_is_refused(tmp_path: Path, name: str) -> None:
    src = _zip(tmp_path / "n.zip", {"ok.txt": b"1", name: b"PK"})
    with pytest.raises(UnsafeArchiveError, match="nested archive"):
        safe_extract_zip(src, tmp_path / "out")


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    src = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(30)})
    with pytest.raises(UnsafeArchiveError, match="30 entries"):
        safe_extract_zip(src, tmp_path / "out", max_entries=20)


def test_a_high_compression_ratio_is_refused(tmp_path: Path) -> None:
    src = _zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * (4 * 1024 * 1024)})
    with pytest.raises(UnsafeArchiveError, match=r"zeros.bin.*(compresses|expands) more than"):
        safe_extract_zip(src, tmp_path / "out", max_ratio=100)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_the_total_byte_cap_is_enforced(tmp_path: Path) -> None:
    src = _zip(
        tmp_path / "big.zip",
        {f"f{i}.bin": bytes(range(256)) * 40 for i in range(5)},
        compression=zipfile.ZIP_STORED,
    )
    with pytest.raises(UnsafeArchiveError, match="limit"):
        safe_extract_zip(src, tmp_path / "out", max_total_bytes=30_000)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def _lie_about_size(path: Path, name: str, claimed: int) -> None:
    """Rewrite the uncompressed size of ``name`` in both the local and the central header."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for sig, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            name_offset = 30 if sig == b"PK\x03\x04" else 46
            if data[i + name_offset : i + name_offset + len(encoded)] == encoded:
                data[i + size_offset : i + size_offset + 4] = struct.pack("<I", claimed)
            start = i + 4
    path.write_bytes(bytes(data))


def test_headers_that_understate_the_size_do_not_get_past_the_caps(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 400  # 100 KiB that barely compresses
    src = _zip(tmp_path / "liar.zip", {"liar.bin": payload})
    _lie_about_size(src, "liar.bin", 10)
    with pytest.raises(UnsafeArchiveError, match=r"liar.bin"):
        safe_extract_zip(src, tmp_path / "out", max_total_bytes=50_000)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_the_per_entry_cap_counts_streamed_bytes(tmp_path: Path) -> None:
    src = _zip(tmp_path / "e.zip", {"big.bin": bytes(range(256)) * 400})
    _lie_about_size(src, "big.bin", 100)
    with pytest.raises(UnsafeArchiveError, match=r"big.bin"):
        safe_extract_zip(src, tmp_path / "out", max_entry_bytes=1000)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_names_equal_after_unicode_normalisation_are_duplicates(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9.txt", "cafe\u0301.txt"
    src = _zip(tmp_path / "u.zip", {composed: b"1", decomposed: b"2"})
    with pytest.raises(UnsafeArchiveError, match="duplicates"):
        safe_extract_zip(src, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_unicode_names_are_stored_normalised(tmp_path: Path) -> None:
    src = _zip(tmp_path / "u.zip", {"cafe\u0301/\u00fcber.txt": b"1"})
    (path,) = safe_extract_zip(src, tmp_path / "out")
    assert path.relative_to(tmp_path / "out").as_posix() == "caf\u00e9/\u00fcber.txt"


def test_over_long_names_are_refused(tmp_path: Path) -> None:
    src = _zip(tmp_path / "long.zip", {"a" * 300 + ".txt": b"1"})
    with pytest.raises(UnsafeArchiveError, match="longer than"):
        safe_extract_zip(src, tmp_path / "out")


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "no.zip").write_bytes(b"not a zip at all")
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        safe_extract_zip(tmp_path / "no.zip", tmp_path / "out")


def test_it_will_not_extract_over_existing_files(tmp_path: Path) -> None:
    src = _zip(tmp_path / "ok.zip", {"a.txt": b"1"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeArchiveError, match="not empty"):
        safe_extract_zip(src, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
