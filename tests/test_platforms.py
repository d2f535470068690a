"""Platform choices, checked through the ``Syscalls`` seam with the platform faked.

- macOS: ``sync`` must reach ``F_FULLFSYNC`` on every file it flushed (msync alone
  leaves the data in the drive's cache), after the msync, and every fsync is one.
- Copy-on-write file systems: preallocation reserves nothing for overwrites, so a
  writable open makes new btrfs files NOCOW (verified) or refuses with
  ``UnsafeFileSystemError`` unless ``WalConfig(allow_copy_on_write=True)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mmwal
from mmwal import (
    FileStore,
    SegmentStore,
    Syscalls,
    UnsafeFileSystemError,
    Wal,
    WalConfig,
)
from mmwal._filesystems import BTRFS_MAGIC

ZFS_MAGIC = 0x2FC12FC1
EXT4_MAGIC = 0xEF53


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class RecordingSyscalls(Syscalls):
    """Real syscalls on Linux, recording which the faked platform would make.

    ``full_fsync`` (F_FULLFSYNC, which Linux lacks) is recorded with the file it
    names and done as an fsync.
    """

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.calls: list[tuple[str, str]] = []

    def msync(self, address: int, length: int) -> None:
        self.calls.append(("msync", ""))
        super().msync(address, length)

    def full_fsync(self, fd: int) -> None:
        self.calls.append(("full_fsync", fd_path(fd)))
        os.fsync(fd)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="names descriptors through /proc"
)


@needs_proc
def test_on_macos_a_file_log_sync_ends_with_full_fsync_of_the_log(tmp_path: Path) -> None:
    calls = RecordingSyscalls("darwin")
    path = tmp_path / "log"
    with Wal.with_store(FileStore(path, window_size=1 << 16, syscalls=calls)) as wal:
        wal.append(b"first")
        wal.sync()  # the file's creation (fsync -> F_FULLFSYNC), then its data
        calls.calls.clear()
        wal.append(b"second")
        wal.sync()
        # Only the log's own flush: msync, then F_FULLFSYNC of the log file (a
        # recovery point beside it, when one is written, comes after).
        assert calls.calls[:2] == [("msync", ""), ("full_fsync", str(path))]
        calls.calls.clear()
        wal.append_and_sync(b"third")
        assert calls.calls[:2] == [("msync", ""), ("full_fsync", str(path))]


@needs_proc
def test_on_macos_a_segmented_sync_full_fsyncs_every_segment_it_flushed(
    tmp_path: Path,
) -> None:
    calls = RecordingSyscalls("darwin")
    directory = tmp_path / "log"
    with Wal.with_store(SegmentStore(directory, 4096, syscalls=calls)) as wal:
        wal.append(b"a" * 100)
        wal.sync()
        calls.calls.clear()
        wal.append(b"b" * 9000)  # from segment 0 through segment 1 into segment 2
        wal.sync()
        segments = [str(directory / f"{i:020d}.wal") for i in range(3)]
        # The new segments' creation first (fsync is F_FULLFSYNC there), then the
        # data of each segment flushed: msync, then F_FULLFSYNC of that file. (Side
        # files such as the recovery point are fsynced after, F_FULLFSYNC too.)
        log_calls = [call for call in calls.calls if call[0] == "msync" or call[1] in segments]
        data = log_calls[-6:]
        assert data == [call for path in segments for call in (("msync", ""), ("full_fsync", path))]
        for path in segments[1:]:
            assert ("full_fsync", path) in log_calls[:-6]
        side = [path for name, path in calls.calls if name == "full_fsync" and path not in segments]
        assert all(os.path.dirname(path) == str(directory) for path in side)


@needs_proc
def test_on_macos_fsync_is_full_fsync(tmp_path: Path) -> None:
    calls = RecordingSyscalls("darwin")
    path = tmp_path / "file"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        calls.fsync(fd)
    finally:
        os.close(fd)
    assert calls.calls == [("full_fsync", str(path))]


@pytest.mark.parametrize("platform", ["linux", "freebsd13"])
def test_elsewhere_sync_is_msync_alone(tmp_path: Path, platform: str) -> None:
    calls = RecordingSyscalls(platform)
    store = SegmentStore(tmp_path / "log", 4096, syscalls=calls, sync_method="msync")
    with Wal.with_store(store) as wal:
        wal.append(b"a" * 5000)
        wal.sync()
    assert set(calls.names()) == {"msync"}
    assert calls.names().count("msync") == 2  # one per segment flushed


def test_the_default_platform_is_this_one() -> None:
    assert Syscalls().platform == sys.platform
    assert Syscalls.full_fsync is not Syscalls.fsync


# -- copy-on-write file systems ----------------------------------------------------------


class FakeFileSystem(Syscalls):
    """Real syscalls, except the file system's type and the NOCOW flag."""

    def __init__(self, magic: int, *, nocow_sticks: bool = True) -> None:
        self.magic = magic
        self.nocow_sticks = nocow_sticks
        self.nocow: set[str] = set()
        self.events: list[tuple[str, str]] = []

    def file_system_magic(self, path: str) -> int:
        return self.magic

    def no_copy_on_write(self, fd: int) -> bool:
        return fd_path(fd) in self.nocow

    def set_no_copy_on_write(self, fd: int) -> None:
        assert os.fstat(fd).st_size == 0, "NOCOW set on a file that has blocks already"
        self.events.append(("nocow", fd_path(fd)))
        if self.nocow_sticks:
            self.nocow.add(fd_path(fd))

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.events.append(("allocate", fd_path(fd)))
        super().allocate(fd, offset, length)


