"""What a ``ChunkedStore`` asks of the disk: the pages a flush writes back, its refusals.

The store protocol says what is durable after a flush; these tests pin what the
flush costs, through the ``Syscalls`` seam: with ``sync_method="msync"`` a flush
of ``[start, end)`` writes back the pages holding that range in each chunk it
touches and nothing else (an msync past a mapping's end fails with ENOMEM, one
below ``start`` writes bytes nobody asked for), and an empty flush calls nothing;
and the readahead advice a chunk is mapped with, read from ``/proc/self/smaps``.
On a macOS faked through the seam, where fdatasync is no flush, both sync methods
msync the same pages, then F_FULLFSYNC each file holding them; the files a flush
fsyncs and the segments a drop removes are pinned too.
Written with mutation testing (docs/RELIABILITY.md): each case kills mutants of
``ChunkedStore.flush`` and the stores' ``_flush_chunk`` that the durability tests
cannot tell from the original.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest
from recorders import MsyncRecorder, SyncRecorder
from smaps import smaps_field

from mmwal import FileStore, SegmentStore, Syscalls, WalClosedError
from mmwal._chunked import ChunkedStore
from mmwal._files import LARGEST_FOLIO
from mmwal._format import HEAD_FILE_NAME, segment_name
from mmwal._syscalls import PAGE_SIZE, mapping_address

#: Four pages per chunk, so a range can start and end inside a chunk at a page
#: that is not its first.
CHUNK = 4 * PAGE_SIZE

#: ``SyncRecorder`` names each file it syncs through ``/proc/self/fd``.
needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="names descriptors through /proc"
)


def _make(kind: str, tmp_path: Path, calls: Syscalls, method: str = "msync") -> ChunkedStore:
    if kind == "file":
        return FileStore(tmp_path / "log", window_size=CHUNK, syscalls=calls, sync_method=method)
    return SegmentStore(tmp_path / "log", CHUNK, syscalls=calls, sync_method=method)


def _filled(kind: str, tmp_path: Path, calls: Syscalls, method: str = "msync") -> ChunkedStore:
    """Make a store of three chunks of ones, flushed: creation and metadata out of the way."""
    store = _make(kind, tmp_path, calls, method)
    store.ensure_capacity(3 * CHUNK)
    store.write(0, b"\1" * store.capacity)
    store.flush(0, store.capacity)
    return store


def _write_ones(directory: Path, segment_size: int, segments: int) -> None:
    """Leave a segmented log of ``segments`` segments of ones, durable, closed."""
    writer = SegmentStore(directory, segment_size, precreate=False)
    writer.ensure_capacity(segments * segment_size)
    writer.write(0, b"\1" * writer.capacity)
    writer.flush(0, writer.capacity)
    writer.close()


def _bases(store: ChunkedStore) -> dict[int, int]:
    """Return the address each chunk of ``store`` is mapped at."""
    bases = {}
    for index in range(store.capacity // CHUNK):
        chunk = store.piece(index * CHUNK)[0]
        assert isinstance(chunk, mmap.mmap)
        bases[index] = mapping_address(chunk)
    return bases


def _log_ranges(bases: dict[int, int], msyncs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return each msync as the log range ``[start, end)`` it wrote back."""
    ranges = []
    for address, length in msyncs:
        owner = [i for i, base in bases.items() if base <= address < base + CHUNK]
        assert len(owner) == 1, f"msync at {address:#x} is in no chunk of the log"
        start = owner[0] * CHUNK + address - bases[owner[0]]
        ranges.append((start, start + length))
    return ranges


# (start, end) asked of flush, and the log ranges it must write back: from the
# page holding the first byte of each chunk's part to the part's end.
CASES = [
    # one chunk, past the first, starting and ending mid-page: a commit's flush
    (
        (CHUNK + PAGE_SIZE + 10, CHUNK + 2 * PAGE_SIZE + 20),
        [(CHUNK + PAGE_SIZE, CHUNK + 2 * PAGE_SIZE + 20)],
    ),
    # ending exactly at a chunk's end
    ((2 * CHUNK + 3 * PAGE_SIZE + 5, 3 * CHUNK), [(2 * CHUNK + 3 * PAGE_SIZE, 3 * CHUNK)]),
    # across two chunks
    (
        (CHUNK + 3 * PAGE_SIZE + 7, 2 * CHUNK + PAGE_SIZE + 1),
        [(CHUNK + 3 * PAGE_SIZE, 2 * CHUNK), (2 * CHUNK, 2 * CHUNK + PAGE_SIZE + 1)],
    ),
    # across three chunks, then clipped at the capacity
    (
        (PAGE_SIZE + 1, 10 * CHUNK),
        [(PAGE_SIZE, CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, 3 * CHUNK)],
    ),
    # empty, or wholly past the capacity: nothing to write back
    ((CHUNK + PAGE_SIZE + 10, CHUNK + PAGE_SIZE + 10), []),
    ((3 * CHUNK + 5, 3 * CHUNK + 50), []),
]


