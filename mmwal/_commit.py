"""``GroupCommit``: the durable end, the leader/follower flush protocol, fail-stop.

Threads that ask for durability share flushes: the first finds no flush running
and becomes the leader, the rest wait as followers and return without flushing
again when the leader's flush covered them. A flush that fails breaks the log for
good.

The decisions are ``CommitMachine``'s (``_commit_machine``: the state, the rules
for who returns, raises, leads or waits, and who must be woken); this object
holds the lock, asks the machine once per critical section, and waits, wakes
and flushes as it answers. A lone commit takes the commit lock twice: once to
count itself and take the token, once to move the durable end and give the
token back (and a third time only when a recovery point is due).

Rules this module keeps:

- ``_mutex`` (the commit lock) guards the machine: every read that decides and
  every transition is made holding it. A thread told to wait parks a ticket of
  its own (a lock it holds) in the machine and blocks acquiring it again,
  without the commit lock.
  Whoever makes a transition that answers "wake" takes the tickets the
  machine's ``wakeups`` names before letting the commit lock go, and so does a
  woken thread that goes on (the next link of the chain); nobody wakes anyone
  when nobody waits. It releases them just after letting the lock go
  (``_waking``; ``release_tickets``, which with the extension lets the GIL go
  for the releases), so the woken thread finds the lock and the GIL free
  instead of waking only to wait for them again (measured: 8 threads on tmpfs
  committed 1.47x as fast as with the tickets released holding both). Taken
  out of the machine under the lock, a ticket is its owner's alone: its owner
  cannot run before the release, and one that leaves its wait meanwhile (an
  exception) finds its ticket gone from ``parked`` and passes the wake-up on,
  so the late release changes no decision.
- The token (``CommitMachine.holder``) is the one-flusher token: a leader, a
  truncation and close (both through ``exclusive``) each hold it, so no two of
  them run at once. Whoever takes it gives it back, on every path out.
- ``durable_lsn`` only grows after a flush that covered it returned without
  error. Otherwise only the token's holder moves it (a truncation inside
  ``exclusive``), or, on a read-only handle, ``refresh`` under the reservation
  lock (the writer's published durable end).
- Waiters are answered in this order: their target durable (then they return,
  whatever happened since), broken (``WalBrokenError``), closed
  (``WalClosedError``).
- A failed flush breaks the log for good (fail-stop): every later append and sync
  raises ``WalBrokenError``. No flush is retried. ``broken`` is set only by
  ``break_locked`` and a failed flush, with the reservation lock held,
  ``fast_limit`` zeroed first and then under the commit lock, so no append
  slips past on the fast path.
- ``closed`` is set once, by close, inside ``exclusive``.
- The ends are published to other processes and the recovery point is noted by
  the leader while it holds the token (so no truncation or close interleaves),
  outside the commit lock.
- Lock order: the reservation lock (``Reservations.lock``) before the commit
  lock. The leader takes the reservation lock without the commit lock to wait
  for the copies in flight below its target (``Reservations.copies_done``,
  notified as each copy ends) and to read the written watermark, flushes
  holding neither lock, and after the flush wakes the followers waiting on the
  handle (``Reservations.wake_followers``), again holding neither.
- With the extension, ``sync_to`` is ``GroupCommitBase``'s in C
  (``_commitpath.c``, ``_commitwait.c``) and keeps every rule above for the
  cases it takes, on a log neither broken nor closed: a target already durable
  (answered at once); a commit that leads (token free, no exclusive section
  waiting), alone or with others inside a sync or waiting, whose store answers
  a flush plan; and a commit told to wait, which parks, is woken, asks again,
  wakes the next link and returns, raises (through ``raise_broken`` and
  ``_raise_closed``) or leads, as ``_park`` and ``_sync_to`` do. The leader
  yields once as ``_lead_flush`` does when others are inside a sync or it was
  woken to lead. It makes ``request``'s, ``park``'s, ``recheck``'s,
  ``unpark``'s, ``abandon_wait``'s and a leader's ``flush_done``'s transitions
  itself and takes wake-ups with ``machine_wakeups`` (``wakeups``'s twin), so a
  change to any of them in ``CommitMachine`` is mirrored there
  (``tests/test_commit_fast_path.py`` and ``tests/test_commit_wait.py`` hold
  them equal); it releases tickets as ``_waking`` does. Every other case, and
  every failure, comes to the Python methods here (``_sync_to``; after its
  yield, ``_flush_as_leader``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn, Protocol

from ._commit_machine import Action, CommitMachine, Holder, Ticket
from ._errors import WalBrokenError, WalClosedError, WalReadOnlyError
from ._format import SPEEDUPS
from ._published import EndsPublisher
from ._recovery_point import PointKeeper
from ._reservations import Reservations
from ._store import Store

__all__ = ["GroupCommit", "ReservationLock", "release_tickets"]


_RETURN = Action.RETURN
_LEAD = Action.LEAD
_WAIT = Action.WAIT
_RAISE_BROKEN = Action.RAISE_BROKEN


if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import GroupCommitBase, ReservationLock, release_tickets
else:
    ReservationLock = threading.Lock

    def release_tickets(tickets: list[Ticket], /) -> None:
        """Release each ticket (the extension's lets the GIL go for it)."""
        for ticket in tickets:
            ticket.release()

    class GroupCommitBase:
        """What the flush reads (C members with the extension) and ``sync_to``."""

        __slots__ = (
            "_holder_leader",
            "_holder_none",
            "_holder_point",
            "_machine",
            "_mutex",
            "_points",
            "_readonly",
            "_reservations",
            "_store",
            "leader_yields",
            "publisher",
        )

        def sync_to(self, target: int) -> None:
            """Return once every byte below ``target`` is durable (group commit)."""
            self._sync_to(target)


class _Lock(Protocol):
    """What ``_take_back`` needs of the commit lock."""

    def acquire(self) -> bool: ...


def _take_back(mutex: _Lock, interrupted: BaseException | None) -> BaseException | None:
    """Acquire ``mutex`` for sure; return ``interrupted``, or what interrupted the acquire.

    A signal handler's exception ends a blocking acquire without the lock: it
    is kept (the first one wins) and the acquire tried again, so the caller
    holds the lock when it raises. The lock is held briefly by whoever holds it
    (a transition), so the retry does not wait long.
    """
    while True:
        try:
            mutex.acquire()
        except BaseException as error:  # noqa: BLE001 - raised by the caller once it holds the lock
            if interrupted is None:
                interrupted = error
        else:
            return interrupted


class GroupCommit(GroupCommitBase):
    """The durable end of a log and the protocol that moves it."""

    __slots__ = ()

    def __init__(
        self, store: Store, reservations: Reservations, points: PointKeeper, durable_lsn: int
    ) -> None:
        """Start with ``durable_lsn`` durable (recovery made it so) and no flush running."""
        self._store = store
        self._reservations = reservations
        self._points = points
        # A read-only handle flushes nothing: what it sees is the writer's to flush.
        self._readonly = not store.writable
        # With the extension a ReservationLock (a threading.Lock the lone
        # commit's path in C tries and lets go without a Python call).
        self._mutex = ReservationLock()
        self._machine = CommitMachine(durable_lsn)
        self._holder_none = Holder.NONE
        self._holder_leader = Holder.LEADER
        self._holder_point = Holder.POINT
        #: How many times a leader let the GIL go once before taking its range.
        self.leader_yields = 0
        #: Publishes the ends to followers in other processes (a writer with a state file).
        self.publisher: EndsPublisher | None = None

    # -- the state, read (each field is one attribute: no lock needed to read it) --

    @property
    def lock(self) -> threading.Lock:
        """The commit lock (after the reservation lock in the lock order)."""
        return self._mutex

    @property
    def durable_lsn(self) -> int:
        """The end of what the last completed flush covered."""
        return self._machine.durable_lsn

    @property
    def broken(self) -> BaseException | None:
        """The error that broke the log, or None."""
        return self._machine.broken

    @property
    def closed(self) -> bool:
        """Whether close has run (set inside ``exclusive``)."""
        return self._machine.closed

    @property
    def syncs_requested(self) -> int:
        """How many syncs were asked for (read holding ``lock`` for a consistent set)."""
        return self._machine.syncs_requested

    @property
    def flushes(self) -> int:
        """How many flushes a leader completed."""
        return self._machine.flushes

    @property
    def flush_seconds(self) -> float:
        """The time the leaders' flushes took, in seconds."""
        return self._machine.flush_seconds

    def check_writable(self) -> None:
        """Refuse a log that is closing, broken or read-only.

        Call with the reservation lock held, or inside ``exclusive``.
        """
        machine = self._machine
        if machine.closed or self._reservations.closing:
            raise WalClosedError()
        if machine.broken is not None:
            self.raise_broken()
        if not self._store.writable:
            raise WalReadOnlyError(self._store.location)

    def break_locked(self, error: BaseException, operation: str) -> None:
        """Break the log for good; call with the reservation lock held.

        Keeps the rule the append fast path relies on: ``fast_limit`` is 0 from the
        moment ``broken`` is set, in the same critical section.
        """
        self._reservations.fast_limit = 0
        with self._waking() as woken:
            if self._machine.break_(error, operation):
                woken.extend(self._machine.wakeups())

    def raise_broken(self) -> None:
        """Raise ``WalBrokenError`` naming what broke the log, chained to its cause."""
        machine = self._machine
        raise WalBrokenError(machine.broken_by) from machine.broken

    def publish(self, written: int) -> None:
        """Publish the ends for followers in other processes (no-op without a state file)."""
        if self.publisher is not None:
            self.publisher.publish(
                written=written, durable=self._machine.durable_lsn, head=self._store.head_lsn
            )

    # -- moves of the durable end by others than a leader ----------------------------

    def truncated(self, end: int) -> None:
        """Make ``end`` the durable end after a truncation; call inside ``exclusive``."""
        with self._mutex:
            self._machine.truncated(end)

    def flushed_exclusively(self, end: int) -> None:
        """Note a flush made inside ``exclusive`` that covered everything below ``end``."""
        with self._mutex:
            self._machine.flushed_exclusively(end)

    def mark_closed(self) -> None:
        """Close: later syncs whose target is not durable raise; call inside ``exclusive``."""
        with self._mutex:
            self._machine.close()

    def refreshed(self, durable: int) -> None:
        """Take the writer's published durable end (a read-only handle, which never flushes)."""
        with self._mutex:
            self._machine.refreshed(durable)

    # -- group commit ----------------------------------------------------------------

    def _sync_to(self, target: int) -> None:
        """Return once every byte below ``target`` is durable: the whole protocol.

        ``sync_to`` (the base's: in C with the extension) takes a lone leader's
        path itself and comes here for every other case.
        """
        if self._readonly:
            return  # read-only: what refresh found is the writer's to flush
        machine = self._machine
        woken: list[Ticket] = []
        waited = False
        try:
            with self._mutex:
                action = machine.request(target)
                if action is _WAIT:
                    waited = True
                    action = self._park(target, woken)
        finally:
            if woken:
                release_tickets(woken)
        if action is _RETURN:
            return
        if action is _LEAD:
            self._lead_flush(target, waited=waited)
            return
        if action is _RAISE_BROKEN:
            self.raise_broken()
        self._raise_closed()

    def _raise_closed(self) -> NoReturn:
        """Raise ``WalClosedError`` (a waiter answered closed, here or in C)."""
        raise WalClosedError()

    def _lead_flush(self, target: int, *, waited: bool = False) -> None:
        """Flush as the one leader: up to the watermark, at least up to ``target``.

        ``waited``: this thread waited and was woken to take the token.
        """
        if waited or self._machine.callers > 1:
            # Other threads are committing too: let the GIL go once, so that
            # the threads a previous flush released (woken one by one, each
            # waiting for the GIL) append before this flush takes its range
            # and one flush covers their commits as well. sched_yield, not
            # sleep(0): a sleep costs a timer slack (~60 µs) per flush.
            # A thread woken to lead yields too, though the one that woke it
            # is no longer a caller: that one is likely to commit again at
            # once, and woken with the GIL free this thread would otherwise
            # take its range first (2 threads on disk: 1.23 commits per flush
            # without this yield, 1.60 with it). Alone, a thread never yields.
            self.leader_yields += 1
            try:
                os.sched_yield()
            except BaseException:
                self._flush_abandoned()
                raise
        self._flush_as_leader(target)

    def _flush_as_leader(self, target: int) -> None:
        """Flush as the one leader, its yield done (``sync_to`` in C comes here after it)."""
        machine = self._machine
        reservations = self._reservations
        store = self._store
        try:
            with reservations.lock:
                in_flight = reservations.in_flight
                while in_flight and min(in_flight) < target and machine.broken is None:
                    reservations.copies_done.wait()
                if machine.broken is not None:
                    self.raise_broken()
                flush_to = reservations.written_lsn()
            start = machine.durable_lsn
            began = time.perf_counter()
            store.flush(start, flush_to)
            flushed_at = time.perf_counter()
            # Still the one flusher, so no truncation or close runs meanwhile.
            store.release(flush_to)
        except OSError as error:
            self._flush_failed(error)
        except BaseException:
            self._flush_abandoned()
            raise
        self._finish_flush(start, flush_to, began, flushed_at)
        if reservations.followers_waiting:
            reservations.wake_followers()

    def _flush_failed(self, error: OSError) -> NoReturn:
        """Break the log for good, the leader's flush having failed; raise ``WalBrokenError``."""
        reservations = self._reservations
        with reservations.lock:
            reservations.fast_limit = 0
            with self._waking() as woken:
                if self._machine.flush_failed(error, "a flush"):
                    woken.extend(self._machine.wakeups())
        raise WalBrokenError("a flush") from error

    def _flush_abandoned(self) -> None:
        """Give the token back: the leader stops with no flush outcome (refused, interrupted)."""
        with self._waking() as woken:
            if self._machine.flush_abandoned():
                woken.extend(self._machine.wakeups())

    def _finish_flush(self, start: int, flush_to: int, began: float, flushed_at: float) -> None:
        """Publish, move the durable end, give the token back: the leader's flush returned.

        Every step here runs after the flush's sleep, with cold caches: each one
        counts in a lone commit's latency, so there are few.
        """
        machine = self._machine
        # Still the token's holder: no truncation or close publishes, closes the
        # state file or moves the point meanwhile. Both run outside the commit
        # lock. ``flush_to`` is past the durable end (a leader flushes only
        # when its target is not durable), so the ends moved.
        writing_point = False
        try:
            publisher = self.publisher
            if publisher is not None:
                publisher.flushed(flush_to, self._store.head_lsn)
            writing_point = self._points.note_flushed(start, flush_to, flushed_at)
        finally:
            with self._waking() as woken:
                if machine.flush_done(flush_to, flushed_at - began, writing_point=writing_point):
                    woken.extend(machine.wakeups())
        if writing_point:
            self._write_point(start, flush_to)

    def _write_point(self, start: int, flush_to: int) -> None:
        """Write a recovery point at ``flush_to``, then give the token back."""
        # The waiters the flush covered have returned; the leader stays the one
        # flusher (no truncation or close) while it writes the point.
        try:
            self._points.save(start, flush_to)
        finally:
            with self._waking() as woken:
                if self._machine.point_written():
                    woken.extend(self._machine.wakeups())

    @contextmanager
    def _waking(self) -> Iterator[list[Ticket]]:
        """Hold the commit lock; release the tickets put in the list once it is let go."""
        woken: list[Ticket] = []
        try:
            with self._mutex:
                yield woken
        finally:
            if woken:
                release_tickets(woken)

    def _park(self, target: int | None, woken: list[Ticket]) -> Action:
        """Wait until woken and decide again, until told something else than wait.

        Called holding the commit lock, just after the machine answered ``WAIT``
        for ``target`` (None: the exclusive section); returns holding it, with
        the tickets to wake next (the chain) added to ``woken``, for the caller
        to release once it lets the lock go. The ticket is a lock this thread
        holds: whoever wakes it releases it, and acquiring it again (which lets
        the GIL go while it blocks) is the wait.
        """
        machine = self._machine
        mutex = self._mutex
        ticket = ReservationLock()
        ticket.acquire()
        while True:
            machine.park(ticket, target)
            mutex.release()
            interrupted: BaseException | None = None
            try:
                ticket.acquire()
            except BaseException as error:  # noqa: BLE001 - a signal handler's, during the wait
                interrupted = error
            # The commit lock comes back whatever a handler raises meanwhile:
            # the machine changes only under it, and the caller lets it go.
            interrupted = _take_back(mutex, interrupted)
            if interrupted is not None:
                # Leave the machine as if this thread had never waited; a wake-up
                # it already got goes to the next one.
                machine.unpark(ticket)
                if target is None:
                    machine.abandon_exclusive_wait()
                else:
                    machine.abandon_wait()
                if machine.parked:
                    woken.extend(machine.wakeups())
                raise interrupted
            action = machine.recheck_exclusive() if target is None else machine.recheck(target)
            if action is not _WAIT:
                if machine.parked:
                    woken.extend(machine.wakeups())  # the next link of the chain
                return action

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the log still: no flush running, no copy in flight, no new reservation."""
        machine = self._machine
        with self._waking() as woken:
            if machine.request_exclusive() is _WAIT:
                self._park(None, woken)
        reservations = self._reservations
        try:
            with reservations.lock:
                while reservations.in_flight:
                    reservations.copies_done.wait()
                yield
        finally:
            with self._waking() as woken:
                if machine.end_exclusive():
                    woken.extend(machine.wakeups())
