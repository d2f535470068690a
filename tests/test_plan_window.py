"""``Store.plan_window``: the flush plan a store publishes, read by the commit instead of a call.

The oracle is the store's own ``flush_plan``: whenever a window is set, asking
``flush_plan`` for any range inside it must give the window's plan. A window a
change left standing (a growth, a truncation, a new segment's fsync owed) would
let a commit flush with a stale plan: an fdatasync of the wrong file, or one that
skips a new file's or the directory's fsync the commit's records depend on.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmwal import FileStore, SegmentStore, Syscalls, Wal
from mmwal._chunked import ChunkedStore
from mmwal._format import SPEEDUPS


def _check_window(store: ChunkedStore, rng: random.Random) -> None:
    """Fail if the published window answers otherwise than ``flush_plan`` for a range in it."""
    window = store.plan_window
    if window is None:
        return
    low, high, plan = window
    if low >= high:
        return  # covers no range
    ranges = {(low, low + 1), (low, high), (high - 1, high)}
    for _ in range(3):
        start = rng.randrange(low, high)
        ranges.add((start, rng.randrange(start + 1, high + 1)))
    for start, end in sorted(ranges):
        assert store.flush_plan(start, end) == plan, (window, start, end)


def _stores(tmp_path: Path, kind: str, size: int) -> ChunkedStore:
    if kind == "segments":
        return SegmentStore(tmp_path / "log", size)
    return FileStore(tmp_path / "log.wal", window_size=size)


def _random_step(wal: Wal, rng: random.Random, reopen: Callable[[], Wal], kind: str) -> Wal:
    """Take one random step on ``wal``; return the log to go on with (reopened or not)."""
    action = rng.random()
    if action < 0.45:
        wal.append_and_sync(os.urandom(rng.choice((1, 200, 3000))))
    elif action < 0.65:
        for _ in range(rng.randrange(1, 20)):
            wal.append(os.urandom(rng.choice((100, 5000, 20_000))))
        if rng.random() < 0.5:
            wal.sync()
    elif action < 0.72:
        for _ in wal.iter_from(wal.head_lsn):
            pass
    elif action < 0.86 and wal.durable_lsn > wal.head_lsn:
        lsns = [lsn for lsn, _ in wal.iter_from(wal.head_lsn)]
        if lsns and (action < 0.8 or kind == "file"):
            wal.truncate_after(rng.choice(lsns))
        elif lsns:
            wal.truncate_before(rng.choice(lsns))
    elif action < 0.9:
        wal.close()
        return reopen()
    else:
        wal.sync()
    return wal


@pytest.mark.parametrize("kind", ["segments", "file"])
@pytest.mark.parametrize("seed", range(6))
def test_a_published_window_always_agrees_with_flush_plan(
    tmp_path: Path, kind: str, seed: int
) -> None:
    # Catches: any change that alters flush_plan's answer without clearing the
    # window: a growth (a new segment or window whose fsync is owed, a new last
    # chunk that gives release work), a truncation either way, a chunk let go,
    # a Python flush that replaced the kept descriptor. Random commits, appends,
    # syncs, reads, truncations and reopenings; after each, the window (if any)
    # is checked against flush_plan at its edges and inside.
    rng = random.Random(seed)
    size = 64 * 1024

    def reopen() -> Wal:
        return Wal.with_store(_stores(tmp_path, kind, size))

    wal = reopen()
    published = 0
    try:
        for _ in range(300):
            wal = _random_step(wal, rng, reopen, kind)
            published += wal.store.plan_window is not None
            _check_window(wal.store, rng)  # type: ignore[arg-type]
    finally:
        wal.close()
    if SPEEDUPS:
        assert published > 0, "no commit published a window: the test checked nothing"


@contextmanager
def _committed(tmp_path: Path) -> Iterator[tuple[SegmentStore, Wal]]:
    """A log of 4 KiB segments that took three commits, and its store."""
    store = SegmentStore(tmp_path / "log", 4096, precreate=False)
    with Wal.with_store(store) as wal:
        for _ in range(3):
            wal.append_and_sync(b"x" * 10)
        yield store, wal


def test_growth_clears_the_window_before_its_records_can_be_flushed(tmp_path: Path) -> None:
    # Catches: a window left standing by a growth. The new segment's fsync and
    # the directory's are owed, and a commit reading the old window would skip
    # them; checked on the store directly, with and without the log.
    with _committed(tmp_path) as (store, wal):
        store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn)
        assert store.plan_window is not None
        store.ensure_capacity(store.capacity + 1)
        assert store.plan_window is None
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None  # the fsyncs owed


def test_a_window_is_not_published_across_a_change_it_did_not_see(tmp_path: Path) -> None:
    # Catches: a flush_plan that read the store before a change and published
    # after it (the window would answer for the state before the change).
    with _committed(tmp_path) as (store, wal):
        start, end = wal.durable_lsn - 1, wal.durable_lsn
        store._forget_plan()
        release_idle = store._release_idle

        def idle_then_change(end: int) -> bool:
            # Runs in flush_plan after its reads: a growth lands in between.
            store._forget_plan()
            return release_idle(end)

        store._release_idle = idle_then_change  # type: ignore[method-assign]
        assert store.flush_plan(start, end) is not None
        assert store.plan_window is None
        del store._release_idle
        assert store.flush_plan(start, end) is not None
        assert store.plan_window is not None


@pytest.mark.skipif(not SPEEDUPS, reason="the window is read by the C commit path")
def test_the_commit_reads_the_window_and_asks_only_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: the C path ignoring the window (every commit calling flush_plan,
    # the cost the window removes), or using it for a range outside it (past
    # its high end: a range release has work for; before its low end: a range
    # that begins in an earlier chunk than the one whose file the plan syncs).
    asked: list[tuple[int, int]] = []
    reference = SegmentStore.flush_plan

    def recorded(self: SegmentStore, start: int, end: int) -> object:
        asked.append((start, end))
        return reference(self, start, end)

    monkeypatch.setattr(SegmentStore, "flush_plan", recorded)
    store = SegmentStore(tmp_path / "log", 1 << 20, precreate=False)
    with Wal.with_store(store) as wal:
        for _ in range(5):
            wal.append_and_sync(b"x" * 100)
        window = store.plan_window
        assert window is not None
        asked.clear()
        for _ in range(20):
            wal.append_and_sync(b"x" * 100)
        assert asked == []
        # A window ending just past the durable end: the next commit is outside it.
        low, high, plan = window
        store.plan_window = (low, wal.durable_lsn + 1, plan)
        wal.append_and_sync(b"x" * 100)
        assert asked == [(wal.durable_lsn - 108, wal.durable_lsn)]
        # One starting just past it (a flush from an earlier chunk): outside too.
        store.plan_window = (wal.durable_lsn + 1, high, plan)
        wal.append_and_sync(b"x" * 100)
        assert asked[1:] == [(wal.durable_lsn - 108, wal.durable_lsn)]


@pytest.mark.skipif(not SPEEDUPS, reason="the window is read by the C commit path")
def test_a_malformed_window_fails_the_commit_and_gives_the_token_back(tmp_path: Path) -> None:
    # Catches: a window of the wrong shape read as a plan (a crash in C, or a
    # flush of a descriptor the store never named).
    store = SegmentStore(tmp_path / "log", 1 << 20, precreate=False)
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"a")
        store.plan_window = ("low", "high", None)  # type: ignore[assignment]
        with pytest.raises(TypeError):
            wal.append_and_sync(b"b")
        store.plan_window = [0, 1 << 30, None]  # type: ignore[assignment]
        with pytest.raises(TypeError, match="plan_window"):
            wal.append_and_sync(b"c")
        store.plan_window = None
        wal.sync()
        assert wal.durable_lsn == wal.next_lsn


def _published(store: ChunkedStore, start: int, end: int) -> None:
    """Make ``store`` publish a window covering ``[start, end)``, straight through the store."""
    store.release(end)
    store.flush(start, end)
    store.release(end)
    assert store.flush_plan(start, end) is not None
    assert store.plan_window is not None


class _FailingSync(Syscalls):
    """Fail every data sync once armed (an EIO from the disk)."""

    armed = False

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)


def test_each_change_a_flush_does_not_run_alongside_clears_the_window(tmp_path: Path) -> None:
    # Catches, one by one: a window left standing by close (a descriptor it
    # names is closed), by prepare_end (release is no longer idle: the next
    # commit must seal and warm), by truncate_before (the kept segment removed),
    # and by a truncate_after that failed half done (its zeroing's flush may
    # have replaced the kept descriptor; a commit must not use the old one).
    size = 4096
    calls = _FailingSync()
    store = SegmentStore(tmp_path / "log", size, syscalls=calls, precreate=False)
    store.ensure_capacity(3 * size)
    store.write(0, b"\1" * (2 * size + 100))
    _published(store, 2 * size + 5, 2 * size + 10)
    store.prepare_end(2 * size + 100)
    assert store.plan_window is None
    _published(store, 2 * size + 5, 2 * size + 10)
    assert store.drop_before(size) == size
    assert store.plan_window is None
    _published(store, 2 * size + 5, 2 * size + 10)
    calls.armed = True
    with pytest.raises(OSError, match="Input/output"):
        store.discard_after(2 * size + 50)
    assert store.plan_window is None
    calls.armed = False
    _published(store, 2 * size + 5, 2 * size + 10)
    store.close()
    assert store.plan_window is None


def test_a_failed_growth_clears_the_window(tmp_path: Path) -> None:
    # Catches: a growth that failed and rolled back (a segment made, then
    # removed again: the directory's fsync owed) leaving the window standing.
    size = 4096

    class FullAfter(Syscalls):
        allocations: int | None = None  # how many more succeed; None: all

        def allocate(self, fd: int, offset: int, length: int) -> None:
            if self.allocations is not None:
                if self.allocations <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.allocations -= 1
            super().allocate(fd, offset, length)

    calls = FullAfter()
    store = SegmentStore(tmp_path / "log", size, syscalls=calls, precreate=False)
    try:
        store.ensure_capacity(size)
        _published(store, 5, 10)
        calls.allocations = 1  # segment 1 is made, segment 2 fails: 1 is removed again
        with pytest.raises(OSError, match="No space"):
            store.ensure_capacity(3 * size)
        assert store.plan_window is None
        assert store.flush_plan(5, 10) is None  # the directory's fsync is owed
    finally:
        store.close()


def test_the_opens_deferred_extension_clears_the_window(tmp_path: Path) -> None:
    # Catches: a window left standing when the first write extends a short
    # file (as wal-db leaves it): the file's new size is owed an fsync.
    path = tmp_path / "short.wal"
    path.write_bytes(b"\0" * 100)
    store = FileStore(path, window_size=1 << 16, precreate=False)
    try:
        _published(store, 5, 10)
        store.ensure_capacity(50)  # no growth: only the deferred extension
        assert store.plan_window is None
        assert store.flush_plan(5, 10) is None  # the size is owed
    finally:
        store.close()


def test_a_chunk_let_go_clears_the_window(tmp_path: Path) -> None:
    # Catches: a window naming a chunk the store let go (to bound its
    # mappings): flush_plan no longer answers for it.
    size = 4096
    store = SegmentStore(tmp_path / "log", size, precreate=False, mapped_chunks=1)
    try:
        store.ensure_capacity(3 * size)
        _published(store, 5, 10)
        store._let_go_beyond_limit(2)
        assert 0 not in store._chunks
        assert store.plan_window is None
        assert store.flush_plan(5, 10) is None
    finally:
        store.close()
