"""Deterministic interleavings of the group-commit protocol: leader, followers, fail-stop, close.

The tests drive the leader/follower hand-off by hand. ``ControlledSyscalls`` holds
chosen msync calls on an ``Event`` (or makes them fail), numbers them and records
which thread made each one, so "who flushed, and how often" is observed, not
inferred. A thread is known to be parked as a follower once
``Wal.stats().syncs_requested`` counts it: the counter moves under the commit lock
and ``stats`` takes that lock, so by the time the count is visible the caller has
either returned or is waiting on the commit condition (and with a leader held in
msync it cannot have returned).

Nothing depends on timing. Every wait has a deadline; a missed deadline fails the
test instead of hanging it, and the threads are daemons released at teardown.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import pytest
from thread_runner import DEADLINE, Outcome, Runner, wait_until

import mmwal
from mmwal import (
    FileStore,
    SegmentStore,
    Syscalls,
    Wal,
    WalBrokenError,
    WalClosedError,
    WalError,
    _syscalls,
)
from mmwal._commit import GroupCommit
from mmwal._commit_machine import CommitMachine
from mmwal._store import Buffer

if TYPE_CHECKING:
    from _typeshed import TraceFunction

T = TypeVar("T")

HEADER = 8
WINDOW = 1 << 20  # one window holds every test's data: one msync per flush


def assert_all_broken(runners: list[Outcome], failure: OSError) -> None:
    """Each runner finished with ``WalBrokenError`` caused by exactly ``failure``."""
    for runner in runners:
        runner.join()
        assert isinstance(runner.error, WalBrokenError), (runner.thread.name, runner.error)
        assert runner.error.__cause__ is failure, runner.thread.name


def syncs_requested_is(wal: Wal, count: int) -> None:
    """Wait until ``count`` sync calls entered the protocol (and so are parked or done)."""
    wait_until(lambda: wal.stats().syncs_requested >= count, f"{count} syncs were requested")
    assert wal.stats().syncs_requested == count


class ControlledSyscalls(Syscalls):
    """Real syscalls, except that data flushes can be held on an Event or made to fail.

    A data flush is an ``msync`` or an ``fdatasync``, whichever the log's
    ``sync_method`` makes (the ``msync_*`` names below count both). They are
    numbered from 1 in the order they start; ``hold(n)`` returns the Event that
    releases call ``n``, ``fail(n, error)`` makes call ``n`` raise ``error``
    (after its hold, if any) instead of flushing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._gates: dict[int, threading.Event] = {}
        self._failures: dict[int, OSError] = {}
        self.msync_threads: list[int] = []

    def hold(self, call: int) -> threading.Event:
        gate = threading.Event()
        with self._cond:
            self._gates[call] = gate
        return gate

    def fail(self, call: int, error: OSError) -> None:
        with self._cond:
            self._failures[call] = error

    def heal(self) -> None:
        """The disk is healthy again: no more injected failures."""
        with self._cond:
            self._failures.clear()

    @property
    def msync_calls(self) -> int:
        with self._cond:
            return len(self.msync_threads)

    def wait_for_msync(self, count: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.msync_threads) >= count, DEADLINE):
                pytest.fail(f"msync call {count} never started")

    def release_all(self) -> None:
        with self._cond:
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()

    def _controlled(self) -> None:
        with self._cond:
            self.msync_threads.append(threading.get_ident())
            call = len(self.msync_threads)
            gate = self._gates.get(call)
            failure = self._failures.get(call)
            self._cond.notify_all()
        if gate is not None and not gate.wait(DEADLINE):
            # Not an OSError: a test that forgot to release must not look like a
            # flush failure the log handled.
            raise RuntimeError(f"data flush {call} was held and never released")
        if failure is not None:
            raise failure

    def msync(self, address: int, length: int) -> None:
        self._controlled()
        super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        self._controlled()
        super().fdatasync(fd)


@pytest.fixture
def calls() -> Iterator[ControlledSyscalls]:
    syscalls = ControlledSyscalls()
    yield syscalls
    # A failed test may leave threads parked in msync: let them go.
    syscalls.release_all()


@pytest.fixture(params=["msync", "fdatasync"])
def sync_method(request: pytest.FixtureRequest) -> str:
    """Each test of the protocol runs over both ways a flush reaches the disk."""
    method: str = request.param
    return method


@pytest.fixture
def wal(tmp_path: Path, calls: ControlledSyscalls, sync_method: str) -> Iterator[Wal]:
    log = Wal.with_store(
        FileStore(tmp_path / "log", window_size=WINDOW, syscalls=calls, sync_method=sync_method)
    )
    assert calls.msync_calls == 0, "opening an empty log flushes no data"
    yield log
    calls.release_all()
    with contextlib.suppress(WalError):  # a test that broke the log on purpose
        log.close()


