"""The leader's commit in C (``_commitpath.c``, ``_afterflush.c``) against the Python reference.

With the extension, ``GroupCommit.sync_to`` is the C ``GroupCommitBase``'s: a
sync that finds the token free (alone, or with others inside a sync or
waiting) runs there from the request to the flush's return, and the steps
after the flush (the ends published, the recovery point's question, the
durable end moved) are the C bases'.
``GroupCommit._sync_to`` is always the whole protocol in Python, and the
``Python*Base`` classes are the twins a pure-Python run uses. Tests that compare
the two skip on a pure-Python run; the rest run on whichever path is active.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
from recorders import fd_path

from mmwal import (
    FileStore,
    SegmentStore,
    Syscalls,
    Wal,
    WalBrokenError,
    WalClosedError,
    WalConfig,
    _commit,
)
from mmwal._commit import GroupCommit
from mmwal._commit_machine import Action, CommitMachine, Holder, Ticket
from mmwal._format import SPEEDUPS
from mmwal._published import (
    ENDS_FILE_NAME,
    EndsPublisher,
    PythonEndsPublisherBase,
    _latest,
    python_put_ends_slot,
)
from mmwal._recovery_point import PointKeeper, PythonPointKeeperBase
from mmwal._store import Store

needs_c = pytest.mark.skipif(not SPEEDUPS, reason="compares the C commit path with Python's")

SEGMENT = 64 * 1024


def _state(wal: Wal) -> dict[str, object]:
    """What a commit leaves behind, everywhere the protocol writes it."""
    group = wal._group_commit
    machine = group._machine
    publisher = group.publisher
    assert publisher is not None
    ends = _latest(publisher._mapping)
    assert ends is not None
    points = wal._points
    return {
        "durable": machine.durable_lsn,
        "holder": machine.holder,
        "callers": machine.callers,
        "waiting": machine.waiting,
        "syncs_requested": machine.syncs_requested,
        "flushes": machine.flushes,
        "parked": list(machine.parked),
        "wakeups_issued": machine.wakeups_issued,
        "broken": machine.broken,
        "ends": ends._replace(sequence=0),
        "ends_sequence_moved": ends.sequence,
        "flushed_range": points._flushed,
        "saved_end": points.saved_end,
    }


@contextmanager
def _python_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make ``sync_to`` the Python protocol and record which path each sync took."""
    taken: list[str] = []
    reference = GroupCommit._sync_to

    def python_sync_to(self: GroupCommit, target: int) -> None:
        taken.append("python")
        reference(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(GroupCommit, "_sync_to", python_sync_to)
        yield taken


def _recording_python_fallback(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    reference = GroupCommit._sync_to

    def recorded(self: GroupCommit, target: int) -> None:
        calls.append(target)
        reference(self, target)

    monkeypatch.setattr(GroupCommit, "_sync_to", recorded)
    return calls


# -- the C path leaves what the Python path leaves ----------------------------------------


@needs_c
def test_a_lone_commit_in_c_leaves_the_state_the_python_protocol_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a C transition that differs from CommitMachine's (a request not
    # counted, the caller or the token not given back, the durable end or the
    # published ends or the recovery point's range not moved as in Python).
    records = [os.urandom(size) for size in (1, 300, 5000, 17, 40_000, 9, 64)]
    fallbacks = _recording_python_fallback(monkeypatch)
    with Wal.open_segmented(tmp_path / "c", SEGMENT) as fast:
        c_states = []
        for record in records:
            fast.append_and_sync(record)
            c_states.append(_state(fast))
        fast.append(b"more")
        fast.sync()
        c_states.append(_state(fast))
        # Every sync began in C (the first of a segment, with nothing kept for
        # it yet, hands its flush to _lead_flush, never the protocol to _sync_to).
        assert fallbacks == []
    with Wal.open_segmented(tmp_path / "python", SEGMENT) as slow:
        python_states = []
        with _python_path(monkeypatch) as taken:
            for record in records:
                lsn = slow.append(record)
                slow._group_commit._sync_to(lsn + 8 + len(record))
                python_states.append(_state(slow))
            slow.append(b"more")
            slow._group_commit._sync_to(slow.next_lsn)
            python_states.append(_state(slow))
        assert taken == ["python"] * (len(records) + 1)
    assert c_states == python_states
    assert all(state["holder"] is Holder.NONE and state["callers"] == 0 for state in c_states)


@needs_c
def test_the_c_path_leads_only_where_request_answers_lead_and_leaves_the_rest_to_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: the C path leading a flush while the token is held (two
    # flushers) or an exclusive section waits for it (a starved truncation or
    # close), on a broken or closed log, or flushing for a target already
    # durable. (Where request answers WAIT the C path waits itself:
    # tests/test_commit_wait.py.)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"first")
        group = wal._group_commit
        machine = group._machine
        lead_flushes: list[int] = []
        with _python_path(monkeypatch) as taken:
            reference_lead = GroupCommit._flush_as_leader

            def recorded_lead(self: GroupCommit, target: int) -> None:
                lead_flushes.append(target)
                reference_lead(self, target)

            monkeypatch.setattr(GroupCommit, "_flush_as_leader", recorded_lead)
            wal.append_and_sync(b"lone")  # the segment's target is kept: all C
            assert (taken, lead_flushes) == ([], [])
            requested = machine.syncs_requested
            group.sync_to(machine.durable_lsn)  # already durable: C answers
            assert (taken, lead_flushes) == ([], [])
            assert machine.syncs_requested == requested + 1  # counted once
            assert (machine.callers, machine.holder) == (0, Holder.NONE)
        states: list[tuple[str, object]] = [
            ("broken", OSError("broken")),
            ("closed", True),
        ]
        for field, value in states:
            target = wal.append(b"x") + 9
            handed: list[int] = []
            saved = getattr(machine, field)
            with monkeypatch.context() as patch:
                # The Python protocol would wait or raise here: record instead.
                patch.setattr(GroupCommit, "_sync_to", lambda _, at, seen=handed: seen.append(at))
                setattr(machine, field, value)
                try:
                    group.sync_to(target)
                finally:
                    setattr(machine, field, saved)
            assert handed == [target], field
            assert machine.durable_lsn < target, field  # nothing was flushed
        wal.sync()
        assert wal.durable_lsn == wal.next_lsn


@needs_c
def test_a_commit_whose_copy_is_in_flight_goes_to_the_python_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: the C leader reading next_lsn as the watermark while a copy below
    # it is still in flight (claiming bytes not copied yet as durable).
    lead_flushes: list[int] = []
    reference_lead = GroupCommit._flush_as_leader

    def recorded_lead(self: GroupCommit, target: int) -> None:
        lead_flushes.append(target)
        reference_lead(self, target)
        lead_flushes.append(len(self._reservations.in_flight))  # the copy ended first

    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"first")
        reservations = wal._reservations
        end = wal.next_lsn
        # A copy in flight below the target: the C path must hand over, and the
        # Python leader waits for it (here it is removed by a timer thread).
        reservations.in_flight[end - 1] = end

        def copy_ends() -> None:
            with reservations.lock:
                del reservations.in_flight[end - 1]
                reservations.copies_done.notify_all()

        monkeypatch.setattr(GroupCommit, "_flush_as_leader", recorded_lead)
        timer = threading.Timer(0.05, copy_ends)
        timer.start()
        wal.append_and_sync(b"second")
        timer.join()
        assert lead_flushes == [wal.next_lsn, 0]
        assert wal.durable_lsn == wal.next_lsn


class ReleaseRecorder:
    """A parked ticket that records, when released, whether the commit lock was held."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.released: list[bool] = []

    def release(self) -> None:
        self.released.append(self._lock.locked())


def _lead_with_others_waiting(wal: Wal, lead: Callable[[int], None]) -> list[object]:
    """Lead a flush, by ``lead(target)``, while two callers are in the machine.

    One was woken (a link of a chain, not yet asked again); the other is parked
    with a target the earlier flush did not cover and this one does. Return
    what the commit left: the state (tickets by target), then how the parked
    ticket was released.
    """
    wal.append_and_sync(b"first")
    group = wal._group_commit
    machine = group._machine
    covered = wal.append(b"covered") + 8 + 7
    beyond = wal.append(b"beyond") + 8 + 6
    woken = ReleaseRecorder(group.lock)
    parked = ReleaseRecorder(group.lock)
    with group.lock:
        # An earlier leader, one waiter its flush covers, one it does not; the
        # flush done, the covered waiter woken.
        assert machine.request(covered) is Action.LEAD
        assert machine.request(covered) is Action.WAIT
        machine.park(woken, covered)
        assert machine.request(beyond) is Action.WAIT
        machine.park(parked, beyond)
        assert machine.flush_done(covered, 0.0, writing_point=False) is True
        assert machine.wakeups() == [woken]
    target = wal.append(b"leader") + 8 + 6
    lead(target)
    state = _state(wal)
    state["parked"] = [at for at, _ in machine.parked]
    # The two waiters ask again and return: the log closes cleanly.
    with group.lock:
        assert machine.recheck(covered) is Action.RETURN
        assert machine.recheck(beyond) is Action.RETURN
    return [state, woken.released, parked.released]


@needs_c
def test_a_commit_that_leads_while_others_wait_runs_in_c_and_leaves_the_python_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: the C path handing a leader with others in the machine to Python
    # (every commit of a busy log then ran the slow path), leading with a
    # transition that differs from request's there (a caller miscounted, the
    # token kept), not waking the waiter its flush covered (a lost wake-up), or
    # releasing that waiter's ticket while it holds the commit lock (the woken
    # thread then wakes only to wait for the lock and the GIL).
    fallbacks = _recording_python_fallback(monkeypatch)
    handed: list[int] = []
    reference_lead = GroupCommit._flush_as_leader

    def recorded_lead(self: GroupCommit, target: int) -> None:
        handed.append(target)
        reference_lead(self, target)

    monkeypatch.setattr(GroupCommit, "_flush_as_leader", recorded_lead)
    with Wal.open_segmented(tmp_path / "c", SEGMENT) as fast:
        in_c = _lead_with_others_waiting(fast, fast._group_commit.sync_to)
        # Only the segment's first commit, before the others came, was handed on.
        assert (fallbacks, handed) == ([], [8 + len(b"first")])
    with Wal.open_segmented(tmp_path / "python", SEGMENT) as slow:
        in_python = _lead_with_others_waiting(slow, slow._group_commit._sync_to)
    assert in_c == in_python
    state, woken_released, parked_released = in_c
    assert isinstance(state, dict)
    assert (state["callers"], state["waiting"], state["parked"]) == (2, 2, [])
    assert state["holder"] is Holder.NONE
    assert woken_released == []  # woken before this commit, by the earlier leader
    assert parked_released == [False]  # woken once, the commit lock let go


def test_release_tickets_wakes_the_thread_waiting_on_each_ticket() -> None:
    # Catches: a ticket left held (a parked thread never woken), or one released
    # without its release's checks (an unheld ticket must raise, as
    # threading.Lock's release does, on both paths).
    release_tickets = _commit.release_tickets
    tickets: list[Ticket] = []
    woken: list[int] = []
    waiters = []

    def wait(ticket: threading.Lock, index: int) -> None:
        ticket.acquire()
        woken.append(index)

    for index in range(4):
        # The tickets _park makes, and a plain lock (a ticket of another kind).
        ticket = _commit.ReservationLock() if index < 3 else threading.Lock()
        ticket.acquire()
        tickets.append(ticket)
        waiter = threading.Thread(target=wait, args=(ticket, index))
        waiter.start()
        waiters.append(waiter)
    release_tickets(tickets)
    for waiter in waiters:
        waiter.join(10)
    assert sorted(woken) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError):
        release_tickets([_commit.ReservationLock()])


# -- what a flush owes before it, and the plan ------------------------------------------


class OwnChoice(Syscalls):
    """Real syscalls that choose the data flush themselves: no store may plan it."""

    def sync_file_data(self, fd: int, address: int, length: int, path: str) -> None:
        super().sync_file_data(fd, address, length, path)


class CountingSyscalls(Syscalls):
    """Real syscalls that count fsyncs and fdatasyncs, and fail the data flush on demand."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.fdatasyncs = 0
        self.fail = False

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1
        if self.fail:
            raise OSError(errno.EIO, "injected fdatasync failure")
        super().fdatasync(fd)


def test_the_commit_that_rolls_into_a_new_segment_still_fsyncs_it(tmp_path: Path) -> None:
    # Catches: a plan answered while a new segment's fsync is owed (a roll's
    # commit made durable in a file whose creation a crash can take away).
    calls = CountingSyscalls()
    store = SegmentStore(tmp_path / "log", 4096, syscalls=calls, precreate=False)
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"a" * 100)
        wal.append_and_sync(b"b" * 100)
        before = calls.fsyncs
        wal.append_and_sync(b"c" * 4000)  # the end moves into segment 1: created
        assert calls.fsyncs > before
        wal.append_and_sync(b"d")  # the sealed segment released: quiet again
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is not None
        before = calls.fsyncs
        wal.append_and_sync(b"e")
        assert calls.fsyncs == before  # nothing owed: one fdatasync


def test_the_plan_is_refused_whenever_the_flush_owes_more_than_one_fdatasync(
    tmp_path: Path,
) -> None:
    # Catches: a plan for msync, for another platform's flush, for a Syscalls
    # that overrides the flush's choice, or across two segments.
    with Wal.open_segmented(tmp_path / "msync", 4096, config=WalConfig(sync_method="msync")) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        assert wal.store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None

    class MacLike(Syscalls):
        platform = "darwin"  # msync, then F_FULLFSYNC (not on Linux: left out)

        def full_fsync(self, fd: int) -> None:
            del fd

    for name, syscalls in (("own", OwnChoice()), ("mac", MacLike())):
        store = SegmentStore(tmp_path / name, 4096, syscalls=syscalls)
        with Wal.with_store(store) as wal:
            wal.append_and_sync(b"a")
            wal.append_and_sync(b"b")
            assert wal.store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None, name
    calls = CountingSyscalls()
    with Wal.with_store(SegmentStore(tmp_path / "plain", 4096, syscalls=calls)) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        end = wal.durable_lsn
        plan = wal.store.flush_plan(end - 1, end)
        assert plan is not None
        assert plan[1] == calls.fdatasync  # the injecting Syscalls' own
        assert wal.store.flush_plan(end - 1, 4096 + 10) is None  # two segments
    with Wal.open_segmented(tmp_path / "default", 4096) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        plan = wal.store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn)
        assert plan is not None
        assert plan[1] is None  # plain fdatasync: the log calls it in C


