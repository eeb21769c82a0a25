"""The whole-archive expansion cap: on the declared sizes before anything is written, and on the
bytes that come out while streaming (headers can lie)."""

from __future__ import annotations

import zipfile

import pytest
from hostile_corpus import MiB, zip_many_small_bombs

from compression.archive import ArchiveLimits, _stream_entries, safe_extract_zip, validate_zip
from compression.errors import UnsafeArchiveError


def test_many_entries_each_under_the_per_entry_check_are_refused_together(tmp_path):
    bomb = zip_many_small_bombs(tmp_path / "bomb.zip", entries=100)  # 100 MiB of zeros
    with pytest.raises(UnsafeArchiveError, match=r"more than 100 times its size \(zip bomb\?\)"):
        safe_extract_zip(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]  # no staging folder left


def test_the_streaming_count_holds_when_the_declared_sizes_pass(tmp_path):
    bomb = zip_many_small_bombs(tmp_path / "bomb.zip", entries=8)
    with zipfile.ZipFile(bomb) as zf:
        entries = validate_zip(zf, ArchiveLimits())  # 8 MiB: under the archive check's floor
        tight = ArchiveLimits(total_ratio_min_bytes=2 * MiB, archive_bytes=bomb.stat().st_size)
        with pytest.raises(UnsafeArchiveError, match=r"takes the archive past 100 times its size"):
            _stream_entries(zf, entries, tmp_path, tight)


def test_an_ordinary_archive_passes(tmp_path):
    path = tmp_path / "ok.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(20):
            # 1 MiB that compresses well; 20 MiB in all stays under the archive check's floor
            zf.writestr(f"cat/{i}.bin", bytes(range(256)) * 4096)
    out = safe_extract_zip(path, tmp_path / "out")
    assert len(out) == 20
