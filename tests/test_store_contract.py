"""Every store keeps the store protocol: ``mmwal.testing.StoreTests`` run against each.

MemStore (small chunks), FileStore (4 KiB windows), SegmentStore (32-byte and
4 KiB segments), and the same real stores over the power-loss simulator, where a
reopen sees only what was made durable. The file stores
also prove their metadata ordering (a new file or segment is fsynced, and its
directory, before a flush that covers it returns) with a recording ``Syscalls``.
"""

from __future__ import annotations

import errno
import itertools
import mmap
from pathlib import Path

import pytest

from mmwal import CorruptionError, FileStore, MemStore, SegmentStore, Store, Syscalls
from mmwal._chunked import ChunkedStore
from mmwal.testing import FlushHold, Layout, PowerLossSimulator, StoreTests, held_syscalls
from mmwal.testing._simdisk import Inode


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
        self.calls.append("data flush")
        super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        self.calls.append("data flush")
        super().fdatasync(fd)

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


class HeldMemStore(MemStore):
    """A ``MemStore`` whose flush of each chunk calls ``hold.reached()`` (it has no seam)."""

    def __init__(self, hold: FlushHold, chunk_size: int) -> None:
        super().__init__(chunk_size)
        self.hold = hold

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        self.hold.reached()


class TestMemStore(StoreTests):
    def make_store(self) -> Store:
        return MemStore(chunk_size=4096)

    def make_held_store(self, hold: FlushHold) -> Store | None:
        return HeldMemStore(hold, 4096)


class TestMemStoreDefaultChunks(StoreTests):
    def make_store(self) -> Store:
        return MemStore()

    def make_held_store(self, hold: FlushHold) -> Store | None:
        return HeldMemStore(hold, 1 << 20)


class TestFileStore(_InTmp):
    window = mmap.ALLOCATIONGRANULARITY
    sync_method = "msync"
    precreate = False

    def make_store(self) -> Store:
        return FileStore(
            self.fresh_path(),
            window_size=self.window,
            sync_method=self.sync_method,
            precreate=self.precreate,
        )

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, FileStore)
        store.close()
        return FileStore(store.path, window_size=self.window, sync_method=self.sync_method)

    def make_store_with_space(self, space: int) -> Store | None:
        return FileStore(
            self.fresh_path(),
            window_size=self.window,
            syscalls=LimitedSyscalls(space),
            sync_method=self.sync_method,
        )

    def make_held_store(self, hold: FlushHold) -> Store | None:
        return FileStore(
            self.fresh_path(),
            window_size=self.window,
            syscalls=held_syscalls(Syscalls, hold)(),
            sync_method=self.sync_method,
            precreate=self.precreate,
        )

    def test_new_window_and_file_are_durable_before_flush_returns(self) -> None:
        syscalls = RecordingSyscalls()
        store = FileStore(
            self.fresh_path(),
            window_size=self.window,
            syscalls=syscalls,
            sync_method=self.sync_method,
        )
        self._made.append(store)
        store.ensure_capacity(3 * self.window)
        store.write(2 * self.window, b"x")
        syscalls.calls.clear()
        store.flush(0, store.capacity)
        first_msync = syscalls.calls.index("data flush")
        assert "fsync" in syscalls.calls[:first_msync]
        assert "fsync_directory" in syscalls.calls[:first_msync]


class TestFileStoreFdatasync(TestFileStore):
    sync_method = "fdatasync"


class TestFileStorePrecreated(TestFileStore):
    """Windows made ahead by the pipeline (the default for windows of 1 MiB or more)."""

    precreate = True


class _SegmentTests(_InTmp):
    drops_prefix = True
    segment_size = 4096
    sync_method = "msync"
    precreate = False

    def make_store(self) -> Store:
        return SegmentStore(
            self.fresh_path(),
            self.segment_size,
            sync_method=self.sync_method,
            precreate=self.precreate,
        )

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, SegmentStore)
        store.close()
        return SegmentStore(store.path, self.segment_size, sync_method=self.sync_method)

    def make_store_with_space(self, space: int) -> Store | None:
        return SegmentStore(
            self.fresh_path(),
            self.segment_size,
            syscalls=LimitedSyscalls(space),
            sync_method=self.sync_method,
        )

    def make_held_store(self, hold: FlushHold) -> Store | None:
        return SegmentStore(
            self.fresh_path(),
            self.segment_size,
            syscalls=held_syscalls(Syscalls, hold)(),
            sync_method=self.sync_method,
            precreate=self.precreate,
        )

    def test_new_segments_are_durable_before_flush_returns(self) -> None:
        syscalls = RecordingSyscalls()
        store = SegmentStore(
            self.fresh_path(), self.segment_size, syscalls=syscalls, sync_method=self.sync_method
        )
        self._made.append(store)
        store.ensure_capacity(3 * self.segment_size)
        store.write(0, b"x" * (3 * self.segment_size))
        syscalls.calls.clear()
        store.flush(0, store.capacity)
        first_msync = syscalls.calls.index("data flush")
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