class FillingDisk(CountingSyscalls):
    """Counting syscalls whose allocations fail with ENOSPC once ``allocations`` ran out."""

    allocations: int | None = None

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self.allocations is not None:
            if self.allocations <= 0:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            self.allocations -= 1
        super().allocate(fd, offset, length)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors through /proc")
def test_a_segment_store_plans_one_fdatasync_only_of_the_segment_it_keeps_and_owes_nothing(
    tmp_path: Path,
) -> None:
    # Each condition of ``SegmentStore.flush_plan`` alone, asked of the store with
    # ``release`` made idle first, so no other condition hides it (through the log
    # a growth also gives ``release`` work). Catches a plan: before any flush of a
    # reopened store (no descriptor kept: it raised), for an empty range, while a
    # new segment's fsync or the directory's (a growth rolled back) is owed, while
    # ``release`` would seal a segment, for a range in another segment than the
    # kept descriptor's or reaching past its segment (a fdatasync of the wrong
    # file: the commit not durable).
    size = 4096
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, size) as wal:
        wal.append_and_sync(b"a" * 5000)  # segments 0 and 1
    calls = FillingDisk()
    store = SegmentStore(directory, size, syscalls=calls, precreate=False)
    try:
        assert store.capacity == 2 * size
        store.release(10)
        assert store.flush_plan(5, 10) is None  # no segment's descriptor kept yet
        store.flush(5, 10)
        plan = store.flush_plan(5, 10)
        assert plan is not None
        assert (fd_path(plan[0]), plan[1]) == (store.segment_path(0), calls.fdatasync)
        assert store.flush_plan(10, 10) is None  # nothing to flush
        assert store.flush_plan(5, size) is None  # ``release(size)`` seals segment 0
        store.ensure_capacity(3 * size)  # segment 2 made: its fsync owed
        store.release(10)
        assert store.flush_plan(5, 10) is None
        store.flush(5, 10)
        assert store.flush_plan(5, 10) is not None
        calls.allocations = 1
        with pytest.raises(OSError, match="No space"):
            store.ensure_capacity(5 * size)  # segment 3 made, then removed again
        calls.allocations = None
        assert store.flush_plan(5, 10) is None  # the directory's fsync owed
        store.flush(5, 10)
        assert store.flush_plan(5, 10) is not None
        store.release(size + 10)  # segment 0 sealed ...
        store.release(size + 10)  # ... and release idle below 2 * size
        assert store.flush_plan(size + 5, size + 10) is None  # segment 1's range
        assert store.flush_plan(5, size + 3) is None  # segments 0 and 1
        assert store.flush_plan(5, 10) is not None
    finally:
        store.close()