@needs_proc
def test_btrfs_new_segments_are_nocow_before_any_block_is_allocated(tmp_path: Path) -> None:
    calls = FakeFileSystem(BTRFS_MAGIC)
    directory = tmp_path / "log"
    with Wal.with_store(SegmentStore(directory, 4096, syscalls=calls)) as wal:
        wal.append(b"x" * 9000)
        wal.sync()
    segments = sorted(str(p) for p in directory.glob("*.wal"))
    assert len(segments) == 3
    assert calls.nocow == set(segments)
    for path in segments:
        assert calls.events.index(("nocow", path)) < calls.events.index(("allocate", path))
    # Reopened: the files carry the flag, so the open goes ahead.
    with Wal.with_store(SegmentStore(directory, syscalls=calls)) as wal:
        assert [len(r.data) for r in wal] == [9000]


@needs_proc
def test_btrfs_new_single_file_is_nocow(tmp_path: Path) -> None:
    calls = FakeFileSystem(BTRFS_MAGIC)
    path = tmp_path / "log"
    with Wal.with_store(FileStore(path, window_size=1 << 16, syscalls=calls)) as wal:
        wal.append(b"x")
    assert calls.nocow == {str(path)}
    assert calls.events[0] == ("nocow", str(path))


@needs_proc
def test_btrfs_where_nocow_does_not_take_is_refused_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    calls = FakeFileSystem(BTRFS_MAGIC, nocow_sticks=False)
    directory = tmp_path / "log"
    store = SegmentStore(directory, 4096, syscalls=calls)
    with pytest.raises(UnsafeFileSystemError) as caught:
        Wal.with_store(store).append(b"x")
    assert caught.value.file_system == "btrfs"
    assert "did not take" in str(caught.value)
    assert "allow_copy_on_write=True" in str(caught.value)
    assert not list(directory.glob("*.wal")), "a refused segment was left behind"
    assert ("allocate", str(directory / f"{0:020d}.wal")) not in calls.events


