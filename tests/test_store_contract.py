"""Every store keeps the store protocol: ``mmwal.testing.StoreTests`` run against each.

MemStore (small chunks), FileStore (4 KiB windows), SegmentStore (32-byte and
4 KiB segments) and the power-loss simulator in both layouts. The file stores
also prove their metadata ordering (a new file or segment is fsynced, and its
directory, before a flush that covers it returns) with a recording ``Syscalls``.
"""

from __future__ import annotations

import errno
import itertools
import mmap
from pathlib import Path

import pytest

from mmwal import FileStore, MemStore, SegmentStore, Store, Syscalls
from mmwal.testing import PowerLossStore, StoreTests


class LimitedSyscalls(Syscalls):
    """Allocation fails with ENOSPC once ``space`` bytes were allocated."""

    def __init__(self, space: int) -> None:
        self.left = space

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if length > self.left:
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        self.left -= max(length, 0)
        super().allocate(fd, offset, length)


class RecordingSyscalls(Syscalls):
    """Log every durability call in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.calls.append("allocate")
        super().allocate(fd, offset, length)

    def msync(self, address: int, length: int) -> None:
        self.calls.append("msync")
        super().msync(address, length)

    def fsync(self, fd: int) -> None:
        self.calls.append("fsync")
        super().fsync(fd)

    def fsync_directory(self, path: str) -> None:
        self.calls.append("fsync_directory")
        super().fsync_directory(path)

    def remove(self, path: str) -> None:
        self.calls.append("remove")
        super().remove(path)

    def replace(self, source: str, target: str) -> None:
        self.calls.append("replace")
        super().replace(source, target)


class _InTmp(StoreTests):
    tmp: Path
    _names = itertools.count()

    @pytest.fixture(autouse=True)
    def _use_tmp_path(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    def fresh_path(self) -> Path:
        return self.tmp / f"store-{next(self._names)}"


class TestMemStore(StoreTests):
    def make_store(self) -> Store:
        return MemStore(chunk_size=4096)


class TestMemStoreDefaultChunks(StoreTests):
    def make_store(self) -> Store:
        return MemStore()


class TestFileStore(_InTmp):
    window = mmap.ALLOCATIONGRANULARITY

    def make_store(self) -> Store:
        return FileStore(self.fresh_path(), window_size=self.window)

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, FileStore)
        store.close()
        return FileStore(store.path, window_size=self.window)

    def make_store_with_space(self, space: int) -> Store | None:
        return FileStore(
            self.fresh_path(), window_size=self.window, syscalls=LimitedSyscalls(space)
        )

    def test_new_window_and_file_are_durable_before_flush_returns(self) -> None:
        syscalls = RecordingSyscalls()
        store = FileStore(self.fresh_path(), window_size=self.window, syscalls=syscalls)
        self._made.append(store)
        store.ensure_capacity(3 * self.window)
        store.write(2 * self.window, b"x")
        syscalls.calls.clear()
        store.flush(0, store.capacity)
        first_msync = syscalls.calls.index("msync")
        assert "fsync" in syscalls.calls[:first_msync]
        assert "fsync_directory" in syscalls.calls[:first_msync]


class _SegmentTests(_InTmp):
    drops_prefix = True
    segment_size = 4096

    def make_store(self) -> Store:
        return SegmentStore(self.fresh_path(), self.segment_size)

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, SegmentStore)
        store.close()
        return SegmentStore(store.path, self.segment_size)

    def make_store_with_space(self, space: int) -> Store | None:
        return SegmentStore(self.fresh_path(), self.segment_size, syscalls=LimitedSyscalls(space))

    def test_new_segments_are_durable_before_flush_returns(self) -> None:
        syscalls = RecordingSyscalls()
        store = SegmentStore(self.fresh_path(), self.segment_size, syscalls=syscalls)
        self._made.append(store)
        store.ensure_capacity(3 * self.segment_size)
        store.write(0, b"x" * (3 * self.segment_size))
        syscalls.calls.clear()
        store.flush(0, store.capacity)
        first_msync = syscalls.calls.index("msync")
        assert syscalls.calls[:first_msync].count("fsync") == 3
        assert syscalls.calls[first_msync - 1] == "fsync_directory"

    def test_released_segments_are_durable_when_discard_after_returns(self) -> None:
        syscalls = RecordingSyscalls()
        store = SegmentStore(self.fresh_path(), self.segment_size, syscalls=syscalls)
        self._made.append(store)
        store.ensure_capacity(4 * self.segment_size)
        store.write(0, b"y" * (4 * self.segment_size))
        store.flush(0, store.capacity)
        syscalls.calls.clear()
        store.discard_after(self.segment_size + 1)
        assert syscalls.calls.count("remove") == 2
        last_remove = len(syscalls.calls) - 1 - syscalls.calls[::-1].index("remove")
        assert "fsync_directory" in syscalls.calls[last_remove:]
        segment_files = sorted(p.name for p in Path(store.path).iterdir() if p.suffix == ".wal")
        assert len(segment_files) == 2

    def test_head_file_is_durable_before_segments_go(self) -> None:
        syscalls = RecordingSyscalls()
        store = SegmentStore(self.fresh_path(), self.segment_size, syscalls=syscalls)
        self._made.append(store)
        store.ensure_capacity(4 * self.segment_size)
        store.flush(0, store.capacity)
        syscalls.calls.clear()
        store.drop_before(2 * self.segment_size + 1)
        calls = syscalls.calls
        assert calls.index("fsync") < calls.index("replace") < calls.index("fsync_directory")
        assert calls.index("fsync_directory") < calls.index("remove")
        assert calls[-1] == "fsync_directory"


class TestSegmentStore4K(_SegmentTests):
    segment_size = 4096


class TestSegmentStore32(_SegmentTests):
    segment_size = 32


class TestPowerLossStoreSegmented(StoreTests):
    drops_prefix = True

    def make_store(self) -> Store:
        return PowerLossStore(segment_size=4096)

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, PowerLossStore)
        store.close()
        return PowerLossStore.from_image(store.durable_image())

    def make_store_with_space(self, space: int) -> Store | None:
        return PowerLossStore(segment_size=4096, disk_size=space)


class TestPowerLossStoreTinySegments(TestPowerLossStoreSegmented):
    def make_store(self) -> Store:
        return PowerLossStore(segment_size=32)

    def make_store_with_space(self, space: int) -> Store | None:
        return PowerLossStore(segment_size=32, disk_size=space)


class TestPowerLossStoreSingleFile(StoreTests):
    def make_store(self) -> Store:
        return PowerLossStore(window_size=8192, page_size=4096)

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, PowerLossStore)
        store.close()
        return PowerLossStore.from_image(store.durable_image())

    def make_store_with_space(self, space: int) -> Store | None:
        return PowerLossStore(window_size=8192, disk_size=space)


class UnflushingStore(PowerLossStore):
    """A deliberately broken store: ``flush`` reports success and writes nothing."""

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        del index, start, length


class TestTheSuiteCatchesABrokenStore(StoreTests):
    """The suite can fail: the unflushing store breaks the durability tests."""

    def make_store(self) -> Store:
        return UnflushingStore(segment_size=4096)

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, PowerLossStore)
        store.close()
        return PowerLossStore.from_image(store.durable_image())

    def test_flushed_bytes_survive_reopen(self) -> None:
        with pytest.raises(AssertionError):
            super().test_flushed_bytes_survive_reopen()

    def test_discard_after_is_durable(self) -> None:
        with pytest.raises(AssertionError):
            super().test_discard_after_is_durable()

    def test_drop_before(self) -> None:
        with pytest.raises(AssertionError):
            super().test_drop_before()