def reopen(tmp_path: Path) -> list[mmwal.Record]:
    with Wal.open(tmp_path / "log") as log:
        return list(log)


def append_end(wal: Wal, payload: bytes) -> int:
    return wal.append(payload) + HEADER + len(payload)


# -- followers covered by the leader -------------------------------------------------


def test_followers_covered_by_the_leader_return_without_flushing_again(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    for i in range(3):
        end = append_end(wal, b"record %d" % i)
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)  # the leader is inside msync, flushing [0, end)

    followers = [Runner(f"follower-{i}", wal.sync).start() for i in range(5)]
    syncs_requested_is(wal, 6)
    assert all(f.thread.is_alive() for f in followers), "a follower returned before the flush"
    assert wal.durable_lsn == 0

    gate.set()
    leader.result()
    for follower in followers:
        follower.result()
    assert calls.msync_calls == 1
    assert calls.msync_threads == [leader.ident]
    stats = wal.stats()
    assert (stats.syncs_requested, stats.flushes) == (6, 1)
    assert wal.durable_lsn == end


class RecordingTicket:
    """A parked thread's ticket (a plain lock) that records whether the commit lock was held."""

    def __init__(self, commit_lock: threading.Lock, released: list[bool]) -> None:
        self._lock = threading.Lock()
        self._commit_lock = commit_lock
        self._released = released

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self._released.append(self._commit_lock.locked())
        self._lock.release()