@needs_proc
def test_btrfs_existing_files_without_nocow_are_refused_unless_allowed(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 4096) as wal:  # made on ext4: no NOCOW flag
        wal.append(b"record")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    calls = FakeFileSystem(BTRFS_MAGIC)
    with pytest.raises(UnsafeFileSystemError) as caught:
        SegmentStore(directory, syscalls=calls)
    assert "without NOCOW" in str(caught.value)
    assert caught.value.path.endswith(f"{0:020d}.wal")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    # Read-only opens write nothing: never refused.
    with Wal.with_store(SegmentStore(directory, writable=False, syscalls=calls)) as wal:
        assert [r.data for r in wal] == [b"record"]
    allowed = SegmentStore(directory, syscalls=calls, allow_copy_on_write=True)
    with Wal.with_store(allowed) as wal:
        assert [r.data for r in wal] == [b"record"]


@pytest.mark.parametrize("kind", ["file", "segmented"])
def test_zfs_is_refused_before_anything_is_created_unless_allowed(
    tmp_path: Path, kind: str
) -> None:
    calls = FakeFileSystem(ZFS_MAGIC)
    path = tmp_path / "log"

    def store(allow: bool) -> FileStore | SegmentStore:
        if kind == "file":
            return FileStore(path, syscalls=calls, allow_copy_on_write=allow)
        return SegmentStore(path, 4096, syscalls=calls, allow_copy_on_write=allow)

    with pytest.raises(UnsafeFileSystemError) as caught:
        store(False)
    assert caught.value.file_system == "zfs"
    assert not path.exists(), "a refused open created the log"
    with Wal.with_store(store(True)) as wal:
        wal.append_and_sync(b"at the caller's risk")
    assert calls.events, "the accepted open allocated nothing"
    with Wal.with_store(store(True)) as wal:
        assert [r.data for r in wal] == [b"at the caller's risk"]


def test_the_config_option_reaches_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Syscalls, "file_system_magic", lambda self, path: ZFS_MAGIC)

    def open_file(config: WalConfig | None) -> Wal:
        return mmwal.open(tmp_path / "file", config=config)

    def open_directory(config: WalConfig | None) -> Wal:
        return mmwal.open(tmp_path / "dir", segment_size=4096, config=config)

    for open_log in (open_file, open_directory):
        with pytest.raises(UnsafeFileSystemError):
            open_log(None)
        with pytest.raises(UnsafeFileSystemError):
            open_log(WalConfig())
        with open_log(WalConfig(allow_copy_on_write=True)) as wal:
            wal.append(b"x")


def test_ext4_and_tmpfs_are_left_alone(tmp_path: Path) -> None:
    calls = FakeFileSystem(EXT4_MAGIC)
    with Wal.with_store(SegmentStore(tmp_path / "log", 4096, syscalls=calls)) as wal:
        wal.append(b"x" * 5000)
    assert not [event for event in calls.events if event[0] == "nocow"]


@pytest.mark.skipif(shutil.which("stat") is None, reason="compares with stat(1)")
def test_the_real_file_system_magic_matches_stat(tmp_path: Path) -> None:
    """The ctypes statfs reads f_type where the C library puts it."""
    if not sys.platform.startswith("linux"):
        assert Syscalls().file_system_magic(str(tmp_path)) == 0
        return
    expected = subprocess.run(
        ["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Syscalls().file_system_magic(str(tmp_path)) == int(expected, 16)
    # A path not created yet is judged by its nearest existing ancestor.
    assert Syscalls().file_system_magic(str(tmp_path / "a" / "b")) == int(expected, 16)


def test_repair_and_the_cli_take_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmwal.__main__ import main

    path = tmp_path / "log"
    with Wal.open(path) as wal:
        wal.append(b"x")
    monkeypatch.setattr(Syscalls, "file_system_magic", lambda self, path: ZFS_MAGIC)
    with pytest.raises(UnsafeFileSystemError):
        mmwal.repair(path)
    assert mmwal.repair(path, config=WalConfig(allow_copy_on_write=True)).end == 9
    assert main(["repair", str(path)]) == 1
    assert main(["--allow-copy-on-write", "repair", str(path)]) == 0
