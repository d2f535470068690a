"""A follower's wait in C (``_commitwait.c``) against the Python protocol.

With the extension, a commit that finds the one-flusher token held waits in C
(``GroupCommitBase.sync_to``): it parks its ticket, is woken, asks the machine
again, wakes the next link of the chain and returns, raises or leads from C.
``GroupCommit._sync_to`` is the same protocol in Python. Here the test holds
the token itself (it plays the leader, or an exclusive section, through the
machine's own transitions under the commit lock), so every follower parks, and
the order of events is forced, not hoped for.
"""

from __future__ import annotations

import errno
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import FrameType

import pytest
from thread_runner import Runner, wait_until

from mmwal import SegmentStore, Syscalls, Wal, WalBrokenError, WalClosedError
from mmwal._commit import GroupCommit
from mmwal._commit_machine import Action, CommitMachine, Holder
from mmwal._format import SPEEDUPS

pytestmark = pytest.mark.skipif(not SPEEDUPS, reason="the follower's wait in C")

SEGMENT = 64 * 1024
HEADER = 8


def parked(wal: Wal, count: int) -> None:
    """Wait until ``count`` tickets are parked in the machine."""
    machine = wal._group_commit._machine
    wait_until(lambda: len(machine.parked) >= count, f"{count} tickets are parked")
    assert len(machine.parked) == count


def commit_end(wal: Wal, payload: bytes) -> int:
    return wal.append(payload) + HEADER + len(payload)


