"""Fail-stop: a failed flush breaks the log for good; a failed growth changes nothing.

Faults come through the ``Syscalls`` seam: a subclass that raises ``OSError`` on
demand from the data flush (``msync`` or ``fdatasync``, armed as ``"msync"``),
``fsync``, ``fsync_directory`` or ``allocate``, passed to
``FileStore``/``SegmentStore`` and wrapped with ``Wal.with_store``. Each layout
runs with the default ``sync_method`` (``fdatasync``) and, marked ``+msync``,
with ``msync``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from mmwal import (
    FileStore,
    MemStore,
    SegmentStore,
    Syscalls,
    Wal,
    WalBrokenError,
    WalClosedError,
    WalReadOnlyError,
)
from mmwal._store import Buffer
from mmwal._syscalls import DEFAULT_SYNC_METHOD

GRANULE = 4096
KINDS = ["file", "seg32", "seg64", "file+msync", "seg32+msync"]
SEGMENT_SIZES = {"seg32": 32, "seg64": 64}
ERRNOS = {"allocate": errno.ENOSPC}


class FaultySyscalls(Syscalls):
    """Real syscalls, except those armed to fail; every call is counted."""

    def __init__(self) -> None:
        self.armed: dict[str, int] = {}  # name -> successful calls still to let through
        self.calls: dict[str, int] = {}
        self.raised: list[OSError] = []

    def arm(self, name: str, *, after: int = 0) -> None:
        self.armed[name] = after

    def disarm(self, name: str) -> None:
        self.armed.pop(name, None)

    def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        remaining = self.armed.get(name)
        if remaining is None:
            return
        if remaining > 0:
            self.armed[name] = remaining - 1
            return
        code = ERRNOS.get(name, errno.EIO)
        error = OSError(code, f"injected {name} failure: {os.strerror(code)}")
        self.raised.append(error)
        raise error

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self._enter("allocate")
        super().allocate(fd, offset, length)

    def msync(self, address: int, length: int) -> None:
        self._enter("msync")
        super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        self._enter("msync")  # the data flush, whichever the sync method
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._enter("fsync")
        super().fsync(fd)

    def fsync_directory(self, path: str) -> None:
        self._enter("fsync_directory")
        super().fsync_directory(path)


def log_path(tmp_path: Path, kind: str) -> Path:
    return tmp_path / ("log.wal" if kind.startswith("file") else "log")


def open_log(tmp_path: Path, kind: str, syscalls: Syscalls | None = None) -> Wal:
    path = log_path(tmp_path, kind)
    layout, _, method = kind.partition("+")
    sync_method = method or DEFAULT_SYNC_METHOD
    if layout == "file":
        return Wal.with_store(
            FileStore(path, window_size=GRANULE, syscalls=syscalls, sync_method=sync_method)
        )
    return Wal.with_store(
        SegmentStore(path, SEGMENT_SIZES[layout], syscalls=syscalls, sync_method=sync_method)
    )


def records_of(wal: Wal) -> list[tuple[int, bytes]]:
    return [(record.lsn, record.data) for record in wal.iter()]


def payload(i: int) -> bytes:
    return f"record-{i:04d}".encode()


def assert_prefix(recovered: list[tuple[int, bytes]], appended: list[tuple[int, bytes]]) -> None:
    assert recovered == appended[: len(recovered)], "not a prefix of the appended sequence"


def assert_broken(wal: Wal, cause: OSError) -> None:
    """Every write path raises WalBrokenError caused by ``cause``."""
    attempts = [
        lambda: wal.append(b"x"),
        lambda: wal.append(b"y" * 3000),
        lambda: wal.append(b"L" * 70_000),  # large frames are copied outside the lock
        lambda: wal.append_many([b"a", b"b"]),
        lambda: wal.append_many([]),
        lambda: wal.append_and_sync(b"z"),
        wal.sync,
    ]
    for attempt in attempts:
        with pytest.raises(WalBrokenError) as caught:
            attempt()
        assert caught.value.__cause__ is cause


def assert_lock_free(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# -- a failed msync -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_msync_breaks_the_log_for_good(tmp_path: Path, kind: str) -> None:
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    appended = [(wal.append(payload(i)), payload(i)) for i in range(10)]
    wal.sync()
    synced = len(appended)
    durable = wal.durable_lsn
    assert durable == wal.next_lsn
    appended.extend((wal.append(payload(i)), payload(i)) for i in range(10, 15))

    syscalls.arm("msync")
    with pytest.raises(WalBrokenError) as caught:
        wal.sync()
    assert len(syscalls.raised) == 1
    cause = syscalls.raised[0]
    assert caught.value.__cause__ is cause
    assert isinstance(cause, OSError)
    assert cause.errno == errno.EIO
    assert wal.durable_lsn == durable, "a failed flush moved the durable watermark"

    # The fault clears; a flush would now succeed, but it must never be used to
    # report success: the kernel may have dropped the dirty pages already.
    syscalls.disarm("msync")
    msyncs = syscalls.calls.get("msync", 0)
    assert_broken(wal, cause)
    assert wal.durable_lsn == durable
    assert "broken" in repr(wal)

    # Closing a broken log skips the final sync (documented), does not raise, and
    # releases the lock.
    assert Wal.close.__doc__ is not None
    assert "unless the log is broken" in Wal.close.__doc__
    wal.close()
    assert wal.closed
    assert syscalls.calls.get("msync", 0) == msyncs, "a broken log was flushed again"
    assert_lock_free(log_path(tmp_path, kind))
    with pytest.raises((WalClosedError, WalBrokenError)):
        wal.append(b"after close")

    with open_log(tmp_path, kind) as again:
        recovered = records_of(again)
    assert len(recovered) >= synced, "a record whose sync returned was lost"
    assert_prefix(recovered, appended)


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_of_the_final_sync_in_close_raises_and_releases(
    tmp_path: Path, kind: str
) -> None:
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    first = wal.append(b"synced")
    wal.sync()
    wal.append(b"pending")
    syscalls.arm("msync")
    with pytest.raises(WalBrokenError) as caught:
        wal.close()
    assert caught.value.__cause__ is syscalls.raised[0]
    assert wal.closed
    assert_lock_free(log_path(tmp_path, kind))
    with open_log(tmp_path, kind) as again:
        recovered = records_of(again)
    assert recovered[:1] == [(first, b"synced")]
    assert_prefix(recovered, [(first, b"synced"), (first + 14, b"pending")])


@pytest.mark.parametrize("kind", KINDS)
def test_close_after_a_failed_close_is_a_no_op(tmp_path: Path, kind: str) -> None:
    """close is idempotent; the failure was reported by the close that met it.

    Wal.close documents: "idempotent" and "On a log that was already broken, close
    releases everything without a flush and does not raise: the call that met the
    failure reported it". A ``with`` block whose body called close (and handled
    its error) calls close again on exit.
    """
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    wal.append(b"pending")
    syscalls.arm("msync")
    with pytest.raises(WalBrokenError):
        wal.close()
    syscalls.disarm("msync")
    wal.close()
    wal.close()


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_syncs_all_fail_when_the_flush_fails(tmp_path: Path, kind: str) -> None:
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    wal.append_and_sync(b"base")
    syscalls.arm("msync")
    start = threading.Barrier(6)
    outcomes: list[BaseException | None] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        start.wait()
        outcome: BaseException | None = None
        try:
            wal.append_and_sync(payload(n))
        except BaseException as error:
            outcome = error
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert isinstance(outcome, WalBrokenError), f"a sync reported {outcome!r}"
        assert outcome.__cause__ is syscalls.raised[0]
    wal.close()


# -- metadata flushes at segment creation / growth -----------------------------------

CREATION_FAULTS = [
    ("file", "fsync"),
    ("seg32", "fsync"),
    ("seg64", "fsync"),
    ("seg32", "fsync_directory"),
    ("seg64", "fsync_directory"),
]


@pytest.mark.parametrize(("kind", "fault"), CREATION_FAULTS)
def test_a_failed_metadata_flush_after_growth_breaks_the_log(
    tmp_path: Path, kind: str, fault: str
) -> None:
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    appended: list[tuple[int, bytes]] = [(wal.append(b"first"), b"first")]
    wal.sync()
    synced = len(appended)
    units = wal.stats().segments_created
    # Grow: a new segment, or a new window of the single file.
    big = b"g" * (GRANULE if kind.startswith("file") else 100)
    appended.append((wal.append(big), big))
    assert wal.stats().segments_created > units
    syscalls.arm(fault)
    with pytest.raises(WalBrokenError) as caught:
        wal.sync()
    assert syscalls.raised, f"growth was made durable without calling {fault}"
    assert caught.value.__cause__ is syscalls.raised[0]
    syscalls.disarm(fault)
    assert_broken(wal, syscalls.raised[0])
    wal.close()
    assert_lock_free(log_path(tmp_path, kind))
    with open_log(tmp_path, kind) as again:
        recovered = records_of(again)
    assert len(recovered) >= synced
    assert_prefix(recovered, appended)


# -- a full disk on growth -----------------------------------------------------------


def listing(tmp_path: Path, kind: str) -> dict[str, int]:
    """Every file's name and size (for a single file only its name: its zero tail past
    the log's end is not log data, and a window's blocks may stay allocated)."""
    files: dict[str, int] = {}
    for directory, _, names in os.walk(tmp_path):
        for name in names:
            path = Path(directory) / name
            size = -1 if kind.startswith("file") else path.stat().st_size
            files[str(path.relative_to(tmp_path))] = size
    return files


def fill_to_edge(wal: Wal, appended: list[tuple[int, bytes]]) -> None:
    """Append until a record of 16 bytes no longer fits in the units already there."""
    first = b"first record"
    appended.append((wal.append(first), first))
    while (room := wal.store.capacity - wal.next_lsn) >= 8 + 16:
        data = bytes([len(appended) % 251 + 1]) * min(room - 8, 200)
        appended.append((wal.append(data), data))


@pytest.mark.parametrize("kind", KINDS)
def test_enospc_on_growth_raises_and_changes_nothing(tmp_path: Path, kind: str) -> None:
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    appended: list[tuple[int, bytes]] = []
    fill_to_edge(wal, appended)
    wal.sync()
    next_lsn = wal.next_lsn
    before = listing(tmp_path, kind)
    stats = wal.stats()

    syscalls.arm("allocate")
    with pytest.raises(OSError) as caught:
        wal.append(b"needs a new unit")
    assert not isinstance(caught.value, WalBrokenError)
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as caught_many:
        wal.append_many([b"one", b"two", b"three needs room"])
    assert caught_many.value.errno == errno.ENOSPC
    assert wal.next_lsn == next_lsn
    assert listing(tmp_path, kind) == before, "a failed growth left files behind"
    assert wal.stats().appends == stats.appends
    assert records_of(wal) == appended
    wal.sync()  # not broken: nothing failed to flush

    syscalls.disarm("allocate")
    lsn = wal.append(b"needs a new unit")
    assert lsn == next_lsn, "a failed append left a gap in the LSNs"
    appended.append((lsn, b"needs a new unit"))
    lsns = wal.append_many([b"one", b"two"])
    appended.extend(zip(lsns, [b"one", b"two"], strict=True))
    assert records_of(wal) == appended
    wal.close()
    with open_log(tmp_path, kind) as again:
        assert records_of(again) == appended


@pytest.mark.parametrize("kind", ["file", "seg32", "seg64"])
@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_enospc_midway_through_a_multi_unit_growth_is_all_or_nothing(
    tmp_path: Path, kind: str, fail_at: int
) -> None:
    """A record spanning several new units: the failing allocation undoes the others."""
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    unit = GRANULE if kind.startswith("file") else SEGMENT_SIZES[kind.partition("+")[0]]
    appended = [(wal.append(b"before"), b"before")]
    wal.sync()
    before = listing(tmp_path, kind)
    next_lsn = wal.next_lsn
    big = b"B" * (3 * unit + 10)  # needs at least 3 new units
    syscalls.arm("allocate", after=fail_at)
    with pytest.raises(OSError) as caught:
        wal.append(big)
    assert caught.value.errno == errno.ENOSPC
    assert listing(tmp_path, kind) == before
    assert wal.next_lsn == next_lsn
    syscalls.disarm("allocate")
    appended.append((wal.append(big), big))
    assert appended[-1][0] == next_lsn
    wal.sync()
    wal.close()
    with open_log(tmp_path, kind) as again:
        assert records_of(again) == appended


# -- a failed flush inside truncate_after ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_flush_in_truncate_after_breaks_the_log(tmp_path: Path, kind: str) -> None:
    """The zeroing of the dropped suffix could not be made durable: fail-stop."""
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    lsns = wal.append_many([b"A" * 10, b"B" * 10, b"C" * 10])
    wal.sync()
    syscalls.arm("msync")
    with pytest.raises((OSError, WalBrokenError)):
        wal.truncate_after(lsns[0])
    assert syscalls.raised, "truncate_after did not flush its zeroing"
    syscalls.disarm("msync")
    assert_broken(wal, syscalls.raised[0])
    wal.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_truncate_after_never_costs_a_synced_record(tmp_path: Path, kind: str) -> None:
    """A truncate_after whose flush failed: fail-stop, then the old or the new log.

    The log refuses every later write (what reached the disk is unknown); a reopen
    finds the records before the cut intact and either the dropped ones or none of
    them, never a gap; and a record appended and synced after that reopen holds.
    """
    syscalls = FaultySyscalls()
    wal = open_log(tmp_path, kind, syscalls)
    payloads = [b"A" * 10, b"B" * 10, b"C" * 10]
    old = list(zip(wal.append_many(payloads), payloads, strict=True))
    wal.sync()
    syscalls.arm("msync")
    with pytest.raises((OSError, WalBrokenError)):
        wal.truncate_after(old[0][0])
    syscalls.disarm("msync")
    assert_broken(wal, syscalls.raised[0])
    wal.close()
    with open_log(tmp_path, kind) as again:
        recovered = records_of(again)
        assert recovered in (old[:1], old), "neither the old nor the truncated log"
        lsn = again.append(b"D" * 10)
        again.sync()
        assert lsn == again.next_lsn - 18
    with open_log(tmp_path, kind) as reopened:
        assert records_of(reopened) == [*recovered, (lsn, b"D" * 10)]


# -- every way out of a commit gives the token back, and every refusal names its cause ------


class _RefusingCopies(MemStore):
    """A store that takes frames only through ``write``, and fails them once armed."""

    writes_into_pieces = False

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def write(self, offset: int, data: Buffer) -> None:
        if self.failing:
            raise OSError(errno.EIO, "injected write failure")
        super().write(offset, data)


def test_a_failed_copy_breaks_the_log_and_every_refusal_names_it() -> None:
    # Catches a break that loses what broke the log (the operation or the cause).
    store = _RefusingCopies()
    wal = Wal.with_store(store)
    wal.append_and_sync(b"kept")
    store.failing = True
    with pytest.raises(OSError, match="injected write failure") as failed:
        wal.append(b"lost")
    store.failing = False
    for refused in (lambda: wal.append(b"later"), wal.sync, lambda: wal.append_many([b"x"])):
        with pytest.raises(WalBrokenError) as caught:
            refused()
        assert caught.value.operation == "a copy into the log"
        assert "a copy into the log failed" in str(caught.value)
        assert caught.value.__cause__ is failed.value
    wal.close()


def test_a_read_only_handle_refuses_appends_naming_the_log(tmp_path: Path) -> None:
    # Catches a refusal that does not say which log is read-only.
    with Wal.open_segmented(tmp_path / "log", GRANULE * 16) as wal:
        wal.append_and_sync(b"record")
    with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
        for refused in (lambda: reader.append(b"x"), lambda: reader.append_many([b"x"])):
            with pytest.raises(WalReadOnlyError) as caught:
                refused()
            assert caught.value.location == reader.store.location
            assert reader.store.location in str(caught.value)


class _FailingPublisher:
    """Stands in for the ends publisher: the next publication of a flush raises."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.failures = 1

    def flushed(self, end: int, head: int) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("injected publication failure")
        self.real.flushed(end, head)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_leader_whose_finish_step_raises_gives_the_token_back(tmp_path: Path) -> None:
    # Catches a leader that keeps the one-flusher token when a step after its
    # flush raises (the next sync, truncation or close would wait for ever).
    wal = Wal.open_segmented(tmp_path / "log", GRANULE * 16)
    group = wal._group_commit
    assert group.publisher is not None
    real = group.publisher
    group.publisher = _FailingPublisher(real)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="injected publication failure"):
        wal.append_and_sync(b"first")
    outcome: list[object] = []
    later = threading.Thread(
        target=lambda: outcome.append(wal.append_and_sync(b"second")), daemon=True
    )
    later.start()
    later.join(timeout=30)
    # A hung log is left unclosed (close would wait for the token too): the
    # failure is reported instead of hanging the run.
    assert not later.is_alive(), "the next commit waits for a token nobody gives back"
    assert len(outcome) == 1
    group.publisher = real
    assert [record.data for record in wal] == [b"first", b"second"]
    assert wal.durable_lsn == wal.next_lsn
    wal.close()
