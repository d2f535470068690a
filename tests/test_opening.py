"""Opening: what the path names, sizes checked up front, errors that say what to do."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

import mmwal


def test_an_mmap_is_a_record_as_its_type_promises(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"mapped payload")
    with (
        source.open("rb") as file,
        mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapping,
        mmwal.open(tmp_path / "a.wal") as wal,
    ):
        wal.append(mapping)
        wal.append_many([mapping, b"plain"])
        wal.append_and_sync(mapping)
        with pytest.raises(TypeError, match="iterable of records"):
            wal.append_many(mapping)  # type: ignore[arg-type]
        assert [record.data for record in wal] == [b"mapped payload"] * 2 + [
            b"plain",
            b"mapped payload",
        ]


def test_a_path_ending_in_a_separator_is_a_new_segmented_log(tmp_path: Path) -> None:
    with mmwal.open(f"{tmp_path}/orders/") as wal:
        wal.append(b"x")
        assert isinstance(wal.store, mmwal.SegmentStore)
    assert (tmp_path / "orders" / "00000000000000000000.wal").is_file()


def test_segment_size_on_a_single_file_log_says_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        wal.append(b"x")
    with pytest.raises(FileExistsError, match="single-file log") as caught:
        mmwal.open(path, segment_size=1 << 20)
    assert "without segment_size" in str(caught.value)


@pytest.mark.parametrize("size", [2**40 * 1024, 2**63])
def test_an_impossible_segment_size_is_refused_before_anything_is_created(
    tmp_path: Path, size: int
) -> None:
    with pytest.raises(ValueError, match=f"segment_size={size}"):
        mmwal.open(tmp_path / "log", segment_size=size)
    assert not (tmp_path / "log").exists()


def test_a_first_segment_larger_than_the_free_space_is_refused_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_statvfs = os.statvfs

    def nearly_full(path: Any) -> os.statvfs_result:
        stats = real_statvfs(path)
        fields = list(stats)
        fields[4] = 10  # f_bavail: ten blocks free
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", nearly_full)
    with pytest.raises(OSError, match="free") as caught:
        mmwal.open(tmp_path / "log", segment_size=1 << 30)
    assert caught.value.errno == errno.ENOSPC
    assert not (tmp_path / "log").exists()
    # A read-only open writes nothing, so free space does not matter to it.
    (tmp_path / "empty").mkdir()
    with mmwal.open(tmp_path / "empty", segment_size=1 << 30, readonly=True) as wal:
        assert wal.is_empty


def test_a_writable_open_refused_by_permissions_hints_at_readonly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        wal.append(b"x")
    real_open = os.open

    def no_write(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == str(path) and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, flags, *args, **kwargs)

    # Root ignores file modes, so the refusal is simulated.
    monkeypatch.setattr(os, "open", no_write)
    with pytest.raises(PermissionError, match="readonly=True"):
        mmwal.open(path)
    with mmwal.open(path, readonly=True) as wal:
        assert [record.data for record in wal] == [b"x"]
