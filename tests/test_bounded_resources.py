"""Descriptors and mappings do not grow with the number of segments.

Before: one mapping (and, through ``mmap``'s own descriptor, one descriptor) per
live segment, kept until the segment was dropped: under ``ulimit -n 256`` appends
failed at 249 segments, and past ``vm.max_map_count`` (65,530) mappings a log
could not be opened at all.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from smaps import smaps_field

from mmwal import FileStore, SegmentStore, Wal
from mmwal._format import encode_frame, segment_name
from mmwal._syscalls import mapping_address

SEGMENT = 4096
FRAME = 256  # 16 frames a segment; some records span two segments
SOAK = os.environ.get("MMWAL_SOAK") == "1"


def payload(index: int) -> bytes:
    return index.to_bytes(8, "little") * ((FRAME - 8) // 8)


def write_log(directory: Path, segments: int) -> int:
    """Write a log of ``segments`` full segments straight to files; return its records."""
    directory.mkdir()
    stream = bytearray()
    records = 0
    for index in range(segments):
        while len(stream) < SEGMENT:
            stream += encode_frame(payload(records))
            records += 1
        fd = os.open(directory / segment_name(index), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, stream[:SEGMENT])
        finally:
            os.close(fd)
        del stream[:SEGMENT]
    # One sync for all: recovery's flush of each new, unsynced file would cost a
    # journal commit apiece (minutes for 100,000 files).
    os.sync()
    # The frame cut by the last segment's end is not in the log.
    return records - (1 if stream else 0)


CHILD = textwrap.dedent(
    """
    import os, resource, sys
    from mmwal import Wal

    directory, expected = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    def mappings():
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)

    base = mappings()
    most = 0
    wal = Wal.open_segmented(directory)
    count = 0
    cut = None
    for record in wal:
        count += 1
        if cut is None and record.lsn >= 100 * 4096:
            cut = record.lsn
        if count % 10_000 == 0:
            most = max(most, mappings() - base, len(os.listdir("/proc/self/fd")))
    assert count == expected, (count, expected)
    lsns = wal.append_many([b"x" * 1000] * 40)
    wal.sync()
    wal.truncate_after(lsns[20])
    head = wal.truncate_before(cut)
    wal.append(b"after")
    wal.sync()
    most = max(most, mappings() - base, len(os.listdir("/proc/self/fd")))
    wal.close()
    with Wal.open_segmented(directory, readonly=True) as reader:
        tail = sum(1 for _ in reader)
        most = max(most, mappings() - base, len(os.listdir("/proc/self/fd")))
    print(head, tail, most)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/maps")
@pytest.mark.parametrize(
    "segments",
    [
        2_000,
        # A writable open flushes every segment (one device cache flush each,
        # ~1 ms here), and truncate_before unlinks them: minutes, so soak only.
        pytest.param(
            100_000,
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not SOAK, reason="soak setting: run with MMWAL_SOAK=1"),
            ],
        ),
    ],
)
def test_a_log_of_many_segments_under_256_descriptors(tmp_path: Path, segments: int) -> None:
    directory = tmp_path / "log"
    records = write_log(directory, segments)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), str(records)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    head, tail, most = map(int, done.stdout.split())
    # Frames are 256 bytes back to back: the head is record 1,600's LSN; after
    # it, the rest of the written records, 21 of the 40 appended, and one more.
    assert head == 100 * SEGMENT
    assert tail == records - 1_600 + 21 + 1
    assert most < 64


def test_sealed_segments_are_let_go_beyond_the_cache(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    records = write_log(directory, 64)
    store = SegmentStore(directory, mapped_chunks=3)
    with Wal.with_store(store) as wal:
        assert sum(1 for _ in wal) == records
        # The last segment and three others.
        assert len(store._chunks) <= 4
        assert [r.data for r in wal.iter(wal.head_lsn)][:2] == [payload(0), payload(1)]
        assert len(store._chunks) <= 4


def test_close_leaves_no_mapping_behind_that_holds_the_lock(tmp_path: Path) -> None:
    # A single file keeps its windows after truncate_after, so the window the log
    # appends into need not be the last one, and reading others let it go from the
    # cache while the append fast path still held it. Close then left it mapped,
    # and with it (mmap keeps a descriptor) the writer's lock: the usual
    # ``wal.close(); wal = mmwal.open(path)`` raised WalLockedError.
    path = tmp_path / "log.wal"
    window = 1 << 20
    with Wal.with_store(FileStore(path, window_size=window)) as wal:
        lsns = wal.append_many([b"x" * (window // 2)] * 6)  # windows 0..3
    wal = Wal.with_store(FileStore(path, window_size=window, mapped_chunks=1))
    wal.truncate_after(lsns[0])  # the end moves back into window 0
    wal.append(b"y" * window)  # ends in window 1, which the fast path then holds;
    # copying its start into window 0 mapped that again and let window 1 go
    wal.close()
    reopened = Wal.with_store(FileStore(path, window_size=window))
    assert [r.data for r in reopened] == [b"x" * (window // 2), b"y" * window]
    reopened.close()
    del wal


def test_a_chunk_growth_has_not_counted_yet_is_never_let_go(tmp_path: Path) -> None:
    # Growth (``ensure_capacity``, under the append lock) puts the new last chunk
    # in the store's map one step before it counts it in the store's end; a
    # flush's ``release`` (no append lock) that bounds the mappings in between
    # took the old last chunk for the tail and let the new one go. The append
    # then mapped the new segment a second time, and a growth that failed after
    # it undid its chunks with ``pop`` and raised KeyError over the OSError.
    # The interleaving is set up by hand: the two steps are adjacent statements.
    directory = tmp_path / "log"
    write_log(directory, 3)
    store = SegmentStore(directory, mapped_chunks=1)
    with Wal.with_store(store) as wal:
        assert sum(1 for _ in wal) > 0
        growing = store._end_chunk
        store._chunks[growing] = store._create_chunk(growing)
        store._let_go_beyond_limit(store._end_chunk - 1)
        assert growing in store._chunks
        assert store._end_chunk - 1 in store._chunks  # the tail until growth counts it
        store._end_chunk = growing + 1
        store._units_created += 1
        wal.append(b"after")
        wal.sync()
        assert list(wal)[-1].data == b"after"


def _resident_kib(address: int) -> int:
    """Return the resident KiB this process maps at ``address`` (``/proc/self/smaps``)."""
    return int(smaps_field(address, "Rss")[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_a_segment_the_durable_end_passes_gives_its_pages_back_at_once(tmp_path: Path) -> None:
    # ``release`` runs on every commit and returns at once below a remembered
    # end; that end is the next segment's start, so the first commit past it
    # seals the segment: its resident pages go (the page cache keeps them).
    size = 64 * 1024
    store = SegmentStore(tmp_path / "log", size, precreate=False)
    try:
        store.ensure_capacity(4 * size)  # one growth makes four segments
        store.write(0, b"\1" * (4 * size))
        store.flush(0, 4 * size)
        addresses = []
        for index in range(4):
            chunk = store.piece(index * size)[0]
            assert isinstance(chunk, mmap.mmap)
            addresses.append(mapping_address(chunk))
        assert all(_resident_kib(address) > 0 for address in addresses)
        for commit_end in (size + 1, size + 2, 2 * size + 1):
            store.release(commit_end)
        assert [_resident_kib(address) > 0 for address in addresses] == [False, False, True, True]
    finally:
        store.close()