def test_each_wakeup_is_released_once_the_commit_lock_is_let_go(
    wal: Wal, calls: ControlledSyscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a ticket released while its waker still holds the commit lock
    # (the leader's finish or a link of the chain): the woken thread then wakes
    # only to wait for the lock (and, with the extension, the GIL) again.
    # The followers take the Python protocol (``_sync_to``), whose tickets the
    # test replaces; the C follower's are its own (tests/test_commit_wait.py).
    group = wal._group_commit
    released: list[bool] = []
    monkeypatch.setattr(
        "mmwal._commit.ReservationLock", lambda: RecordingTicket(group.lock, released)
    )
    end = append_end(wal, b"leader")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    followers = [Runner(f"follower-{i}", partial(group._sync_to, end)).start() for i in range(4)]
    syncs_requested_is(wal, 5)
    gate.set()
    leader.result()
    for follower in followers:
        follower.result()
    # One wake-up from the leader's finish, then one per link of the chain.
    assert released == [False] * 4
    assert (wal.stats().flushes, wal.durable_lsn) == (1, end)


def test_a_thread_woken_to_lead_yields_before_it_takes_its_range(
    wal: Wal, calls: ControlledSyscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a follower woken to take the token that fixes its range at once,
    # before the thread that woke it (no longer a caller, but about to commit
    # again) appends: two committing threads then alternate flushes of one
    # commit each. The follower takes the Python protocol, whose yield the test
    # records (the C follower's is sched_yield itself).
    yielded: list[int] = []
    real_yield = os.sched_yield

    def recorded_yield() -> None:
        yielded.append(threading.get_ident())
        real_yield()

    monkeypatch.setattr(os, "sched_yield", recorded_yield)
    append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    beyond = append_end(wal, b"beyond the leader's flush")
    follower = Runner("follower", partial(wal._group_commit._sync_to, beyond)).start()
    syncs_requested_is(wal, 2)
    gate.set()
    leader.result()
    follower.result()
    assert calls.msync_threads == [leader.ident, follower.ident]
    assert yielded == [follower.ident]
    assert wal.durable_lsn == beyond


class WaitInterruptedError(Exception):
    """Raised by a signal handler in the main thread while it waits as a follower."""


def test_a_follower_interrupted_in_its_wait_leaves_and_the_others_are_still_woken(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    """A wait a signal interrupts leaves no ticket behind to swallow a wake-up.

    The main thread parks first behind a held flush, two followers park after it,
    and a signal interrupts the main thread's wait. The flush's wake-up must go to
    the followers (a ticket left parked would take it, and they would hang), and
    the machine must count nobody left waiting.
    """
    end = append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    machine = wal._group_commit._machine
    followers: list[Runner[None]] = []

    def park_followers_then_interrupt() -> None:
        syncs_requested_is(wal, 2)  # the main thread is parked first
        followers.extend(Runner(f"follower-{i}", wal.sync).start() for i in range(2))
        syncs_requested_is(wal, 4)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise WaitInterruptedError

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        helper = Runner("helper", park_followers_then_interrupt).start()
        with pytest.raises(WaitInterruptedError):
            wal.sync()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    helper.result()
    assert (machine.callers, machine.waiting, len(machine.parked)) == (3, 2, 2)

    gate.set()
    leader.result()
    for follower in followers:
        follower.result()
    assert calls.msync_calls == 1
    assert wal.durable_lsn == end
    assert (machine.callers, machine.waiting, machine.parked) == (0, 0, [])
    wal.sync()


# -- a follower beyond the leader's flush leads the next one --------------------------


def test_a_follower_beyond_the_leaders_flush_becomes_the_next_leader(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)  # the leader's flush is fixed at [0, first_end)

    covered = Runner("covered", wal.sync).start()  # target first_end: the leader covers it
    syncs_requested_is(wal, 2)
    beyond = [
        Runner(f"beyond-{i}", partial(wal.append_and_sync, b"beyond %d" % i)).start()
        for i in range(3)
    ]
    syncs_requested_is(wal, 5)
    last_end = wal.next_lsn
    assert wal.durable_lsn == 0

    gate.set()
    leader.result()
    covered.result()
    lsns = [runner.result() for runner in beyond]
    # The leader's flush covered the first record only; one of the followers beyond
    # it led a second flush that covered all three (they were appended before it).
    assert calls.msync_calls == 2
    assert calls.msync_threads[0] == leader.ident
    assert calls.msync_threads[1] in {runner.ident for runner in beyond}
    assert wal.stats().flushes == 2
    assert wal.durable_lsn == last_end
    assert sorted(lsns) == [r.lsn for r in wal][1:]


def test_a_single_follower_beyond_the_flush_flushes_exactly_once_more(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    first_end = append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    second_end = append_end(wal, b"second")  # appended while the leader flushes
    follower = Runner("follower", wal.sync).start()  # target second_end > first_end
    syncs_requested_is(wal, 2)

    gate.set()
    leader.result()
    follower.result()
    assert calls.msync_threads == [leader.ident, follower.ident]
    assert wal.stats().flushes == 2
    assert first_end < second_end == wal.durable_lsn


# -- fail-stop ----------------------------------------------------------------------


def test_a_failed_flush_breaks_the_leader_every_waiter_and_every_later_caller(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    wal.append(b"first")
    failure = OSError(errno.EIO, "injected msync failure")
    gate = calls.hold(1)
    calls.fail(1, failure)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)

    # Waiters the failing flush would have covered, and waiters beyond it.
    covered = [Runner(f"covered-{i}", wal.sync).start() for i in range(3)]
    syncs_requested_is(wal, 4)
    beyond = [
        Runner(f"beyond-{i}", partial(wal.append_and_sync, b"beyond %d" % i)).start()
        for i in range(3)
    ]
    syncs_requested_is(wal, 7)

    gate.set()
    assert_all_broken([leader, *covered, *beyond], failure)
    assert wal.durable_lsn == 0
    assert wal.stats().flushes == 0

    # Every later caller is refused too, and nothing flushes again.
    for call in (
        wal.sync,
        lambda: wal.append(b"later"),
        lambda: wal.append_many([b"later"]),
        lambda: wal.append_and_sync(b"later"),
    ):
        with pytest.raises(WalBrokenError) as info:
            call()
        assert info.value.__cause__ is failure
    assert calls.msync_calls == 1
    wal.close()  # releases the files without another flush
    assert calls.msync_calls == 1


def test_a_retried_flush_after_a_failure_never_reports_durable(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    end = append_end(wal, b"lost?")
    failure = OSError(errno.EIO, "injected msync failure")
    calls.fail(1, failure)
    with pytest.raises(WalBrokenError) as info:
        wal.sync()
    assert info.value.__cause__ is failure

    calls.heal()  # the disk works again: a retry would now "succeed"
    for _ in range(3):
        with pytest.raises(WalBrokenError):
            wal.sync()
    assert calls.msync_calls == 1, "a failed flush was retried"
    assert wal.durable_lsn == 0 < end
    assert wal.stats().flushes == 0


def test_callers_the_successful_flush_covered_return_and_the_failed_flush_breaks_the_rest(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    first_end = append_end(wal, b"first")
    gate_one = calls.hold(1)
    gate_two = calls.hold(2)
    failure = OSError(errno.EIO, "injected failure of the second flush")
    calls.fail(2, failure)

    leader = Runner("leader-1", wal.sync).start()
    calls.wait_for_msync(1)
    covered = Runner("covered", wal.sync).start()  # target first_end
    syncs_requested_is(wal, 2)
    append_end(wal, b"second")
    next_leader = Runner("leader-2", wal.sync).start()  # beyond the first flush
    syncs_requested_is(wal, 3)

    gate_one.set()
    leader.result()
    covered.result()
    calls.wait_for_msync(2)  # the follower beyond now leads, held in msync
    assert calls.msync_threads[1] == next_leader.ident
    assert wal.durable_lsn == first_end
    waiters = [
        Runner(f"waiter-{i}", partial(wal.append_and_sync, b"third %d" % i)).start()
        for i in range(2)
    ]
    syncs_requested_is(wal, 5)

    gate_two.set()
    assert_all_broken([next_leader, *waiters], failure)
    assert wal.durable_lsn == first_end, "durable moved past a failed flush"
    assert wal.stats().flushes == 1


def test_no_append_succeeds_once_a_failed_flush_broke_the_log(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    """Fail-stop covers appends: after a flush failed, every later append raises.

    Catches a leader that zeroes ``_fast_limit`` under ``_reserve`` and only later,
    in another critical section, sets ``_broken``: an append landing between the
    two would take the slow path, pass ``_check_writable`` (not broken yet) and
    re-arm ``_fast_limit``, and from then on the fast path in ``append``, which
    never looks at ``_broken``, would accept appends on the broken log. A trace
    function pins the leader inside the break while an append races it.
    """
    wal.append(b"first")
    failure = OSError(errno.EIO, "injected msync failure")
    calls.fail(1, failure)
    paused = threading.Event()
    resume = threading.Event()
    flush_failed = CommitMachine.flush_failed.__code__

    def tracer(frame: FrameType, event: str, arg: object) -> None:
        # Pause the leader where it tells the machine its flush failed: after it
        # zeroed ``fast_limit``, before ``broken`` is set.
        if event != "call" or frame.f_code is not flush_failed or paused.is_set():
            return
        caller = frame.f_back
        if caller is not None and caller.f_locals.get("error") is failure:
            paused.set()
            resume.wait(DEADLINE)

    def traced_sync() -> None:
        sys.settrace(tracer)
        try:
            wal.sync()
        finally:
            sys.settrace(None)

    leader = Runner("leader", traced_sync).start()
    try:
        wait_until(
            lambda: paused.is_set() or not leader.thread.is_alive(),
            "the leader handled the failed flush",
        )
        # The pause must have happened, or the race below is never run.
        assert paused.is_set()
        racer = Runner("racer", lambda: wal.append(b"racing the failure")).start()
        # Where the break is one critical section the racer blocks on the
        # reservation lock until the leader goes on; where it is two, the racer
        # gets in between now. Either way the assertions below must hold.
        racer.thread.join(0.05)
    finally:
        resume.set()
    racer.join()
    assert racer.error is None or isinstance(racer.error, WalBrokenError), racer.error
    leader.join()
    assert isinstance(leader.error, WalBrokenError)
    assert leader.error.__cause__ is failure
    with pytest.raises(WalBrokenError):
        wal.append(b"after the failure")
    with pytest.raises(WalBrokenError):
        wal.append_many([b"after the failure"])


# -- appending during a flush ---------------------------------------------------------


def test_appenders_make_progress_while_the_leader_is_blocked_in_msync(
    tmp_path: Path, calls: ControlledSyscalls, sync_method: str
) -> None:
    """The GIL point, without timing: N appends complete while a flush is parked in msync.

    The log is segmented with 4 KiB segments, so the appends also create segment
    files and copy records larger than 64 KiB outside the reservation lock while the
    flush is in progress.
    """
    wal = Wal.with_store(
        SegmentStore(tmp_path / "log", 4096, syscalls=calls, sync_method=sync_method)
    )
    try:
        first_end = append_end(wal, b"first")
        gate = calls.hold(1)
        leader = Runner("leader", wal.sync).start()
        calls.wait_for_msync(1)
        segments_before = wal.stats().segments_created

        def appender() -> list[int]:
            lsns = [wal.append(b"a%05d" % i * (i % 7)) for i in range(2000)]
            lsns.append(wal.append(b"L" * (70 * 1024)))  # out-of-lock copy path
            lsns.extend(wal.append_many([b"m%d" % i for i in range(50)]))
            lsns.append(wal.append(b"B" * (130 * 1024)))
            return lsns

        lsns = Runner("appender", appender).start().result()
        # All of that happened with the leader still inside its first msync.
        assert leader.thread.is_alive()
        assert calls.msync_calls == 1
        assert wal.durable_lsn == 0
        assert wal.stats().appends == 1 + len(lsns)
        assert wal.stats().segments_created > segments_before + 40
        assert [r.lsn for r in wal][1:] == lsns  # the watermark moved during the flush

        gate.set()
        leader.result()
        assert wal.durable_lsn == first_end  # the leader flushed what it saw, no more
        wal.sync()
        assert wal.durable_lsn == wal.next_lsn
        assert wal.stats().flushes == 2
    finally:
        calls.release_all()
        wal.close()
    with Wal.open_segmented(tmp_path / "log") as reopened:
        assert [r.lsn for r in reopened][1:] == lsns


def test_msync_is_called_through_a_ctypes_function_that_releases_the_gil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Structural half of the GIL point: real msync runs with the GIL released.

    ``mmap.flush`` holds the GIL; a ctypes function from a ``CDLL`` (not a
    ``PyDLL``) releases it for the length of the call.
    """
    python_api = ctypes.PyDLL._func_flags_ & ~ctypes.CDLL._func_flags_
    assert python_api, "ctypes no longer marks functions that keep the GIL"
    assert isinstance(_syscalls._libc, ctypes.CDLL)
    assert not isinstance(_syscalls._libc, ctypes.PyDLL)
    assert not _syscalls._msync._flags_ & python_api

    seen: list[tuple[int, int, int]] = []

    def fake_msync(address: int, length: int, flags: int) -> int:
        seen.append((address, length, flags))
        return 0

    monkeypatch.setattr(_syscalls, "_msync", fake_msync)
    Syscalls().msync(4096, 8192)
    assert seen == [(4096, 8192, _syscalls._MS_SYNC)]


# -- close while others wait ------------------------------------------------------------


def test_close_while_threads_wait_in_sync_never_hangs_or_lies(
    tmp_path: Path, wal: Wal, calls: ControlledSyscalls
) -> None:
    append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    target = append_end(wal, b"second")

    def sync_and_look() -> tuple[int, int]:
        wal.sync()
        return target, wal.durable_lsn

    def append_sync_and_look(i: int) -> tuple[int, int]:
        payload = b"third %d" % i
        lsn = wal.append_and_sync(payload)
        return lsn + HEADER + len(payload), wal.durable_lsn

    waiters = [Runner(f"sync-{i}", sync_and_look).start() for i in range(2)]
    syncs_requested_is(wal, 3)
    waiters += [
        Runner(f"append-sync-{i}", partial(append_sync_and_look, i)).start() for i in range(2)
    ]
    syncs_requested_is(wal, 5)
    end = wal.next_lsn
    closer = Runner("closer", wal.close).start()
    syncs_requested_is(wal, 6)  # close is waiting for its own final sync
    with pytest.raises(WalClosedError):
        wal.append(b"after close began")

    gate.set()
    leader.result()
    closer.result()
    for waiter in waiters:
        # Every waiter's record was appended before close began, so close's flush
        # made it durable: none may raise (a retry would write it twice).
        wanted, durable = waiter.result()
        assert durable >= wanted, f"{waiter.thread.name} returned before its data was durable"
    assert wal.closed
    assert wal.durable_lsn == end
    assert calls.msync_calls == 2
    assert len(reopen(tmp_path)) == 4


def test_close_while_threads_wait_and_the_flush_fails_breaks_them_all(
    tmp_path: Path, wal: Wal, calls: ControlledSyscalls
) -> None:
    append_end(wal, b"first")
    failure = OSError(errno.EIO, "injected msync failure")
    gate = calls.hold(1)
    calls.fail(1, failure)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    append_end(wal, b"second")
    waiters: list[Outcome] = [Runner(f"sync-{i}", wal.sync).start() for i in range(2)]
    waiters.append(Runner("append-sync", lambda: wal.append_and_sync(b"third")).start())
    syncs_requested_is(wal, 4)
    closer = Runner("closer", wal.close).start()
    syncs_requested_is(wal, 5)

    gate.set()
    assert_all_broken([leader, *waiters, closer], failure)
    assert wal.closed  # the files were released even though the final flush failed
    assert wal.durable_lsn == 0
    with pytest.raises((WalBrokenError, WalClosedError)):
        wal.sync()
    assert calls.msync_calls == 1
    assert len(reopen(tmp_path)) == 3  # the lock is free; the page cache kept the bytes


def test_a_second_close_returns_only_once_the_log_is_durable_and_closed(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    """``close`` promises: once it returns, what was appended before it is durable.

    A second ``close`` racing the first must not return early (catches one that
    returns at once, while the first close is still flushing, with nothing durable
    yet).
    """
    end = append_end(wal, b"appended before both closes")
    gate = calls.hold(1)
    first = Runner("first-close", wal.close).start()
    calls.wait_for_msync(1)  # the first close is flushing

    def close_and_look() -> tuple[bool, int]:
        wal.close()
        return wal.closed, wal.durable_lsn

    second = Runner("second-close", close_and_look).start()
    # Give a correct second close the chance to park; a broken one returns at once.
    # (Whatever happens here, the assertions below hold for a correct close.)
    second.thread.join(0.2)
    gate.set()
    first.result()
    closed, durable = second.result()
    assert closed, "the second close returned while the log was still open"
    assert durable >= end, "the second close returned before the data was durable"


def reacquire_line() -> int:
    """Return the line where a woken thread in ``GroupCommit._park`` takes the commit lock again."""
    lines, first = inspect.getsourcelines(GroupCommit._park)
    (offset,) = [
        i
        for i, line in enumerate(lines)
        if line.strip() == "interrupted = _take_back(mutex, interrupted)"
    ]
    return first + offset


def test_a_waiter_whose_record_close_made_durable_returns_its_lsn(
    tmp_path: Path, wal: Wal, calls: ControlledSyscalls
) -> None:
    """A commit whose record is durable never raises, even when close flushed it.

    A thread waits in ``append_and_sync`` for a flush beyond the running one; the
    running flush ends and wakes it, and before it looks again a ``close`` flushes
    its record and closes the log. It must return its LSN: its record is durable
    (an application that retried on an error would write the record twice). A trace
    function holds the waiter after the wake-up, before it takes the commit lock
    again, so the order is forced, not hoped for. The waiter takes the Python
    protocol, which a trace function can stop; tests/test_commit_wait.py holds
    the C follower to the same answer.
    """
    append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)

    woken = threading.Event()
    resume = threading.Event()
    park = GroupCommit._park.__code__
    reacquire = reacquire_line()

    def hold_before_reacquire(frame: FrameType, event: str, arg: object) -> TraceFunction:
        if event == "line" and frame.f_lineno == reacquire and not woken.is_set():
            woken.set()
            resume.wait(DEADLINE)
        return hold_before_reacquire

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        return hold_before_reacquire if frame.f_code is park else None

    def traced_commit() -> int:
        lsn = wal.append(b"second")
        sys.settrace(tracer)
        try:
            wal._group_commit._sync_to(lsn + HEADER + len(b"second"))
        finally:
            sys.settrace(None)
        return lsn

    waiter = Runner("waiter", traced_commit).start()
    syncs_requested_is(wal, 2)  # parked: its target lies beyond the leader's flush
    gate.set()
    leader.result()
    wait_until(woken.is_set, "the leader's flush woke the waiter")

    wal.close()  # its final flush covers the waiter's record; then the log is closed
    assert calls.msync_calls == 2
    resume.set()
    lsn = waiter.result()
    assert [r.data for r in reopen(tmp_path)] == [b"first", b"second"]
    assert lsn == HEADER + len(b"first")


def commit_until_closed(
    log: Wal, name: int, start: threading.Barrier, outcomes: dict[bytes, bool]
) -> None:
    """Commit records until the log is closed; note which commits returned."""
    start.wait(DEADLINE)
    for i in range(10_000):
        payload = b"%d-%d" % (name, i)
        try:
            log.append_and_sync(payload)
        except WalClosedError:
            outcomes[payload] = False
            return
        outcomes[payload] = True


def test_commits_racing_close_fail_only_when_their_record_was_not_written(
    tmp_path: Path,
) -> None:
    """Threads commit while another closes: a commit that raised left no record.

    Every ``append_and_sync`` either returns (its record survives the reopen) or
    raises ``WalClosedError`` (and its record is not in the log). Repeated until a
    deadline, since the interleaving is left to the scheduler.
    """
    deadline = time.monotonic() + 3.0
    trials = 0
    while trials < 30 and time.monotonic() < deadline:
        path = tmp_path / f"log-{trials}"
        log = Wal.with_store(FileStore(path, window_size=WINDOW))
        start = threading.Barrier(5)
        outcomes: dict[bytes, bool] = {}
        runners = [
            Runner(f"committer-{n}", partial(commit_until_closed, log, n, start, outcomes)).start()
            for n in range(4)
        ]
        start.wait(DEADLINE)
        time.sleep(0.001 * (trials % 5))
        log.close()
        for runner in runners:
            runner.result()
        with Wal.open(path) as reopened:
            kept = {record.data for record in reopened}
        assert {payload for payload, ok in outcomes.items() if ok} <= kept
        misreported = {payload for payload, ok in outcomes.items() if not ok} & kept
        assert not misreported, f"commits raised although their records are durable: {misreported}"
        trials += 1
    assert trials >= 5


def test_flush_seconds_adds_up_the_time_spent_flushing(wal: Wal, calls: ControlledSyscalls) -> None:
    """``stats().flush_seconds`` sums every flush: each held here for a known minimum.

    And no more than the time that passed: the sum is of durations, not of clocks.
    """
    began = time.perf_counter()
    for call, held in ((1, 0.05), (2, 0.02)):
        before = wal.stats().flush_seconds
        append_end(wal, b"record %d" % call)
        gate = calls.hold(call)
        leader = Runner(f"leader-{call}", wal.sync).start()
        calls.wait_for_msync(call)
        time.sleep(held)
        gate.set()
        leader.result()
        assert wal.stats().flush_seconds >= before + held
    assert wal.stats().flushes == 2
    assert wal.stats().flush_seconds <= time.perf_counter() - began


@pytest.mark.parametrize(
    "payload",
    [b"", b"abc", b"x" * 20, bytearray(b"from a bytearray"), memoryview(b"from a memoryview")],
    ids=["empty", "short", "longer", "bytearray", "memoryview"],
)
def test_append_and_sync_returns_with_its_own_record_durable(
    wal: Wal, calls: ControlledSyscalls, payload: bytes | bytearray | memoryview
) -> None:
    """Its target is the end of its own frame: shorter payloads than a header included."""
    wal.append_and_sync(b"before")
    assert wal.durable_lsn == wal.next_lsn
    flushes = calls.msync_calls
    lsn = wal.append_and_sync(payload)
    assert wal.durable_lsn == wal.next_lsn == lsn + HEADER + len(bytes(payload))
    assert calls.msync_calls == flushes + 1
    assert list(wal)[-1].data == bytes(payload)


def test_broken_errors_name_the_operation_that_failed(wal: Wal, calls: ControlledSyscalls) -> None:
    wal.append(b"first")
    failure = OSError(errno.EIO, "injected msync failure")
    calls.fail(1, failure)
    with pytest.raises(WalBrokenError) as first:
        wal.sync()
    assert first.value.operation == "a flush"
    for call in (wal.sync, lambda: wal.append(b"later"), lambda: wal.append_and_sync(b"x")):
        with pytest.raises(WalBrokenError) as later:
            call()
        assert later.value.operation == "a flush"
        assert later.value.__cause__ is failure


class HeldCopyStore(FileStore):
    """A file store whose copies of large frames wait on ``gate`` (copies in flight)."""

    def __init__(self, path: Path, syscalls: Syscalls) -> None:
        super().__init__(path, window_size=WINDOW, syscalls=syscalls)
        self.gate = threading.Event()
        self.copying = threading.Event()

    def write(self, offset: int, data: Buffer) -> None:
        if len(data) > 64 * 1024:
            self.copying.set()
            if not self.gate.wait(DEADLINE):
                raise RuntimeError("a held copy was never released")
        super().write(offset, data)


BIG = b"B" * (70 * 1024)  # copied outside the reservation lock, so it can be in flight


def test_a_sync_waits_for_a_copy_in_flight_below_its_target(
    tmp_path: Path, calls: ControlledSyscalls
) -> None:
    """A record appended before ``sync`` but still being copied is flushed before it returns."""
    store = HeldCopyStore(tmp_path / "log", calls)
    wal = Wal.with_store(store)
    try:
        wal.append_and_sync(b"first")
        big = Runner("big", lambda: wal.append(BIG)).start()
        assert store.copying.wait(DEADLINE)
        end = wal.next_lsn  # reserved: the copy is in flight
        syncer = Runner("sync", wal.sync).start()
        syncs_requested_is(wal, 2)
        syncer.thread.join(0.2)  # a sync that skipped the copy returns here
        assert syncer.thread.is_alive(), "sync returned while a record before it was copied"
        store.gate.set()
        big.result()
        syncer.result()
        assert wal.durable_lsn == end
    finally:
        store.gate.set()
        wal.close()


def test_a_commit_does_not_wait_for_a_copy_that_starts_at_its_end(
    tmp_path: Path, calls: ControlledSyscalls
) -> None:
    """A copy reserved after a commit's record, in flight, does not hold that commit back."""
    store = HeldCopyStore(tmp_path / "log", calls)
    wal = Wal.with_store(store)
    try:
        wal.append(b"first")
        gate = calls.hold(1)
        leader = Runner("leader", wal.sync).start()
        calls.wait_for_msync(1)
        small = b"small"
        committer = Runner("commit", lambda: wal.append_and_sync(small)).start()
        syncs_requested_is(wal, 2)  # parked behind the leader, target the end of "small"
        target = wal.next_lsn
        big = Runner("big", lambda: wal.append(BIG)).start()  # reserved at ``target``
        assert store.copying.wait(DEADLINE)
        gate.set()
        leader.result()
        lsn = committer.result()  # returns although the copy at its end is still held
        assert lsn + HEADER + len(small) == target
        assert wal.durable_lsn == target
        assert big.thread.is_alive()
        store.gate.set()
        big.result()
    finally:
        store.gate.set()
        calls.release_all()
        wal.close()


class _LockInterruptedOnce:
    """The commit lock; once armed, its next acquire in thread ``victim`` raises.

    As a signal handler's exception would: a blocking acquire it interrupts
    returns without the lock, and so does this one.
    """

    def __init__(self, lock: threading.Lock, victim: str) -> None:
        self.lock = lock
        self.victim = victim
        self.armed = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.armed and threading.current_thread().name == self.victim:
            self.armed = False
            raise WaitInterruptedError
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_follower_interrupted_taking_the_lock_back_leaves_the_machine_under_it(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    """A handler's exception as a woken follower takes the commit lock back.

    Catches: the follower then leaving the machine without the lock (its counts
    changed while another thread's transition runs) and its caller letting go of
    a lock it does not hold (``RuntimeError``, or worse, another thread's hold
    released). The follower takes the Python protocol (``_sync_to``, whose wait
    is ``_park``); it must raise the handler's exception holding the lock, and
    leave nobody counted as waiting.
    """
    group = wal._group_commit
    end = append_end(wal, b"first")
    gate = calls.hold(1)
    leader = Runner("leader", wal.sync).start()
    calls.wait_for_msync(1)
    lock = _LockInterruptedOnce(group._mutex, victim="follower")
    group._mutex = lock  # type: ignore[assignment]
    follower = Runner("follower", partial(group._sync_to, end)).start()
    syncs_requested_is(wal, 2)
    lock.armed = True
    gate.set()
    leader.result()
    with pytest.raises(AssertionError, match="follower raised") as caught:
        follower.result()
    assert isinstance(caught.value.__cause__, WaitInterruptedError)  # not RuntimeError
    machine = group._machine
    assert (machine.callers, machine.waiting, list(machine.parked)) == (0, 0, [])
    assert not lock.lock.locked()
    assert wal.durable_lsn == end
    wal.append_and_sync(b"second")  # hangs or fails if the lock or the machine were left wrong


class InterruptedSyscalls(ControlledSyscalls):
    """The first data flush is interrupted by an exception that is not an ``OSError``."""

    def _controlled(self) -> None:
        if not self.msync_threads:
            self.msync_threads.append(threading.get_ident())
            raise KeyboardInterrupt
        super()._controlled()


def test_a_flush_interrupted_by_a_non_os_error_leaves_the_log_usable(
    tmp_path: Path, sync_method: str
) -> None:
    """Not a failed flush (the log is not broken), and the next sync can lead a flush."""
    calls = InterruptedSyscalls()
    wal = Wal.with_store(
        FileStore(tmp_path / "log", window_size=WINDOW, syscalls=calls, sync_method=sync_method)
    )
    try:
        end = append_end(wal, b"record")
        with pytest.raises(KeyboardInterrupt):
            wal.sync()
        assert wal.durable_lsn == 0
        Runner("retry", wal.sync).start().result()  # hangs if the flush was left marked running
        assert wal.durable_lsn == end
    finally:
        wal.close()


def test_a_close_racing_a_failing_close_shares_its_failure(
    wal: Wal, calls: ControlledSyscalls
) -> None:
    wal.append(b"never durable")
    failure = OSError(errno.EIO, "injected failure of close's flush")
    gate = calls.hold(1)
    calls.fail(1, failure)
    first = Runner("first-close", wal.close).start()
    calls.wait_for_msync(1)
    second = Runner("second-close", wal.close).start()
    second.thread.join(0.1)  # parked on the first close (a second close never flushes)
    gate.set()
    first.join()
    second.join()
    assert isinstance(first.error, WalBrokenError)
    assert first.error.__cause__ is failure
    assert isinstance(second.error, WalBrokenError)
    assert second.error.operation == "the final flush of close"
    assert isinstance(second.error.__cause__, WalBrokenError)
    assert second.error.__cause__.__cause__ is failure
    assert wal.closed
    assert calls.msync_calls == 1