class TestSegmentStoreFdatasync(_SegmentTests):
    sync_method = "fdatasync"


class TestSegmentStorePrecreated(_SegmentTests):
    """Segments made ahead by the pipeline (the default for segments of 1 MiB or more)."""

    precreate = True


class _Simulated(_InTmp):
    """The real stores over the power-loss simulator: a reopen sees only what is durable.

    msync where no method is named: it makes only the flushed range durable, so a
    flush that misses its range loses bytes here (fdatasync writes the whole file).
    """

    layout = Layout(segment_size=4096, sync_method="msync")
    simulator: type[PowerLossSimulator] = PowerLossSimulator

    def make_store(self) -> Store:
        return self.simulator(self.fresh_path(), self.layout).open_store()

    def reopen(self, store: Store) -> Store | None:
        assert isinstance(store, ChunkedStore)
        store.close()
        assert isinstance(store.syscalls, PowerLossSimulator)
        return store.syscalls.durable_image().open_store(self.fresh_path())

    def make_store_with_space(self, space: int) -> Store | None:
        return self.simulator(self.fresh_path(), self.layout, space=space).open_store()

    def make_held_store(self, hold: FlushHold) -> Store | None:
        return held_syscalls(self.simulator, hold)(self.fresh_path(), self.layout).open_store()


class TestSimulatedSegmentStore(_Simulated):
    drops_prefix = True


class TestSimulatedTinySegments(_Simulated):
    drops_prefix = True
    layout = Layout(segment_size=32, sync_method="msync")


class TestSimulatedFileStore(_Simulated):
    layout = Layout(window_size=8192, sync_method="msync")


class TestSimulatedFdatasyncSegments(_Simulated):
    drops_prefix = True
    layout = Layout(segment_size=4096, sync_method="fdatasync")


class TestSimulatedFdatasyncFile(_Simulated):
    layout = Layout(window_size=8192, sync_method="fdatasync")


class UnflushingSimulator(PowerLossSimulator):
    """A deliberately broken disk: ``msync`` and ``fsync`` report success, write no data back."""

    def _write_back(self, inode: Inode, offset: int, data: bytes) -> None:
        del inode, offset, data


class TestTheSuiteCatchesABrokenStore(_Simulated):
    """The suite can fail: over a disk that writes nothing back, the durability tests break."""

    drops_prefix = True
    simulator = UnflushingSimulator

    def test_flushed_bytes_survive_reopen(self) -> None:
        with pytest.raises(AssertionError):
            super().test_flushed_bytes_survive_reopen()

    def test_discard_after_is_durable(self) -> None:
        with pytest.raises(AssertionError):
            super().test_discard_after_is_durable()

    def test_a_flush_inside_a_later_piece_survives_reopen(self) -> None:
        with pytest.raises(AssertionError):
            super().test_a_flush_inside_a_later_piece_survives_reopen()

    def test_side_files_are_replaced_whole_and_survive_reopen(self) -> None:
        with pytest.raises(AssertionError):
            super().test_side_files_are_replaced_whole_and_survive_reopen()

    def test_growth_runs_while_a_flush_runs(self) -> None:
        with pytest.raises(AssertionError):
            super().test_growth_runs_while_a_flush_runs()

    def test_pieces_take_writes_when_the_store_declares_it(self) -> None:
        with pytest.raises(AssertionError):
            super().test_pieces_take_writes_when_the_store_declares_it()

    def test_a_log_over_a_store_without_piece_writes_copies_through_write(self) -> None:
        with pytest.raises(AssertionError):
            super().test_a_log_over_a_store_without_piece_writes_copies_through_write()

    def test_drop_before(self) -> None:
        # The head file's bytes never reach the disk: the reopened log starts at 0,
        # whose segment is gone.
        with pytest.raises(CorruptionError):
            super().test_drop_before()