@needs_c
def test_a_lone_commit_on_a_single_file_runs_in_c_and_leaves_the_python_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: FileStore never answering a plan (``Wal.open`` logs always taking
    # the Python flush), or its plan leaving other ends than the Python flush.
    records = [os.urandom(size) for size in (1, 300, 5000, 17, 9)]
    plans: list[object] = []
    reference_plan = FileStore.flush_plan

    def recorded_plan(self: FileStore, start: int, end: int) -> object:
        plan = reference_plan(self, start, end)
        plans.append(plan)
        return plan

    with monkeypatch.context() as patch:
        patch.setattr(FileStore, "flush_plan", recorded_plan)
        with Wal.open(tmp_path / "c.wal") as fast:
            c_states = []
            for record in records:
                fast.append_and_sync(record)
                c_states.append(_state(fast))
    # The first commit owes the new file's size and directory entry: no plan;
    # the second asks and gets the file's single fdatasync, made in C, and the
    # window that answer was published with covers every later one.
    assert plans[0] is None
    assert plans[1:] == [(plans[1][0], None)]  # type: ignore[index]
    with Wal.open(tmp_path / "python.wal") as slow, _python_path(monkeypatch):
        python_states = []
        for record in records:
            lsn = slow.append(record)
            slow._group_commit._sync_to(lsn + 8 + len(record))
            python_states.append(_state(slow))
    assert c_states == python_states


def test_a_single_file_plan_waits_for_the_size_a_new_window_owes(tmp_path: Path) -> None:
    # Catches: a plan answered while the file's new size (a window created
    # inline) is owed an fsync: the commit would be durable in bytes a crash
    # can cut off the file. And a plan for msync or a Syscalls of its own.
    calls = CountingSyscalls()
    window = mmap.ALLOCATIONGRANULARITY
    store = FileStore(tmp_path / "log", window_size=window, syscalls=calls, precreate=False)
    with Wal.with_store(store) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) == (
            store._fd,
            calls.fdatasync,
        )
        end = wal.append(b"c" * window) + 8 + window  # grows the file by a window
        assert store.flush_plan(wal.durable_lsn, end) is None
        before = calls.fsyncs
        wal.sync()
        assert calls.fsyncs == before + 1
        wal.append_and_sync(b"d")
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is not None
        assert store.flush_plan(wal.durable_lsn, wal.durable_lsn) is None  # nothing to flush
        # Each condition alone refuses: the size owed (as a wal-db file's
        # extension at open leaves it) ...
        store._file_dirty = True
        store._forget_plan()  # as every change that owes the size does
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None
        wal.append_and_sync(b"e")
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is not None
        # ... and a ``release`` with work to do (a truncation forgets what it knew).
        wal.truncate_after(wal.append(b"f"))
        assert store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None
    with Wal.open(tmp_path / "msync.wal", config=WalConfig(sync_method="msync")) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        assert wal.store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None

    with Wal.with_store(FileStore(tmp_path / "own", syscalls=OwnChoice())) as wal:
        wal.append_and_sync(b"a")
        wal.append_and_sync(b"b")
        assert wal.store.flush_plan(wal.durable_lsn - 1, wal.durable_lsn) is None


