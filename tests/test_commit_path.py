"""The commit path: what a flush keeps between commits, the published ends, the sync methods."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest
from recorders import MsyncRecorder

from mmwal import FileStore, SegmentStore, Syscalls, Wal, WalBrokenError, WalConfig
from mmwal._published import ENDS_FILE_NAME, Ends, EndsPublisher, _encode, _latest
from mmwal._syscalls import mapping_address
from mmwal.testing import Layout, PowerLossSimulator

SEGMENT = 16 * 1024


def _inside(mapping: mmap.mmap, address: int, length: int) -> bool:
    base = mapping_address(mapping)
    return base <= address and address + length <= base + len(mapping)


def test_a_chunk_mapped_again_is_flushed_through_its_new_mapping(tmp_path: Path) -> None:
    # The flush keeps the address of the chunk it flushed last. A chunk let go
    # (mapped_chunks) and mapped again is a new mapping: a cache keyed by index
    # would msync the old address, unmapped by then or another file's.
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, SEGMENT) as wal:
        wal.append_many([b"r" * 1000] * 40)  # three segments
        wal.sync()
    calls = MsyncRecorder()
    store = SegmentStore(directory, syscalls=calls, mapped_chunks=1, sync_method="msync")
    try:
        store.prepare_end(store.capacity)
        store.write(100, b"first")
        store.flush(100, 105)
        first = store.piece(100)[0]
        assert isinstance(first, mmap.mmap)
        assert _inside(first, *calls.msyncs[-1])
        store.read(SEGMENT + 10, 1)  # maps chunk 1: chunk 0 is let go
        store.write(200, b"second")
        again = store.piece(200)[0]
        assert isinstance(again, mmap.mmap)
        assert again is not first
        store.flush(200, 206)
        assert _inside(again, *calls.msyncs[-1])
    finally:
        store.close()
    with Wal.open_segmented(directory, readonly=True) as reader:
        assert reader.store.read(100, 5) == b"first"
        assert reader.store.read(200, 6) == b"second"


def test_published_slots_hold_the_ends_and_cuts_and_skip_what_was_said(tmp_path: Path) -> None:
    # publish packs the slot itself (not through _encode): the bytes must be
    # _encode's, cuts included after a truncation, and a publisher opened over
    # an existing file must not rewrite the state it already says.
    path = str(tmp_path / ENDS_FILE_NAME)
    publisher = EndsPublisher.create(path, Syscalls(), 0o600)
    assert publisher is not None
    mapping = publisher._mapping
    publisher.publish(written=300, durable=200, head=0)
    assert _latest(mapping) == Ends(1, 300, 200, 0, 0, ())
    assert mapping[192 : 192 + 180] == _encode(Ends(1, 300, 200, 0, 0, ()))
    publisher.cut(100, written=300, durable=200, head=0)
    expected = Ends(2, 300, 100, 0, 1, ((1, 100),))
    assert _latest(mapping) == expected
    assert mapping[0:180] == _encode(expected)
    publisher.publish(written=300, durable=100, head=0)  # says nothing new
    assert _latest(mapping) == expected
    publisher.publish(written=400, durable=400, head=0)
    assert _latest(mapping) == Ends(3, 400, 400, 0, 1, ((1, 100),))
    publisher.close()
    before = Path(path).read_bytes()
    reopened = EndsPublisher.create(path, Syscalls(), 0o600)
    assert reopened is not None
    reopened.publish(written=400, durable=400, head=0)
    reopened.close()
    assert Path(path).read_bytes() == before


# -- sync methods ---------------------------------------------------------------------

needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="names descriptors through /proc"
)


class FlushRecorder(Syscalls):
    """Real syscalls (on Linux) recording the data flushes a faked platform would make."""

    def __init__(self, platform: str = "linux", *, failing: bool = False) -> None:
        self.platform = platform
        self.failing = failing
        self.calls: list[tuple[str, str]] = []

    def msync(self, address: int, length: int) -> None:
        self.calls.append(("msync", ""))
        super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        if self.failing:
            raise OSError(errno.EIO, "injected fdatasync failure")
        super().fdatasync(fd)

    def full_fsync(self, fd: int) -> None:
        self.calls.append(("full_fsync", os.readlink(f"/proc/self/fd/{fd}")))
        os.fsync(fd)

    def data_flushes(self) -> list[tuple[str, str]]:
        return [call for call in self.calls if call[0] in ("msync", "fdatasync")]


@needs_proc
@pytest.mark.parametrize("method", ["msync", "fdatasync"])
def test_each_sync_method_flushes_every_segment_it_covers_its_own_way(
    tmp_path: Path, method: str
) -> None:
    calls = FlushRecorder()
    directory = tmp_path / "log"
    store = SegmentStore(directory, 4096, syscalls=calls, sync_method=method)
    with Wal.with_store(store) as wal:
        wal.append(b"a" * 100)
        wal.sync()
        calls.calls.clear()
        wal.append(b"b" * 9000)  # from segment 0 through segment 1 into segment 2
        wal.sync()
        flushes = calls.data_flushes()
    segments = [str(directory / f"{i:020d}.wal") for i in range(3)]
    if method == "msync":
        assert flushes == [("msync", "")] * 3
    else:
        assert flushes == [("fdatasync", path) for path in segments]


@needs_proc
def test_fdatasync_on_a_single_file_log_flushes_that_file(tmp_path: Path) -> None:
    calls = FlushRecorder()
    path = tmp_path / "log"
    store = FileStore(path, window_size=1 << 16, syscalls=calls, sync_method="fdatasync")
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"x")
        calls.calls.clear()
        wal.append_and_sync(b"y")
        assert calls.data_flushes() == [("fdatasync", str(path))]


def _windowed_file(path: Path, calls: Syscalls) -> FileStore:
    """A single-file store of the smallest windows, flushing with ``fdatasync``."""
    window = mmap.ALLOCATIONGRANULARITY
    return FileStore(path, window_size=window, syscalls=calls, sync_method="fdatasync")


@needs_proc
def test_fdatasync_flushes_a_single_file_once_however_many_windows_it_spans(
    tmp_path: Path,
) -> None:
    # Catches: a flush across windows of one file making an fdatasync per window,
    # each writing back the whole file (the second finds little left but still
    # costs a call and the device's cache flush).
    calls = FlushRecorder()
    path = tmp_path / "log"
    window = mmap.ALLOCATIONGRANULARITY
    store = _windowed_file(path, calls)
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"x")
        calls.calls.clear()
        wal.append(b"y" * (2 * window))  # from window 0 through window 1 into window 2
        wal.sync()
        assert calls.data_flushes() == [("fdatasync", str(path))]


@needs_proc
def test_on_macos_a_flush_across_windows_makes_one_full_fsync(tmp_path: Path) -> None:
    # msync of each window, then one F_FULLFSYNC of the file, which empties the
    # drive's cache for all of them; not one F_FULLFSYNC per window.
    calls = FlushRecorder("darwin")
    path = tmp_path / "log"
    window = mmap.ALLOCATIONGRANULARITY
    store = _windowed_file(path, calls)
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"x")
        wal.append(b"y" * (2 * window))
        calls.calls.clear()
        wal.sync()
        flushed = calls.calls[calls.calls.index(("msync", "")) :]
        assert flushed == [("msync", "")] * 3 + [("full_fsync", str(path))]


@needs_proc
def test_on_macos_fdatasync_is_msync_then_full_fsync(tmp_path: Path) -> None:
    # macOS has no fdatasync, and its msync leaves data in the drive's cache.
    calls = FlushRecorder("darwin")
    directory = tmp_path / "log"
    store = SegmentStore(directory, 4096, syscalls=calls, sync_method="fdatasync")
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"x")
        calls.calls.clear()
        wal.append_and_sync(b"y")
        segment = str(directory / f"{0:020d}.wal")
        assert calls.calls[:2] == [("msync", ""), ("full_fsync", segment)]
        assert "fdatasync" not in [name for name, _ in calls.calls]


@needs_proc
def test_a_failed_fdatasync_breaks_the_log(tmp_path: Path) -> None:
    calls = FlushRecorder()
    store = SegmentStore(tmp_path / "log", 4096, syscalls=calls, sync_method="fdatasync")
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"before")
        calls.failing = True
        with pytest.raises(WalBrokenError):
            wal.append_and_sync(b"in doubt")
        calls.failing = False
        with pytest.raises(WalBrokenError):
            wal.append(b"after")
        with pytest.raises(WalBrokenError):
            wal.sync()


@needs_proc
@pytest.mark.parametrize("method", ["msync", "fdatasync"])
def test_a_writer_keeps_bounded_descriptors_however_many_segments_it_made(
    tmp_path: Path, method: str
) -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    # The flush keeps the descriptor of the segment it flushed last and closes
    # the one before; the writer lets sealed segments go beyond its mapping
    # limit (16 here). Both plateau, whatever the number of segments made.
    config = WalConfig(sync_method=method)
    with Wal.open_segmented(tmp_path / "log", 4096, config) as wal:
        wal.append_and_sync(b"first")
        for _ in range(30):  # a segment per commit
            wal.append_and_sync(b"r" * 4000)
        plateau = open_descriptors()
        for _ in range(30):
            wal.append_and_sync(b"r" * 4000)
        assert open_descriptors() <= plateau
    with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
        assert len(list(reader)) == 61


def test_a_sync_method_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync_method"):
        WalConfig(sync_method="fsync")
    with pytest.raises(ValueError, match="sync_method"):
        SegmentStore(tmp_path / "log", 4096, sync_method="O_DSYNC")
    assert not (tmp_path / "log").exists()


class CountingSimulator(PowerLossSimulator):
    """The power-loss simulator, counting the data flushes it modelled."""

    fdatasyncs = 0
    msyncs = 0

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1
        super().fdatasync(fd)

    def msync(self, address: int, length: int) -> None:
        self.msyncs += 1
        super().msync(address, length)


@pytest.mark.parametrize(
    "layout",
    [
        Layout(segment_size=512, sync_method="fdatasync"),
        Layout(window_size=8192, sync_method="fdatasync"),
    ],
    ids=str,
)
def test_what_fdatasync_made_durable_survives_a_power_loss(tmp_path: Path, layout: Layout) -> None:
    simulator = CountingSimulator(tmp_path / "disk", layout)
    records = [bytes([n]) * (n * 37 % 900) for n in range(1, 40)]
    with Wal.with_store(simulator.open_store()) as wal:
        for record in records:
            wal.append_and_sync(record)
        wal.append(b"not synced")
        image = simulator.durable_image()
    assert simulator.fdatasyncs >= len(records)
    assert simulator.msyncs == 0
    with image.open(tmp_path / "after") as reopened:
        found = [record.data for record in reopened]
    assert found[: len(records)] == records
    assert len(found) <= len(records) + 1


@needs_proc
def test_fdatasync_truncation_of_a_single_file_flushes_the_zeroed_windows_at_once(
    tmp_path: Path,
) -> None:
    # Catches: ``truncate_after`` across windows of one file making an fdatasync
    # per window it zeroed, each writing back the whole file (five calls here).
    # Three remain, in the order a crash needs: the zeroed header at the new
    # end, the rest of the window holding it, then every later window in one.
    calls = FlushRecorder()
    path = tmp_path / "log"
    window = mmap.ALLOCATIONGRANULARITY
    store = _windowed_file(path, calls)
    with Wal.with_store(store) as wal:
        first = wal.append(b"x")
        wal.append_many([b"y" * (window - 64)] * 4)  # into windows 1 to 4
        wal.sync()
        calls.calls.clear()
        wal.truncate_after(first)
        assert calls.data_flushes() == [("fdatasync", str(path))] * 3
        assert [record.data for record in wal] == [b"x"]
    with Wal.with_store(FileStore(path, window_size=window)) as reopened:
        assert [record.data for record in reopened] == [b"x"]
