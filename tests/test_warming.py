"""The pages past the durable end are faulted in ahead of the appends, clean and bounded.

``TailWarmer`` is driven by hand over anonymous mappings (its arithmetic), then
through real logs: what the kernel says of the tail's mapping (``smaps``), and
that a store waits for a job before it closes or moves its end back.
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smaps import compound_pages, smaps_field

from mmwal import Wal, _warming
from mmwal._chunked import ChunkedStore
from mmwal._syscalls import PAGE_SIZE, mapping_address
from mmwal._warming import WARM_AHEAD, TailWarmer

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="MADV_POPULATE_READ is Linux's")

CHUNK = 8 << 20
AHEAD = 64 * PAGE_SIZE


class Recorded:
    """``populate_read`` replaced: the ranges asked for, and a gate jobs wait at."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, address: int, length: int) -> bool:
        self.ranges.append((address, length))
        self.gate.wait()
        return True


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    calls = Recorded()
    monkeypatch.setattr(_warming, "populate_read", calls)
    yield calls
    calls.gate.set()


def test_each_job_warms_the_pages_after_the_end_inside_the_chunk(recorded: Recorded) -> None:
    # Catches: warming the page that holds the end (written already), warming
    # past the chunk's mapping, or a window other than ``ahead``.
    warmer = TailWarmer(CHUNK, AHEAD)
    chunk = mmap.mmap(-1, CHUNK)
    address = mapping_address(chunk)
    again = warmer.after_flush(100, 0, chunk)
    warmer.wait()
    assert recorded.ranges == [(address + PAGE_SIZE, AHEAD)]  # whole pages
    assert again == PAGE_SIZE + AHEAD // 2
    # Near the chunk's end: up to the end, then nothing more for this chunk.
    end = CHUNK - 3 * PAGE_SIZE - 7
    assert warmer.after_flush(end, 0, chunk) == CHUNK
    warmer.wait()
    assert recorded.ranges[-1] == (address + CHUNK - 3 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert warmer.after_flush(CHUNK - 5, 0, chunk) == CHUNK
    assert len(recorded.ranges) == 2
    chunk.close()


def test_a_job_is_asked_for_once_per_half_window(recorded: Recorded) -> None:
    # Catches: a warmer that starts a job on every commit (a thread each), or
    # one that never starts another after the first.
    warmer = TailWarmer(CHUNK, AHEAD)
    chunk = mmap.mmap(-1, CHUNK)
    end = 0
    calls = 0
    again = 0
    while end < 16 * AHEAD:
        end += 264
        if end >= again:
            calls += 1
            again = warmer.after_flush(end, 0, chunk)
            warmer.wait()
    assert warmer.jobs_started == len(recorded.ranges) == calls
    assert 31 <= warmer.jobs_started <= 33
    # Every byte from the first page after the start to the last end is warmed once.
    covered = sorted(recorded.ranges)
    address = mapping_address(chunk)
    assert covered[0][0] == address + PAGE_SIZE
    for (first, length), (following, _) in itertools.pairwise(covered):
        assert first + length == following
    assert covered[-1][0] + covered[-1][1] - address >= end
    chunk.close()


def test_a_busy_warmer_starts_nothing_and_asks_again_soon(recorded: Recorded) -> None:
    # Catches: two jobs at once, or a busy warmer answering an end it has
    # passed (the store would then take the slow path on every commit).
    warmer = TailWarmer(CHUNK, AHEAD)
    chunk = mmap.mmap(-1, CHUNK)
    recorded.gate.clear()
    warmer.after_flush(0, 0, chunk)
    end = AHEAD
    assert warmer.after_flush(end, 0, chunk) == end + AHEAD // 8
    assert warmer.jobs_started == 1
    recorded.gate.set()
    warmer.wait()
    assert warmer.after_flush(end, 0, chunk) == end + AHEAD // 2
    assert warmer.jobs_started == 2
    warmer.wait()
    chunk.close()


def test_an_end_outside_the_last_chunk_warms_nothing(recorded: Recorded) -> None:
    # Catches: warming a chunk the store may let go (not the last one), or a
    # missing chunk.
    warmer = TailWarmer(CHUNK, AHEAD)
    chunk = mmap.mmap(-1, CHUNK)
    assert warmer.after_flush(CHUNK + 10, 2, chunk) == 2 * CHUNK
    assert warmer.after_flush(10, 0, None) == CHUNK
    assert recorded.ranges == []
    chunk.close()


@given(
    ahead_pages=st.integers(2, 64),
    chunk_pages=st.integers(1, 64),
    steps=st.lists(st.integers(0, 64 * PAGE_SIZE), min_size=1, max_size=30),
)
@settings(max_examples=60, deadline=None)
def test_the_answer_is_always_past_the_end(
    ahead_pages: int, chunk_pages: int, steps: list[int]
) -> None:
    # Catches: an answer at or below the end, which would send every later
    # commit down the store's slow path (``release`` never idle again).
    chunk_size = chunk_pages * PAGE_SIZE
    warmer = TailWarmer(chunk_size, ahead_pages * PAGE_SIZE)
    warmer.jobs_started = 0
    chunks = {index: mmap.mmap(-1, chunk_size) for index in range(65)}
    end = 0
    for step in steps:
        end = min(end + step, 64 * chunk_size)
        index = end // chunk_size
        assert warmer.after_flush(end, index, chunks[index]) > end
        warmer.wait()
    for chunk in chunks.values():
        chunk.close()


def test_a_window_must_be_whole_pages() -> None:
    with pytest.raises(ValueError, match="multiple"):
        TailWarmer(CHUNK, PAGE_SIZE + 1)
    with pytest.raises(ValueError, match="two pages"):
        TailWarmer(CHUNK, PAGE_SIZE)


def _store(wal: Wal) -> ChunkedStore:
    store = wal._store
    assert isinstance(store, ChunkedStore)
    return store


def _kib(address: int, field: str) -> int:
    value, unit = smaps_field(address, field)
    assert unit == "kB"
    return int(value)


@linux_only
@pytest.mark.parametrize("segmented", [True, False])
def test_a_commit_leaves_the_next_pages_resident_and_clean(tmp_path: Path, segmented: bool) -> None:
    # Catches: no warming at all (the pages stay out) in either file store, and
    # warming that dirties what it touches (MADV_POPULATE_WRITE: the kernel
    # would write the zeros back).
    path = tmp_path / "log"
    with Wal.open_segmented(path, CHUNK) if segmented else Wal.open(path) as wal:
        store = _store(wal)
        warmer = store._warmer
        assert warmer is not None
        wal.append_and_sync(bytes(256))
        warmer.wait()
        wal.sync()
        address = mapping_address(store._chunks[0])
        assert _kib(address, "Rss") >= WARM_AHEAD // 1024
        dirty = _kib(address, "Private_Dirty") + _kib(address, "Shared_Dirty")
        assert dirty == 0
        assert warmer.warmed_to == PAGE_SIZE + WARM_AHEAD


@linux_only
def test_warmed_pages_are_order_0_deep_in_a_grown_segment(tmp_path: Path) -> None:
    # Catches: warming that reads ahead. Faults running in order through tens
    # of MiB grow readahead's folios; warmed pages in large folios would make
    # each commit into them write the whole folio back.
    pages = compound_pages(0, 0)
    if pages is None:
        pytest.skip("reading /proc/kpageflags needs root")
    with Wal.open_segmented(tmp_path / "log", 4 * CHUNK) as wal:
        store = _store(wal)
        warmer = store._warmer
        assert warmer is not None
        grown = os.urandom(64 * 1024 - 8)
        for _ in range(16 * 16):
            wal.append(grown)
        wal.sync()
        warmer.wait()
        end = wal.next_lsn
        assert warmer.warmed_to == end + WARM_AHEAD
        address = mapping_address(store._chunks[0])
        assert compound_pages(address + end, WARM_AHEAD) == (WARM_AHEAD // PAGE_SIZE, 0)


@linux_only
def test_close_waits_for_a_warming_job(tmp_path: Path, recorded: Recorded) -> None:
    # Catches: a store that unmaps (or returns from close) while a job still
    # faults its tail in; the job must not outlive the store.
    wal = Wal.open_segmented(tmp_path / "log", CHUNK)
    recorded.gate.clear()
    wal.append_and_sync(b"x" * 100)
    warmer = _store(wal)._warmer
    assert warmer is not None
    assert warmer.busy, "the commit started no warming job (or it ran past the gate)"
    closing = threading.Thread(target=wal.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive()
    recorded.gate.set()
    closing.join()
    assert not warmer.busy


@linux_only
def test_a_truncation_waits_for_the_job_and_warms_from_its_new_end(
    tmp_path: Path, recorded: Recorded
) -> None:
    # Catches: zeroing past the new end while a job faults the same pages in,
    # and a warmer that keeps its old window after the end moved back.
    with Wal.open_segmented(tmp_path / "log", CHUNK) as wal:
        kept = [wal.append_and_sync(bytes(256)) for _ in range(20)][10]
        warmer = _store(wal)._warmer
        assert warmer is not None
        warmer.wait()
        recorded.gate.clear()
        try:
            started = warmer.jobs_started
            wal.append_and_sync(bytes(WARM_AHEAD))  # past the window: a job starts, held
            assert warmer.jobs_started == started + 1
            truncating = threading.Thread(target=wal.truncate_after, args=(kept,))
            truncating.start()
            truncating.join(0.2)
            assert truncating.is_alive()
        finally:
            recorded.gate.set()  # else a failure above would wait for the job at close
        truncating.join()
        assert warmer.warmed_to == 0
        end = wal.append_and_sync(bytes(256)) + 8 + 256
        warmer.wait()
        assert warmer.warmed_to == end + WARM_AHEAD + -end % PAGE_SIZE