def test_a_single_file_store_plans_nothing_once_closed_nor_while_release_has_work(
    tmp_path: Path,
) -> None:
    # Catches: a plan handed out after close (the descriptor in it closed, its
    # number free for another file to take: a commit's fdatasync on the wrong
    # file), and one for a flush whose ``release`` would seal the window (the
    # log then skips ``release``), asked of the store with nothing else owed.
    window = mmap.ALLOCATIONGRANULARITY
    store = FileStore(tmp_path / "log", window_size=window, precreate=False)
    try:
        store.ensure_capacity(2 * window)
        store.flush(0, 10)
        store.release(10)
        assert store.flush_plan(5, 10) is not None
        assert store.flush_plan(5, window) is None  # ``release(window)`` seals window 0
        assert store.flush_plan(5, window - 1) is not None
    finally:
        store.close()
    assert store.flush_plan(5, 10) is None


def test_a_failed_fdatasync_on_the_lone_path_breaks_the_log_for_good(tmp_path: Path) -> None:
    # Catches: the C leader telling a caller its record is durable, or keeping
    # the token, after its fdatasync failed.
    calls = CountingSyscalls()
    with Wal.with_store(SegmentStore(tmp_path / "log", SEGMENT, syscalls=calls)) as wal:
        wal.append_and_sync(b"first")
        durable = wal.durable_lsn
        calls.fail = True
        with pytest.raises(WalBrokenError) as raised:
            wal.append_and_sync(b"lost")
        assert isinstance(raised.value.__cause__, OSError)
        machine = wal._group_commit._machine
        assert machine.durable_lsn == durable
        assert (machine.holder, machine.callers, machine.waiting) == (Holder.NONE, 0, 0)
        calls.fail = False
        with pytest.raises(WalBrokenError):
            wal.sync()
        with pytest.raises(WalBrokenError):
            wal.append(b"after")