@pytest.mark.parametrize("kind", ["file", "segments"])
@pytest.mark.parametrize(("asked", "expected"), CASES)
def test_a_flush_writes_back_the_pages_holding_its_range_and_no_others(
    tmp_path: Path, kind: str, asked: tuple[int, int], expected: list[tuple[int, int]]
) -> None:
    calls = MsyncRecorder()
    store = _filled(kind, tmp_path, calls)
    try:
        calls.msyncs.clear()
        store.flush(*asked)
        assert _log_ranges(_bases(store), calls.msyncs) == expected
    finally:
        store.close()


@needs_proc
@pytest.mark.parametrize("kind", ["file", "segments"])
@pytest.mark.parametrize("method", ["msync", "fdatasync"])
@pytest.mark.parametrize(("asked", "expected"), CASES)
def test_on_macos_a_flush_writes_back_its_pages_then_full_fsyncs_the_file_holding_them(
    tmp_path: Path, kind: str, method: str, asked: tuple[int, int], expected: list[tuple[int, int]]
) -> None:
    # macOS has no fdatasync: with either method a flush msyncs the pages holding
    # its range, then F_FULLFSYNCs the file they lie in (a segment's after each of
    # its spans; a single file's after each span with msync, once for all of them
    # with fdatasync). Linux's fdatasync writes the whole file, so only here do
    # the address and length a fdatasync store passes on matter, and the path an
    # msync segment store opens for F_FULLFSYNC.
    calls = SyncRecorder("darwin")
    store = _filled(kind, tmp_path, calls, method)
    try:
        bases = _bases(store)
        calls.clear()
        store.flush(*asked)
        assert _log_ranges(bases, calls.msyncs) == expected
        if isinstance(store, SegmentStore):
            files = [store.segment_path(start // CHUNK) for start, _ in expected]
        else:
            assert isinstance(store, FileStore)
            files = [store.path] * (len(expected) if method == "msync" else min(1, len(expected)))
        assert calls.full_fsyncs == [os.path.realpath(path) for path in files]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_discard_after_writes_back_the_pages_it_zeroed_and_no_others(
    tmp_path: Path, kind: str
) -> None:
    # The chunk holding the end first, from the page holding the end to the
    # chunk's end; then every later chunk a file keeps (segments are removed).
    calls = MsyncRecorder()
    store = _filled(kind, tmp_path, calls)
    try:
        bases = _bases(store)
        calls.msyncs.clear()
        end = CHUNK + 2 * PAGE_SIZE + 10
        store.discard_after(end)
        expected = [(CHUNK + 2 * PAGE_SIZE, 2 * CHUNK)]
        if kind == "file":
            expected.append((2 * CHUNK, 3 * CHUNK))
        assert _log_ranges(bases, calls.msyncs) == expected
        assert store.read(0, store.capacity) == b"\1" * end + bytes(store.capacity - end)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_a_closed_store_names_itself_when_it_refuses(tmp_path: Path, kind: str) -> None:
    store = _make(kind, tmp_path, Syscalls())
    store.ensure_capacity(1)
    store.close()
    for operation in (
        lambda: store.flush(0, 1),
        lambda: store.release(1),
        lambda: store.read(0, 1),
        lambda: store.discard_after(0),
    ):
        with pytest.raises(WalClosedError) as refused:
            operation()
        assert str(store.location) in str(refused.value)


def _vm_flags(address: int) -> set[str]:
    """Return the kernel's flags for this process's mapping at ``address`` (``smaps``)."""
    return set(smaps_field(address, "VmFlags"))


def _address(store: ChunkedStore, offset: int) -> int:
    chunk = store.piece(offset)[0]
    assert isinstance(chunk, mmap.mmap)
    return mapping_address(chunk)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_a_sealed_segment_mapped_again_reads_ahead_and_the_tail_does_not(tmp_path: Path) -> None:
    # The tail is mapped without fault readahead (``rr``: MADV_RANDOM) so a commit
    # writes back the pages it touched, not a large folio; a segment the durable
    # end passed is read back, and readahead is what makes that fast. A sealed
    # segment let go (mapped_chunks) and mapped again must not come back random.
    size = 64 * 1024
    store = SegmentStore(tmp_path / "log", size, precreate=False, mapped_chunks=1)
    try:
        store.prepare_end(0)  # as the log does once recovery found the end
        store.ensure_capacity(4 * size)
        store.write(0, b"\1" * (4 * size))
        store.flush(0, 4 * size)
        store.release(3 * size + 1)  # segments 0-2 sealed, and let go
        assert store.read(0, 3) == b"\1\1\1"  # maps segment 0 again
        assert "rr" in _vm_flags(_address(store, 3 * size))
        assert "rr" not in _vm_flags(_address(store, 0))
    finally:
        store.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_segments_a_truncation_removes_are_unmapped_at_once(tmp_path: Path) -> None:
    # A removed file stays on disk while a mapping holds it: a truncation that
    # kept the mappings of the segments it removed would give back no space
    # until the log closed.
    directory = tmp_path / "log"
    store = SegmentStore(directory, CHUNK, precreate=False)
    try:
        store.ensure_capacity(4 * CHUNK)
        store.write(0, b"\1" * store.capacity)
        store.flush(0, store.capacity)
        store.discard_after(CHUNK + 1)
        with open("/proc/self/maps") as maps:
            deleted = [line for line in maps if str(directory) in line and "(deleted)" in line]
        assert deleted == []
        assert sorted(p.name for p in directory.glob("*.wal")) == [
            f"{0:020d}.wal",
            f"{1:020d}.wal",
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("nonzero_at", "written_back"),
    [
        ([100 * 1024], (64 * 1024, 64 * 1024)),  # the second block alone
        ([10, 100 * 1024], (0, 128 * 1024)),  # the first two blocks
    ],
)
def test_discard_after_writes_back_a_later_window_from_its_first_nonzero_block(
    tmp_path: Path, nonzero_at: list[int], written_back: tuple[int, int]
) -> None:
    # Zeroing reads a window in blocks of 64 KiB and writes only those holding
    # a nonzero byte: the flush covers them, from the first such block on.
    window = 256 * 1024
    calls = MsyncRecorder()
    store = FileStore(tmp_path / "log", window_size=window, syscalls=calls, sync_method="msync")
    try:
        store.ensure_capacity(2 * window)
        for offset in nonzero_at:
            store.write(window + offset, b"\1" * 10)
        store.flush(0, store.capacity)
        base = mapping_address(store.piece(window)[0])  # type: ignore[arg-type]
        calls.msyncs.clear()
        store.discard_after(10)
        assert calls.msyncs == [(base + written_back[0], written_back[1])]
        assert store.nonzero_extent(0) is None
    finally:
        store.close()


class FullAfter(Syscalls):
    """Real syscalls whose allocations fail with ENOSPC after ``allowed`` of them."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self.allowed <= 0:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        self.allowed -= 1
        super().allocate(fd, offset, length)


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_a_growth_that_fails_midway_counts_no_unit(tmp_path: Path, kind: str) -> None:
    # All or nothing: the units a failed growth made before the disk filled are
    # given back, and the count of units made (``Wal.stats().segments_created``)
    # forgets them too, however many units the store had before.
    calls = FullAfter(3)
    store = _make(kind, tmp_path, calls)
    try:
        store.ensure_capacity(2 * CHUNK)
        assert store.units_created == 2
        with pytest.raises(OSError, match="No space"):
            store.ensure_capacity(6 * CHUNK)  # one more unit, then the disk is full
        assert (store.units_created, store.capacity) == (2, 2 * CHUNK)
        calls.allowed = 1  # space again
        store.ensure_capacity(3 * CHUNK)
        assert store.units_created == 3
    finally:
        store.close()


class MapCounter(Syscalls):
    """Real syscalls that count the mappings made."""

    def __init__(self) -> None:
        self.maps = 0

    def map(self, fd: int, length: int, offset: int, *, writable: bool) -> mmap.mmap:
        self.maps += 1
        return super().map(fd, length, offset, writable=writable)


def test_reading_back_as_many_segments_as_the_cache_holds_maps_none_again(
    tmp_path: Path,
) -> None:
    # ``mapped_chunks`` segments besides the last stay mapped once read: a reader
    # going back and forth among that many maps each once, not on every visit.
    directory = tmp_path / "log"
    _write_ones(directory, CHUNK, 6)
    calls = MapCounter()
    store = SegmentStore(directory, CHUNK, syscalls=calls, writable=False, mapped_chunks=3)
    try:
        before = calls.maps
        for _ in range(3):
            for index in (0, 1, 2):
                assert store.read(index * CHUNK, 1) == b"\1"
        assert calls.maps - before == 3
        store.read(3 * CHUNK, 1)  # a fourth: one of the three is let go
        assert calls.maps - before == 4
    finally:
        store.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_prepare_end_leaves_the_segments_below_the_end_reading_ahead(tmp_path: Path) -> None:
    # Once recovery found the end, the segment holding it is mapped for writing
    # (no readahead, its clean cache evicted); the segments below are only read.
    size = 64 * 1024
    directory = tmp_path / "log"
    _write_ones(directory, size, 3)
    store = SegmentStore(directory, size, precreate=False)
    try:
        store.prepare_end(2 * size + 100)
        flags = [_vm_flags(_address(store, index * size)) for index in range(3)]
        assert ["rr" in each for each in flags] == [False, False, True]
    finally:
        store.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_prepare_end_maps_for_writing_from_the_folio_boundary_below_the_end(
    tmp_path: Path,
) -> None:
    # Inside the segment holding the end, the bytes below the 2 MiB boundary
    # under the end are sealed and keep their readahead; from it on, no
    # readahead (the advice splits the mapping in two).
    size = 2 * LARGEST_FOLIO
    directory = tmp_path / "log"
    writer = SegmentStore(directory, size, precreate=False)
    writer.ensure_capacity(2 * size)
    writer.close()
    store = SegmentStore(directory, size, precreate=False)
    try:
        store.prepare_end(size + LARGEST_FOLIO + 100)
        base = _address(store, size)
        assert "rr" not in _vm_flags(base)
        assert "rr" in _vm_flags(base + LARGEST_FOLIO)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_an_offset_outside_the_store_is_refused_with_the_offset_and_the_bounds(
    tmp_path: Path, kind: str
) -> None:
    store = _make(kind, tmp_path, Syscalls())
    try:
        store.ensure_capacity(1)
        with pytest.raises(
            ValueError, match=rf"offset {CHUNK} is outside .*\[0, {CHUNK}\)"
        ) as refused:
            store.piece(CHUNK)
        assert str(store.location) in str(refused.value)
    finally:
        store.close()


@needs_proc
def test_a_flush_fsyncs_each_new_segment_past_one_a_drop_removed_first(tmp_path: Path) -> None:
    # Catches: the loop over new segments stopping at one that ``drop_before``
    # removed before any flush (``break`` for ``continue``): the later segments'
    # creation would not be durable when the flush returns.
    calls = SyncRecorder()
    store = SegmentStore(tmp_path / "log", CHUNK, syscalls=calls, precreate=False)
    try:
        store.ensure_capacity(4 * CHUNK)  # segments 0 to 3 made; none fsynced yet
        store.drop_before(2 * CHUNK)  # 0 and 1 removed
        calls.clear()
        store.flush(2 * CHUNK, store.capacity)
        assert calls.fsyncs == [os.path.realpath(store.segment_path(i)) for i in (2, 3)]
    finally:
        store.close()


@needs_proc
def test_drop_before_removes_each_segment_once_and_makes_none_past_the_head(
    tmp_path: Path,
) -> None:
    # Catches: a drop at the head that writes the head file again (a first one
    # for a log that never dropped); a second drop removing from segment 0 again
    # (those files are gone: FileNotFoundError); a drop past the end making one
    # segment more than the one that holds the head.
    directory = tmp_path / "log"
    calls = SyncRecorder()
    store = SegmentStore(directory, CHUNK, syscalls=calls, precreate=False)
    try:
        store.ensure_capacity(2 * CHUNK)
        store.flush(0, store.capacity)
        calls.clear()
        assert store.drop_before(0) == 0
        assert (calls.fsyncs, (directory / HEAD_FILE_NAME).exists()) == ([], False)
        assert store.drop_before(CHUNK + 1) == CHUNK + 1  # segment 0 goes
        calls.clear()
        assert store.drop_before(CHUNK + 1) == CHUNK + 1
        assert calls.fsyncs == []
        assert store.drop_before(4 * CHUNK - 1) == 4 * CHUNK - 1  # past the end
        assert sorted(path.name for path in directory.glob("*.wal")) == [segment_name(3)]
        assert store.capacity == 4 * CHUNK
    finally:
        store.close()


@needs_proc
def test_a_single_file_flush_owes_its_size_after_growth_and_its_directory_entry_once(
    tmp_path: Path,
) -> None:
    # Catches: a flush after growth that fsyncs the directory too (the file's
    # entry did not change: a directory fsync more per window), or that fsyncs
    # the file again at every later flush.
    calls = SyncRecorder()
    path = os.path.realpath(tmp_path / "log")
    store = FileStore(path, window_size=CHUNK, syscalls=calls, sync_method="msync")
    try:
        store.ensure_capacity(CHUNK)
        store.write(0, b"\1")
        store.flush(0, 1)  # a new file: its size and its entry
        assert (calls.fsyncs, calls.directory_fsyncs) == ([path], [os.path.dirname(path)])
        calls.clear()
        store.ensure_capacity(2 * CHUNK)
        store.flush(0, 1)
        assert (calls.fsyncs, calls.directory_fsyncs) == ([path], [])
        calls.clear()
        store.flush(0, 1)
        assert (calls.fsyncs, calls.directory_fsyncs) == ([], [])
    finally:
        store.close()