@contextmanager
def python_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record every sync the C path hands to the Python protocol."""
    handed: list[int] = []
    reference = GroupCommit._sync_to

    def recorded(self: GroupCommit, target: int) -> None:
        handed.append(target)
        reference(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(GroupCommit, "_sync_to", recorded)
        yield handed


def take_token(wal: Wal) -> None:
    """Hold the token as a leader would (a request answered LEAD), for the test."""
    group = wal._group_commit
    with group.lock:
        # Any target not durable yet: the test flushes what it says it flushed.
        assert group._machine.request(group.durable_lsn + 1) is Action.LEAD


def flush_done(wal: Wal, end: int) -> None:
    """Flush up to ``end`` as the test's leader, and wake as the leader's finish does."""
    group = wal._group_commit
    machine = group._machine
    wal._store.flush(machine.durable_lsn, end)
    with group._waking() as woken:
        if machine.flush_done(end, 0.0, writing_point=False):
            woken.extend(machine.wakeups())


def machine_state(wal: Wal) -> tuple[object, ...]:
    machine = wal._group_commit._machine
    return (
        machine.durable_lsn,
        machine.holder,
        machine.callers,
        machine.waiting,
        len(machine.parked),
        machine.syncs_requested,
        machine.wakeups_issued,
        machine.flushes,
        machine.broken,
    )


# -- the wake-ups taken in C ------------------------------------------------------------


class Tag:
    """A parked ticket that only tells itself apart."""

    def __init__(self, name: str) -> None:
        self.name = name

    def release(self) -> None:
        pass

    def __repr__(self) -> str:
        return self.name


def test_the_wakeups_taken_in_c_are_the_machines() -> None:
    # Catches: machine_wakeups (what a C follower and the C leader's finish
    # wake) differing from CommitMachine.wakeups, the rule: waking a caller its
    # flush did not cover, several at once, a caller before a waiting exclusive
    # section, anyone while a woken exclusive waiter has not asked again, or
    # not counting wakeups_issued.
    from mmwal._speedups import machine_wakeups

    chooser = random.Random(9)
    for trial in range(3000):
        machines = (CommitMachine(chooser.randrange(0, 60)), CommitMachine(0))
        holder = chooser.choice(list(Holder))
        targets: list[int | None] = [
            None if chooser.random() < 0.2 else chooser.randrange(0, 100)
            for _ in range(chooser.randrange(0, 6))
        ]
        exclusive = sum(target is None for target in targets) + chooser.choice([0, 0, 1])
        broken = OSError("broken") if chooser.random() < 0.1 else None
        closed = chooser.random() < 0.1
        tickets = [Tag(f"{trial}-{index}") for index in range(len(targets))]
        for machine in machines:
            machine.durable_lsn = machines[0].durable_lsn
            machine.holder = holder
            machine.exclusive_waiting = exclusive
            machine.waiting = len(targets) + 1
            machine.broken = broken
            machine.closed = closed
            machine.parked = list(zip(targets, tickets, strict=True))
        in_python, in_c = machines
        expected = in_python.wakeups()
        assert machine_wakeups(in_c, Holder.NONE) == expected, in_python
        assert in_c.parked == in_python.parked
        assert in_c.wakeups_issued == in_python.wakeups_issued == len(expected)


# -- followers that return -------------------------------------------------------------


def _followers_then_leader(wal: Wal, sync: Callable[[int], None]) -> tuple[object, ...]:
    """Park three followers a flush covers and one beyond it; flush; return the state.

    The one beyond is woken to lead when the chain of the three has run, and
    flushes its own record.
    """
    wal.append_and_sync(b"first")
    covered_end = 0
    take_token(wal)
    covered = []
    for index in range(3):
        covered_end = commit_end(wal, b"covered %d" % index)
        covered.append(Runner(f"covered-{index}", partial(sync, covered_end)).start())
        parked(wal, index + 1)
    beyond_end = commit_end(wal, b"beyond")
    beyond = Runner("beyond", partial(sync, beyond_end)).start()
    parked(wal, 4)
    flush_done(wal, covered_end)
    for runner in [*covered, beyond]:
        runner.result()
    assert wal.durable_lsn == beyond_end
    return machine_state(wal)


def test_followers_wait_and_return_in_c_leaving_the_python_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a C follower handed to the Python protocol (the wait would not
    # be in C at all), one that miscounts the machine (a request, a caller or
    # a waiter not given back, a ticket left parked), a chain that stops (a
    # follower not woken: it hangs), several woken at once (wakeups_issued),
    # or a follower beyond the flush not woken to lead the next one.
    with python_calls(monkeypatch) as handed:
        with Wal.open_segmented(tmp_path / "c", SEGMENT) as fast:
            in_c = _followers_then_leader(fast, fast._group_commit.sync_to)
        assert handed == []
    with Wal.open_segmented(tmp_path / "python", SEGMENT) as slow:
        in_python = _followers_then_leader(slow, slow._group_commit._sync_to)
    assert in_c == in_python
    _, holder, callers, waiting, parked_count, requested, woken, flushes, _ = in_c
    assert (holder, callers, waiting, parked_count) == (Holder.NONE, 0, 0, 0)
    # first + the test's leader + four followers; one wake-up each; first, the
    # test's flush (counted by flush_done), the follower who led.
    assert (requested, woken, flushes) == (6, 4, 3)


# -- followers that raise ----------------------------------------------------------------


def test_followers_parked_in_c_hear_a_failed_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a C follower that returns (reports its record durable) after the
    # flush that was to cover it failed, raises something else than
    # WalBrokenError chained to the flush's error, or is never woken (hangs).
    failure = OSError(errno.EIO, "injected flush failure")
    with python_calls(monkeypatch) as handed, Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"first")
        durable = wal.durable_lsn
        take_token(wal)
        followers = []
        for index in range(3):
            end = commit_end(wal, b"lost %d" % index)
            followers.append(Runner(f"follower-{index}", partial(wal._group_commit.sync_to, end)))
        for index, runner in enumerate(followers):
            runner.start()
            parked(wal, index + 1)
        with pytest.raises(WalBrokenError):
            wal._group_commit._flush_failed(failure)
        for runner in followers:
            runner.join()
            assert isinstance(runner.error, WalBrokenError)
            assert runner.error.__cause__ is failure
        assert handed == []
        machine = wal._group_commit._machine
        assert (machine.durable_lsn, machine.callers, machine.waiting) == (durable, 0, 0)
        assert machine.parked == []


def test_followers_parked_in_c_behind_a_close_answer_from_the_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a C follower told "closed" whose record the close had flushed
    # (durable comes first: an application would retry and write it twice), or
    # one that returns for a target the close did not make durable.
    path = tmp_path / "log"
    wal = Wal.open_segmented(path, SEGMENT)
    group = wal._group_commit
    with python_calls(monkeypatch) as handed:
        end = commit_end(wal, b"flushed by close")
        with group.exclusive():  # the token held, as close holds it
            durable = Runner("durable", partial(group.sync_to, end)).start()
            parked(wal, 1)
            never = Runner("never", partial(group.sync_to, end + 100)).start()
            parked(wal, 2)
            # What close does inside its section: flush, then close.
            wal._store.flush(group.durable_lsn, end)
            group.flushed_exclusively(end)
            group.mark_closed()
        durable.result()
        never.join()
        assert isinstance(never.error, WalClosedError)
        assert handed == []
    machine = group._machine
    assert (machine.callers, machine.waiting, machine.parked) == (0, 0, [])
    machine.closed = False  # the close above was the test's: let the real one run
    wal.close()
    with Wal.open_segmented(path, SEGMENT) as reopened:
        assert [record.data for record in reopened] == [b"flushed by close"]


def test_close_racing_a_woken_follower_answers_durable_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a woken C follower that trusts its wake-up (it was woken to lead)
    # instead of asking the machine again once it holds the commit lock, or
    # asks in the wrong order (closed before durable): here, between its
    # wake-up and its answer, an exclusive section flushed its record and
    # closed the log, so it must return.
    for sync_name in ("sync_to", "_sync_to"):
        wal = Wal.open_segmented(tmp_path / sync_name, SEGMENT)
        group = wal._group_commit
        machine = group._machine
        with python_calls(monkeypatch) as handed:
            end = commit_end(wal, b"record")
            take_token(wal)
            follower = Runner("follower", partial(getattr(group, sync_name), end)).start()
            parked(wal, 1)
            with group.lock:
                # The leader gives the token back unflushed: the follower is
                # woken to lead, and blocks on the commit lock held here.
                assert machine.flush_abandoned() is True
                tickets = machine.wakeups()
                assert len(tickets) == 1
                tickets[0].release()
                time.sleep(0.05)
                assert not follower.returned
                # A close runs to its end meanwhile: it flushed the record.
                assert machine.request_exclusive() is Action.LEAD
                wal._store.flush(machine.durable_lsn, end)
                machine.flushed_exclusively(end)
                machine.close()
                machine.end_exclusive()
            follower.result()
            assert (machine.callers, machine.waiting, machine.holder) == (0, 0, Holder.NONE)
            assert handed == ([] if sync_name == "sync_to" else [end])
        machine.closed = False  # the close above was the test's: let the real one run
        wal.close()


# -- a woken follower that leads ---------------------------------------------------------


def test_a_follower_woken_to_lead_in_c_yields_once_and_a_lone_commit_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a follower woken to lead in C that takes its range at once (the
    # thread that woke it, about to commit again, misses the flush: two
    # committing threads then alternate flushes of one commit each), or a lone
    # commit that yields (a syscall and a GIL hand-over on every lone commit).
    with python_calls(monkeypatch) as handed, Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        group = wal._group_commit
        wal.append_and_sync(b"first")
        wal.append_and_sync(b"second")
        assert group.leader_yields == 0
        take_token(wal)
        follower = Runner("follower", partial(wal.append_and_sync, b"third")).start()
        parked(wal, 1)
        group._flush_abandoned()  # the token is free: the follower is woken to lead
        follower.result()
        assert group.leader_yields == 1
        assert wal.durable_lsn == wal.next_lsn
        assert handed == []


class FailingFdatasync(Syscalls):
    """Real syscalls whose data flush fails on demand."""

    fail = False

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            raise OSError(errno.EIO, "injected fdatasync failure")
        super().fdatasync(fd)


def test_a_follower_woken_to_lead_whose_fdatasync_fails_breaks_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a follower woken to lead in C that reports success (or keeps the
    # token) after its fdatasync failed, or a later commit that succeeds.
    calls = FailingFdatasync()
    with python_calls(monkeypatch) as handed:
        with Wal.with_store(SegmentStore(tmp_path / "log", SEGMENT, syscalls=calls)) as wal:
            wal.append_and_sync(b"first")
            durable = wal.durable_lsn
            take_token(wal)
            follower = Runner("follower", partial(wal.append_and_sync, b"lost")).start()
            parked(wal, 1)
            calls.fail = True
            wal._group_commit._flush_abandoned()  # wakes the follower to lead
            follower.join()
            assert isinstance(follower.error, WalBrokenError)
            assert isinstance(follower.error.__cause__, OSError)
            machine = wal._group_commit._machine
            assert (machine.durable_lsn, machine.holder, machine.callers) == (
                durable,
                Holder.NONE,
                0,
            )
            calls.fail = False
            with pytest.raises(WalBrokenError):
                wal.append_and_sync(b"after")
        assert handed == []


# -- a signal in the wait ---------------------------------------------------------------


class WaitInterruptedError(Exception):
    """Raised by a signal handler in the main thread while it waits in C."""


def test_a_signal_interrupts_the_wait_in_c_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a wait in C that a signal cannot interrupt (the main thread
    # would only leave when the flush woke it: the exception comes late and the
    # assertion on the machine's counts fails), a ticket left parked by the
    # thread that left (it swallows the wake-up and the follower behind it
    # hangs), or counts not given back.
    with python_calls(monkeypatch) as handed, Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_and_sync(b"first")
        machine = wal._group_commit._machine
        take_token(wal)
        end = commit_end(wal, b"second")
        behind: list[Runner[None]] = []
        counts: list[tuple[int, int, int]] = []

        def park_another_then_interrupt() -> None:
            parked(wal, 1)  # the main thread waits
            behind.append(Runner("behind", partial(wal._group_commit.sync_to, end)).start())
            parked(wal, 2)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            # A wait the signal cannot interrupt: free it after a while, so the
            # test fails on its assertions instead of hanging for ever.
            deadline = time.monotonic() + 5.0
            while machine.callers > 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            if machine.callers > 2:
                flush_done(wal, end)

        def interrupt(signum: int, frame: FrameType | None) -> None:
            counts.append((machine.callers, machine.waiting, len(machine.parked)))
            raise WaitInterruptedError

        previous = signal.signal(signal.SIGUSR1, interrupt)
        try:
            helper = Runner("helper", park_another_then_interrupt).start()
            with pytest.raises(WaitInterruptedError):
                wal._group_commit.sync_to(end)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        helper.result()
        # The handler ran inside the wait: both still parked, then the main
        # thread left as if it had never waited.
        assert counts == [(3, 2, 2)]
        assert (machine.callers, machine.waiting, len(machine.parked)) == (2, 1, 1)
        flush_done(wal, end)
        behind[0].result()
        assert (machine.callers, machine.waiting, machine.parked) == (0, 0, [])
        assert handed == []