def test_an_interrupted_flush_gives_the_token_back_without_breaking(tmp_path: Path) -> None:
    # Catches: the C leader keeping the token (every later sync hangs) or
    # breaking the log when its flush stops with something that is not an OSError.
    class Interrupting(Syscalls):
        interrupt = False

        def fdatasync(self, fd: int) -> None:
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            super().fdatasync(fd)

    calls = Interrupting()
    with Wal.with_store(SegmentStore(tmp_path / "log", SEGMENT, syscalls=calls)) as wal:
        wal.append_and_sync(b"first")
        calls.interrupt = True
        with pytest.raises(KeyboardInterrupt):
            wal.append_and_sync(b"second")
        machine = wal._group_commit._machine
        assert (machine.holder, machine.callers, machine.broken) == (Holder.NONE, 0, None)
        wal.sync()
        assert wal.durable_lsn == wal.next_lsn


def test_append_and_sync_takes_every_buffer_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = [
            wal.append_and_sync(data)
            for data in (b"bytes", bytearray(b"array"), memoryview(b"xview")[1:])
        ]
        assert wal.durable_lsn == wal.next_lsn
        with pytest.raises(TypeError, match="encode text first"):
            wal.append_and_sync("text")  # type: ignore[arg-type]
        assert [(r.lsn, r.data) for r in wal] == list(
            zip(lsns, [b"bytes", b"array", b"view"], strict=True)
        )
    wal.close()
    with pytest.raises(WalClosedError):
        wal.append_and_sync(b"closed")


