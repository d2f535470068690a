"""The next segment or window made ahead of need: handed over at a roll, never log data."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

from mmwal import FileStore, SegmentStore, Syscalls, Wal, _warming
from mmwal._pipeline import ChunkPipeline

SEGMENT = 64 * 1024
RECORD = 1000


class CountingSyscalls(Syscalls):
    """Real syscalls that count fsyncs and allocations, and fail allocation when ``full``."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.allocations = 0
        self.full = False

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.allocations += 1
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().allocate(fd, offset, length)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def fsync_directory(self, path: str) -> None:
        self.fsyncs += 1
        super().fsync_directory(path)


def segment_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".wal"))


def record(index: int) -> bytes:
    return index.to_bytes(4, "little") * (RECORD // 4)


def fill_past_half(wal: Wal, start: int = 0) -> int:
    """Append and sync until the durable end is past the middle of its segment."""
    count = start
    while wal.next_lsn % SEGMENT < SEGMENT // 2 + RECORD:
        wal.append(record(count))
        count += 1
    wal.sync()
    return count


def wait_for_spare(wal: Wal) -> int | None:
    pipeline = wal.store._pipeline  # type: ignore[attr-defined]
    pipeline._wait()
    index: int | None = pipeline.spare_index
    return index


class PointlessSegmentStore(SegmentStore):
    """A segment store that keeps no recovery point, whose writes would add fsyncs."""

    def save_side_file(self, name: str, data: bytes) -> bool:
        del name, data
        return False


def open_log(directory: Path, syscalls: Syscalls | None = None) -> Wal:
    store = SegmentStore(directory, SEGMENT, syscalls=syscalls, precreate=True)
    return Wal.with_store(store)


def test_a_roll_takes_the_spare_and_its_sync_makes_no_file_durable(tmp_path: Path) -> None:
    # Without the pipeline the sync after a roll fsyncs the new file and the directory.
    syscalls = CountingSyscalls()
    directory = tmp_path / "log"
    store = PointlessSegmentStore(directory, SEGMENT, syscalls=syscalls, precreate=True)
    with Wal.with_store(store) as wal:
        count = fill_past_half(wal)
        assert wait_for_spare(wal) == 1
        assert segment_names(directory) == [f"{0:020d}.wal", f"{1:020d}.wal"]
        fsyncs, allocations = syscalls.fsyncs, syscalls.allocations
        while wal.next_lsn < SEGMENT + RECORD:
            wal.append(record(count))
            count += 1
        wal.sync()
        assert (syscalls.fsyncs, syscalls.allocations) == (fsyncs, allocations)
        assert wal.stats().segments_created == 2
        assert [r.data for r in wal] == [record(i) for i in range(count)]


def test_close_removes_the_spare(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with open_log(directory) as wal:
        fill_past_half(wal)
        assert wait_for_spare(wal) == 1
    assert segment_names(directory) == [f"{0:020d}.wal"]


def test_a_crash_with_a_spare_reads_it_as_the_end(tmp_path: Path) -> None:
    # The files as a crash leaves them: a spare segment past the end, all zero.
    directory, crashed = tmp_path / "log", tmp_path / "crashed"
    wal = open_log(directory)
    count = fill_past_half(wal)
    assert wait_for_spare(wal) == 1
    shutil.copytree(directory, crashed)
    wal.close()
    assert len(segment_names(crashed)) == 2
    assert (crashed / f"{1:020d}.wal").read_bytes() == bytes(SEGMENT)
    with Wal.open_segmented(crashed, readonly=True) as reader:
        assert [r.data for r in reader] == [record(i) for i in range(count)]
    with Wal.open_segmented(crashed) as reopened:
        assert reopened.recovery.discarded_bytes == 0
        assert segment_names(crashed) == [f"{0:020d}.wal"]
        assert [r.data for r in reopened] == [record(i) for i in range(count)]
        while reopened.next_lsn < SEGMENT + RECORD:
            reopened.append(record(count))
            count += 1
    with Wal.open_segmented(crashed) as again:
        assert [r.data for r in again] == [record(i) for i in range(count)]


def test_a_failed_spare_leaves_the_roll_to_fail_all_or_nothing(tmp_path: Path) -> None:
    syscalls = CountingSyscalls()
    directory = tmp_path / "log"
    with open_log(directory, syscalls) as wal:
        wal.append(record(0))
        syscalls.full = True
        count = fill_past_half(wal, 1)
        assert wait_for_spare(wal) is None
        assert segment_names(directory) == [f"{0:020d}.wal"]
        while wal.next_lsn + RECORD + 8 <= SEGMENT:
            wal.append(record(count))
            count += 1
        end = wal.next_lsn
        with pytest.raises(OSError, match="injected") as raised:
            wal.append(record(count))
        assert raised.value.errno == errno.ENOSPC
        assert wal.next_lsn == end
        syscalls.full = False
        while wal.next_lsn < SEGMENT + RECORD:
            wal.append(record(count))
            count += 1
        wal.sync()
    with Wal.open_segmented(directory) as reopened:
        assert [r.data for r in reopened] == [record(i) for i in range(count)]


def test_truncate_after_discards_the_spare(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with open_log(directory) as wal:
        fill_past_half(wal)
        assert wait_for_spare(wal) == 1
        wal.truncate_after(0)
        assert wait_for_spare(wal) is None
        assert segment_names(directory) == [f"{0:020d}.wal"]
        assert [r.data for r in wal] == [record(0)]


def test_a_spare_is_asked_for_again_after_truncate_after_discarded_it(tmp_path: Path) -> None:
    # ``release`` asks for the spare once per segment and then returns at once
    # below a remembered end: the truncation must make it ask again.
    directory = tmp_path / "log"
    with open_log(directory) as wal:
        count = fill_past_half(wal)
        assert wait_for_spare(wal) == 1
        wal.truncate_after(0)
        assert wait_for_spare(wal) is None
        fill_past_half(wal, count)
        assert wait_for_spare(wal) == 1


def test_a_spare_refused_by_a_busy_pipeline_is_asked_for_at_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals: list[int] = []
    real_start = ChunkPipeline.start

    def start(pipeline: ChunkPipeline, index: int) -> bool:
        if not refusals:
            refusals.append(index)
            return False  # as when the job for the previous segment still runs
        return real_start(pipeline, index)

    monkeypatch.setattr(ChunkPipeline, "start", start)
    with open_log(tmp_path / "log") as wal:
        count = fill_past_half(wal)
        assert refusals == [1]
        assert wait_for_spare(wal) is None
        wal.append(record(count))
        wal.sync()
        assert wait_for_spare(wal) == 1


def test_a_single_file_grows_by_its_spare_window_only(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    with Wal.with_store(FileStore(path, window_size=SEGMENT, precreate=True)) as wal:
        count = fill_past_half(wal)
        assert wait_for_spare(wal) == 1
        assert os.path.getsize(path) == 2 * SEGMENT
        while wal.next_lsn < SEGMENT + RECORD:
            wal.append(record(count))
            count += 1
    with Wal.open(path) as reopened:
        assert [r.data for r in reopened] == [record(i) for i in range(count)]


def test_a_spare_made_while_the_roll_creates_the_segment_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flush leader calls release() (which may start the job for the next
    # segment) without the reservation lock, so it can start the job for the very
    # segment an append is creating inline, between the append's take() and its
    # create: the job won the O_EXCL create and the append raised FileExistsError.
    real_take = ChunkPipeline.take

    def take(pipeline: ChunkPipeline, index: int) -> object:
        chunk = real_take(pipeline, index)
        if chunk is None and index > 0:  # release() starts none before a first segment
            pipeline.start(index)  # the leader's release(), right then
            pipeline._wait()
        return chunk

    monkeypatch.setattr(ChunkPipeline, "take", take)
    path = tmp_path / "log"
    with Wal.with_store(SegmentStore(path, SEGMENT, precreate=True)) as wal:
        lsns = [wal.append(record(index)) for index in range(3 * SEGMENT // RECORD)]
        wal.sync()
    with Wal.open_segmented(path) as wal:
        assert [r.lsn for r in wal] == lsns
        assert [bytes(r.data) for r in wal] == [record(i) for i in range(len(lsns))]


def test_the_spare_is_asked_for_once_the_end_reaches_the_middle_not_a_byte_before(
    tmp_path: Path,
) -> None:
    # The rule in _chunked.py: a log that stays small makes no spare. Every
    # commit's release() at first returns at once below a remembered end; that end
    # must be the middle itself, or the commit that reaches it asks nothing.
    directory = tmp_path / "log"
    store = SegmentStore(directory, SEGMENT, precreate=True)
    try:
        store.ensure_capacity(1)
        middle = SEGMENT // 2
        for end in (1, middle - 1):
            store.release(end)
            store._pipeline._wait()  # type: ignore[union-attr]
            assert segment_names(directory) == [f"{0:020d}.wal"], end
        store.release(middle)
        store._pipeline._wait()  # type: ignore[union-attr]
        assert segment_names(directory) == [f"{0:020d}.wal", f"{1:020d}.wal"]
    finally:
        store.close()


class CreationRecorder(Syscalls):
    """Real syscalls that remember each file creation and allocation."""

    def __init__(self) -> None:
        self.creations: list[str] = []

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if flags & os.O_CREAT:
            self.creations.append(f"create {os.path.basename(path)}")
        return super().open(path, flags, mode)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.creations.append(f"allocate {offset}+{length}")
        super().allocate(fd, offset, length)


@pytest.mark.parametrize("kind", ["segments", "file"])
def test_a_roll_onto_a_ready_spare_creates_and_allocates_nothing(tmp_path: Path, kind: str) -> None:
    # The point of the spare: the roll only hands it over. A roll that created
    # the chunk again would find a segment's file there (and fall back to the
    # spare) or allocate a file's window a second time.
    calls = CreationRecorder()
    store: SegmentStore | FileStore
    if kind == "segments":
        store = SegmentStore(tmp_path / "log", SEGMENT, syscalls=calls, precreate=True)
    else:
        store = FileStore(tmp_path / "log", window_size=SEGMENT, syscalls=calls, precreate=True)
    try:
        store.ensure_capacity(1)
        store.release(SEGMENT // 2)
        store._pipeline._wait()  # type: ignore[union-attr]
        assert store._pipeline.spare_index == 1  # type: ignore[union-attr]
        calls.creations.clear()
        store.ensure_capacity(SEGMENT + 1)
        assert calls.creations == []
        assert store.capacity == 2 * SEGMENT
    finally:
        store.close()


def test_no_thread_to_be_had_fails_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a background job that cannot start (RuntimeError: can't start new
    # thread, as under a process limit) raising out of the flush that asked for
    # it, after that flush made the records durable: the commit would report
    # them lost. Both jobs a flush starts are covered: the spare and the warming.
    def no_thread(*arguments: object) -> None:
        raise RuntimeError("can't start new thread (injected)")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    monkeypatch.setattr(_warming, "start_new_thread", no_thread)
    with open_log(tmp_path / "log") as wal:
        count = fill_past_half(wal)  # asks for the spare and for warming
        for index in range(count, count + SEGMENT // RECORD):  # and rolls inline
            wal.append_and_sync(record(index))
        store = wal.store
        assert isinstance(store, SegmentStore)
        assert store._warmer is not None
        assert store._warmer.jobs_started == 0
        last = index
    monkeypatch.undo()
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as reopened:
        assert [bytes(r.data) for r in reopened][-1] == record(last)
