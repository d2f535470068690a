"""Closing: every operation afterwards raises, closing is idempotent, locks are released."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import mmwal
from mmwal import (
    FileStore,
    MemStore,
    Record,
    Syscalls,
    Wal,
    WalClosedError,
    WalConfig,
    WalError,
    WalLockedError,
)

CONFIG = WalConfig(max_record_size=4096)

KINDS = ["file", "segments", "memory"]


def open_kind(kind: str, tmp_path: Path) -> Wal:
    if kind == "file":
        return Wal.open(tmp_path / "log", CONFIG)
    if kind == "segments":
        return Wal.open_segmented(tmp_path / "log", 64, CONFIG)
    return Wal.with_store(MemStore(64), CONFIG)


def filled(kind: str, tmp_path: Path, count: int = 5) -> tuple[Wal, list[Record]]:
    wal = open_kind(kind, tmp_path)
    records = [Record(wal.append(b"rec%d" % i), b"rec%d" % i) for i in range(count)]
    return wal, records


OPERATIONS: dict[str, Callable[[Wal, list[Record]], object]] = {
    "append": lambda wal, _: wal.append(b"x"),
    "append-empty": lambda wal, _: wal.append(b""),
    "append_many": lambda wal, _: wal.append_many([b"x", b"y"]),
    "append_many-empty": lambda wal, _: wal.append_many([]),
    "sync": lambda wal, _: wal.sync(),
    "append_and_sync": lambda wal, _: wal.append_and_sync(b"x"),
    "iter": lambda wal, _: wal.iter(),
    "iter-start": lambda wal, records: wal.iter(records[1].lsn),
    "iter_from": lambda wal, records: wal.iter_from(records[1].lsn),
    "iter_from-end": lambda wal, _: wal.iter_from(wal.next_lsn),
    "dunder-iter": lambda wal, _: iter(wal),
    "list": lambda wal, _: list(wal),
    "truncate_after": lambda wal, records: wal.truncate_after(records[2].lsn),
    "truncate_before": lambda wal, records: wal.truncate_before(records[2].lsn),
    "truncate_before-head": lambda wal, _: wal.truncate_before(wal.head_lsn),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_after_close_raises(tmp_path: Path, kind: str, operation: str) -> None:
    wal, records = filled(kind, tmp_path)
    wal.close()
    with pytest.raises(WalClosedError):
        OPERATIONS[operation](wal, records)
    assert wal.closed
    assert wal.next_lsn == records[-1].lsn + 8 + 4


@pytest.mark.parametrize("kind", KINDS)
def test_operations_after_close_raise_even_with_unsynced_appends_before(
    tmp_path: Path, kind: str
) -> None:
    wal, _ = filled(kind, tmp_path)
    wal.sync()
    wal.append(b"unsynced")
    wal.close()
    with pytest.raises(WalClosedError):
        wal.sync()
    with pytest.raises(WalClosedError):
        wal.append(b"more")


@pytest.mark.parametrize("kind", KINDS)
def test_iterator_made_before_close_raises_on_next(tmp_path: Path, kind: str) -> None:
    wal, records = filled(kind, tmp_path)
    fresh = wal.iter()
    started = wal.iter()
    assert next(started) == records[0]
    seek = wal.iter_from(records[2].lsn)
    wal.close()
    for iterator in (fresh, started, seek):
        with pytest.raises(WalClosedError):
            next(iterator)


@pytest.mark.parametrize("kind", KINDS)
def test_plain_iterator_made_before_close_raises_on_next(tmp_path: Path, kind: str) -> None:
    """``iter(wal)`` and a ``for`` loop over ``wal.iter()`` stop at close too."""
    wal, records = filled(kind, tmp_path)
    fresh = iter(wal)
    started = iter(wal)
    assert next(started) == records[0]
    walker = iter(wal.iter())
    assert next(walker) == records[0]
    wal.close()
    for iterator in (fresh, started, walker):
        with pytest.raises(WalClosedError):
            next(iterator)


@pytest.mark.parametrize("kind", KINDS)
def test_closing_twice_is_harmless(tmp_path: Path, kind: str) -> None:
    wal, _ = filled(kind, tmp_path)
    wal.close()
    wal.close()
    assert wal.closed
    with wal:
        pass
    assert wal.closed


@pytest.mark.parametrize("kind", KINDS)
def test_properties_readable_after_close(tmp_path: Path, kind: str) -> None:
    wal, records = filled(kind, tmp_path)
    end = records[-1].lsn + 12
    assert wal.durable_lsn == 0
    wal.close()
    assert wal.closed
    assert wal.next_lsn == end
    assert wal.head_lsn == 0
    assert wal.durable_lsn == end, "close syncs"
    assert not wal.is_empty
    assert wal.recovery.end == 0
    assert wal.config == CONFIG
    stats = wal.stats()
    assert stats.appends == len(records)
    assert stats.bytes_appended == 4 * len(records)
    assert "closed" in repr(wal)


@pytest.mark.parametrize("kind", KINDS)
def test_with_closes(tmp_path: Path, kind: str) -> None:
    with open_kind(kind, tmp_path) as wal:
        assert not wal.closed
        wal.append(b"in with")
    assert wal.closed
    with pytest.raises(WalClosedError):
        wal.append(b"after with")


def test_with_closes_on_exception(tmp_path: Path) -> None:
    opened: list[Wal] = []

    def body() -> None:
        with Wal.open(tmp_path / "log", CONFIG) as wal:
            opened.append(wal)
            wal.append(b"kept")
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        body()
    assert opened[0].closed
    # Closing made the record durable and released the lock.
    with Wal.open(tmp_path / "log", CONFIG) as again:
        assert [r.data for r in again] == [b"kept"]


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_lock_is_free_after_close(tmp_path: Path, kind: str) -> None:
    for cycle in range(3):
        wal = open_kind(kind, tmp_path)
        assert [r.data for r in wal] == [b"cycle %d" % i for i in range(cycle)]
        wal.append(b"cycle %d" % cycle)
        wal.close()


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_second_open_while_open_is_locked(tmp_path: Path, kind: str) -> None:
    first = open_kind(kind, tmp_path)
    try:
        first.append(b"held")
        openers: list[Callable[[], Wal]] = [
            lambda: open_kind(kind, tmp_path),
            lambda: mmwal.open(tmp_path / "log", config=CONFIG),
        ]
        if kind == "segments":
            openers.append(lambda: Wal.open_segmented(tmp_path / "log", None, CONFIG))
        for opener in openers:
            with pytest.raises(WalLockedError) as info:
                opener()
            assert isinstance(info.value, WalError)
            assert str(tmp_path / "log") in str(info.value)
            assert info.value.path == str(tmp_path / "log")
        # The failed opens took nothing from the holder.
        assert first.append(b"still mine") == 12
        first.sync()
        assert [r.data for r in first] == [b"held", b"still mine"]
    finally:
        first.close()
    with open_kind(kind, tmp_path) as again:
        assert [r.data for r in again] == [b"held", b"still mine"]


def test_lock_is_per_log(tmp_path: Path) -> None:
    with (
        Wal.open(tmp_path / "a", CONFIG) as first,
        Wal.open(tmp_path / "b", CONFIG) as second,
        Wal.open_segmented(tmp_path / "c", 64, CONFIG) as third,
    ):
        first.append(b"a")
        second.append(b"b")
        third.append(b"c")


@pytest.mark.parametrize("closed", [True, False])
def test_a_mapping_left_alive_does_not_keep_the_writer_lock(tmp_path: Path, closed: bool) -> None:
    # Catches: a single file's writer lock taken on the descriptor the file is
    # mapped from. Every mapping keeps a duplicate of that descriptor, so a
    # mapping left alive (a view of a piece, or the tail's warming job for a few
    # milliseconds after a commit) kept the log locked after close or a drop:
    # the next open raised WalLockedError (36 of 40 opens right after dropping a
    # log that had just committed, on an idle machine). A view holds the mapping
    # here, so the order is forced, not hoped for.
    import gc

    path = tmp_path / "a.wal"
    wal = Wal.open(path, CONFIG)
    wal.append_and_sync(b"x" * 100)
    view = memoryview(wal.store.piece(0)[0])
    if closed:
        wal.close()
    del wal
    gc.collect()
    try:
        with Wal.open(path, CONFIG) as again:
            assert [r.data for r in again] == [b"x" * 100]
    finally:
        view.release()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_file_replaced_between_its_two_opens_is_refused(tmp_path: Path) -> None:
    # Catches: the lock taken on whatever file the path names when the lock's
    # own descriptor is opened (a log renamed over in between would be locked in
    # place of the one mapped, and two writers could hold the mapped file), and
    # descriptors left open by the refusal.
    import errno
    import os

    path, other = tmp_path / "a.wal", tmp_path / "other.wal"
    Wal.open(path, CONFIG).close()
    Wal.open(other, CONFIG).close()

    class Swapping(Syscalls):
        opens = 0

        def open(self, name: str, flags: int, mode: int = 0o600) -> int:
            self.opens += 1
            return super().open(str(other) if self.opens == 2 else name, flags, mode)

    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="replaced") as info:
        FileStore(path, syscalls=Swapping())
    assert info.value.errno == errno.ESTALE
    assert len(os.listdir("/proc/self/fd")) == before
    with Wal.open(path, CONFIG) as again:  # nothing left locked
        assert list(again) == []


@pytest.mark.parametrize("segmented", [False, True])
def test_a_log_dropped_without_close_can_be_opened_again(tmp_path: Path, segmented: bool) -> None:
    # Catches: a writer dropped without close (an exception before close, a
    # forgotten ``with``) keeping its directory or file descriptor, and with it the
    # writer lock, for the life of the process: every later open of the log in
    # this process raised WalLockedError with no Wal left to close.
    import gc

    path = tmp_path / ("log" if segmented else "a.wal")
    size = 4096 if segmented else None
    wal = mmwal.open(path, segment_size=size)
    lsns = wal.append_many([b"kept"] * 50)  # not synced: still in the page cache
    del wal
    gc.collect()
    with mmwal.open(path, segment_size=size) as again:
        assert [record.lsn for record in again] == lsns


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
@pytest.mark.parametrize("method", ["msync", "fdatasync"])
@pytest.mark.parametrize("segmented", [False, True])
def test_a_log_dropped_without_close_keeps_no_descriptor(
    tmp_path: Path, segmented: bool, method: str
) -> None:
    # Catches: a descriptor the store keeps beside its files and directory (with
    # fdatasync, the segment flushed last) that only ``close`` closed, so each
    # writer dropped without close leaked one for the life of the process. A
    # background job the last flush started (the tail's warming, the next
    # segment made ahead) holds its mapping, and with it the mapping's own
    # descriptor, until it ends: a few milliseconds on a loaded machine, so the
    # count is awaited (up to 10 s), never taken at once.
    import gc
    import os
    import time

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    config = WalConfig(sync_method=method)
    path = tmp_path / ("log" if segmented else "a.wal")
    gc.collect()
    before = open_descriptors()
    wal = Wal.open_segmented(path, 4096, config) if segmented else Wal.open(path, config)
    wal.append_and_sync(b"x" * 5000)  # into a second segment
    assert open_descriptors() > before
    del wal
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        if open_descriptors() == before or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert open_descriptors() == before