def test_a_subclass_that_overrides_append_and_sync_keeps_its_own(tmp_path: Path) -> None:
    seen: list[bytes] = []

    class Mine(Wal):
        def append_and_sync(self, data: bytes) -> int:  # type: ignore[override]
            seen.append(bytes(data))
            return super().append_and_sync(data)

    with Mine.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"one")
    assert seen == [b"one"]


# -- the bases after the flush: C against their Python twins --------------------------


def _publisher(path: Path) -> EndsPublisher:
    publisher = EndsPublisher.create(str(path), Syscalls(), 0o600)
    assert publisher is not None
    return publisher


@pytest.mark.parametrize("flushed", ["active", "python"])
def test_flushed_writes_what_publish_writes(tmp_path: Path, flushed: str) -> None:
    # Catches: the C update packing a word, the CRC or the slot's place wrongly,
    # or not forgetting what was said (a later publish of the same ends skipped).
    publisher = _publisher(tmp_path / ENDS_FILE_NAME)
    reference = _publisher(tmp_path / "reference")
    update: Callable[[int, int], None] = (
        publisher.flushed
        if flushed == "active"
        else lambda end, head: PythonEndsPublisherBase.flushed(
            cast("PythonEndsPublisherBase", publisher), end, head
        )
    )
    for end, head in ((100, 0), (4096, 0), (1 << 40, 1 << 20), (1 << 62, 1 << 61)):
        update(end, head)
        reference.publish(written=end, durable=end, head=head)
        assert publisher._mapping[:512] == reference._mapping[:512]
        assert publisher._said is None
    publisher.publish(written=1 << 62, durable=1 << 62, head=1 << 61)
    reference._said = None
    reference.publish(written=1 << 62, durable=1 << 62, head=1 << 61)
    assert publisher._mapping[:512] == reference._mapping[:512]


