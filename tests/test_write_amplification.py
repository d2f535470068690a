"""Bytes a commit makes the kernel write: the pages it touched, never a whole folio.

The counter is this process's ``write_bytes`` in ``/proc/self/io``: the kernel
charges the dirtier of a page-cache folio with its full size when it becomes
dirty, so a 256-byte commit into a 2 MiB folio counts 2 MiB. Unlike the block
device's counters it ignores other processes on a shared machine.

These states make an mmap store write too much on Linux 6.16+ with ext4 (large
folios); elsewhere the bounds hold trivially.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mmwal import Wal

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/io"), reason="needs Linux per-process I/O counters"
)

MIB = 1 << 20
SEGMENT = 32 * MIB
COMMIT = os.urandom(256)
BIG = os.urandom(64 * 1024)
# A 256-byte commit rewrites its page (and at times the next one): 4-8 KiB.
# Old behaviour was 1-2 MiB per commit; leave room for filesystem metadata.
COMMIT_BOUND = 64 * 1024


def written_bytes() -> int:
    with open("/proc/self/io") as counters:
        for line in counters:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


def per_commit(commit: Callable[[], object], count: int = 40) -> float:
    before = written_bytes()
    for _ in range(count):
        commit()
    return (written_bytes() - before) / count


def grow(wal: Wal, nbytes: int) -> None:
    """Append ``nbytes`` through the mapping in order, as a log that ran for a while."""
    for _ in range(nbytes // len(BIG)):
        wal.append(BIG)
    wal.sync()


def test_commits_deep_in_a_grown_segment_write_their_pages(tmp_path: Path) -> None:
    # Sequential faults over tens of MiB is what grows readahead's folios to 2 MiB.
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        grow(wal, 24 * MIB)
        assert per_commit(lambda: wal.append_and_sync(COMMIT)) < COMMIT_BOUND


def test_commits_after_a_reopen_write_their_pages(tmp_path: Path) -> None:
    # Recovery scans the tail past the end, which reads it ahead into large folios.
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, SEGMENT) as wal:
        grow(wal, 4 * MIB)
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    with Wal.open_segmented(directory) as wal:
        grow(wal, 12 * MIB)
        assert per_commit(lambda: wal.append_and_sync(COMMIT)) < COMMIT_BOUND


@pytest.mark.parametrize("segmented", [True, False])
def test_a_reader_builds_no_large_folios_ahead_of_the_writer(
    tmp_path: Path, segmented: bool
) -> None:
    # A read-only handle's recovery reads everything past the end: with readahead
    # that fills the page cache ahead of the writer with 2 MiB folios.
    path = tmp_path / ("log" if segmented else "wal.log")

    def open_log(readonly: bool = False) -> Wal:
        if segmented:
            return Wal.open_segmented(path, SEGMENT, readonly=readonly)
        return Wal.open(path, readonly=readonly)

    with open_log() as wal:
        grow(wal, 4 * MIB)
        with open_log(readonly=True) as reader:
            assert sum(1 for _ in reader) == 64
            grow(wal, 16 * MIB)
            assert per_commit(lambda: wal.append_and_sync(COMMIT)) < COMMIT_BOUND


def test_a_new_segment_is_not_written_as_zeros(tmp_path: Path) -> None:
    # Prefaulting a new segment for writing dirties every page of it: the first
    # sync after the roll would write the whole preallocated segment.
    with Wal.open_segmented(tmp_path / "log", 8 * MIB) as wal:
        grow(wal, 8 * MIB - len(BIG))
        before = written_bytes()
        grow(wal, 2 * len(BIG))
        assert wal.stats().segments_created == 2
        assert written_bytes() - before < 2 * MIB