@needs_c
def test_put_ends_slot_in_c_writes_the_bytes_of_its_python_twin() -> None:
    from mmwal._speedups import put_ends_slot

    rng = random.Random(5)
    for _ in range(200):
        slot = bytearray(rng.randbytes(180))
        twin = bytearray(slot)
        mapping, expected = bytearray(400), bytearray(400)
        words = [rng.getrandbits(64) for _ in range(4)]
        position = rng.choice((0, 192))
        put_ends_slot(mapping, slot, position, *words)
        python_put_ends_slot(expected, twin, position, *words)
        assert (mapping, slot) == (expected, twin)
    with pytest.raises(ValueError, match="does not fit"):
        put_ends_slot(bytearray(300), bytearray(180), 192, 1, 2, 3, 4)


def _keeper(rng: random.Random) -> PointKeeper:
    keeper = PointKeeper(cast("Store", types.SimpleNamespace(unit_size=4096)), 1 << 20, (0, 0))
    keeper.saved_end = rng.choice((None, 0, 100, 4096, 5000, 1 << 30))
    keeper._saved_at = rng.choice((0.0, 10.0, 100.0))
    keeper._quiet_until = rng.choice((0.0, 50.0))
    keeper._enabled = rng.random() < 0.8
    keeper._unit = rng.choice((0, 4096))
    return keeper


@needs_c
def test_note_flushed_in_c_answers_as_its_python_twin() -> None:
    # Catches: the C question answering a point due (or not) where the Python
    # rules say otherwise, or not recording the durable range.
    rng = random.Random(9)
    for _ in range(400):
        seed = rng.random()
        c_keeper = _keeper(random.Random(seed))
        python_keeper = _keeper(random.Random(seed))
        start = rng.choice((0, 10, 4000, 5000))
        end = start + rng.choice((-1, 0, 1, 96, 5000, 1 << 25))
        now = rng.choice((5.0, 12.0, 60.0, 105.0, 200.0))
        answer = c_keeper.note_flushed(start, end, now)
        twin = cast("PythonPointKeeperBase", python_keeper)
        assert answer == PythonPointKeeperBase.note_flushed(twin, start, end, now)
        assert c_keeper._flushed == python_keeper._flushed


def test_the_machine_fields_read_and_write_as_attributes() -> None:
    machine = CommitMachine(7)
    assert (machine.durable_lsn, machine.holder, machine.broken, machine.closed) == (
        7,
        Holder.NONE,
        None,
        False,
    )
    machine.flush_seconds += 1
    machine.broken = OSError("x")
    machine.broken_by = "a flush"
    assert machine.flush_seconds == 1.0
    assert isinstance(machine.broken, OSError)
    with pytest.raises(AttributeError):
        machine.not_a_field = 1  # type: ignore[attr-defined]


def test_the_state_file_mapping_is_closed_with_the_log(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"a")
        publisher = wal._group_commit.publisher
        assert publisher is not None
        mapping = publisher._mapping
    assert isinstance(mapping, mmap.mmap)
    assert mapping.closed
