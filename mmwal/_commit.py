"""``GroupCommit``: the durable end, the leader/follower flush protocol, fail-stop.

Threads that ask for durability share flushes: the first finds no flush running
and becomes the leader, the rest wait as followers and return without flushing
again when the leader's flush covered them. A flush that fails breaks the log for
good.

Rules this module keeps:

- ``lock`` (the commit lock, a ``threading.Condition``) guards ``flushing``, the
  counters and every wait here. Whoever changes what a waiter waits for
  (``durable_lsn``, ``broken``, ``flushing``, ``closed``) notifies ``lock``
  afterwards: at once, or for a change made inside ``exclusive``, when
  ``exclusive`` hands the token back.
- ``flushing`` is the one-flusher token: a leader, a truncation and close (both
  through ``exclusive``) each hold it, so no two of them run at once. Whoever
  sets it clears it and notifies, on every path out.
- ``durable_lsn`` only grows under ``lock``, after a flush that covered it
  returned without error. Otherwise only the token's holder sets it (a truncation
  inside ``exclusive``), or, on a read-only handle, ``refresh`` under the
  reservation lock (the writer's published durable end).
- Waiters check, in this order: their target durable (then they return, whatever
  happened since), broken (``WalBrokenError``), closed (``WalClosedError``).
- A failed flush breaks the log for good (fail-stop): every later append and sync
  raises ``WalBrokenError``. No flush is retried. ``broken`` is set only by
  ``break_locked``, with the reservation lock held, ``fast_limit`` zeroed first
  and then under ``lock``, so no append slips past on the fast path.
- ``closed`` is set once, by close, inside ``exclusive``.
- Lock order: the reservation lock (``Reservations.lock``) before ``lock``. The
  leader takes the reservation lock without ``lock`` to wait for the copies in
  flight below its target (``Reservations.copies_done``, notified as each copy
  ends) and to read the written watermark, flushes holding neither lock, and
  after the flush wakes the followers waiting on the handle
  (``Reservations.wake_followers``), again holding neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ._errors import WalBrokenError, WalClosedError, WalReadOnlyError
from ._published import EndsPublisher
from ._recovery_point import PointKeeper
from ._reservations import Reservations
from ._store import Store

__all__ = ["GroupCommit"]


class GroupCommit:
    """The durable end of a log and the protocol that moves it."""

    __slots__ = (
        "_points",
        "_readonly",
        "_reservations",
        "_store",
        "broken",
        "broken_by",
        "closed",
        "durable_lsn",
        "flush_seconds",
        "flushes",
        "flushing",
        "lock",
        "publisher",
        "sync_callers",
        "syncs_requested",
    )

    def __init__(
        self, store: Store, reservations: Reservations, points: PointKeeper, durable_lsn: int
    ) -> None:
        """Start with ``durable_lsn`` durable (recovery made it so) and no flush running."""
        self._store = store
        self._reservations = reservations
        self._points = points
        # A read-only handle flushes nothing: what it sees is the writer's to flush.
        self._readonly = not store.writable
        self.lock = threading.Condition(threading.Lock())
        self.durable_lsn = durable_lsn
        self.flushing = False
        self.closed = False
        # Fail-stop state: the error that broke the log and what it interrupted.
        self.broken: BaseException | None = None
        self.broken_by = ""
        #: Publishes the ends to followers in other processes (a writer with a state file).
        self.publisher: EndsPublisher | None = None
        self.syncs_requested = 0
        # Threads inside sync right now: the leader gives way to the others before
        # it flushes only when there are others.
        self.sync_callers = 0
        self.flushes = 0
        self.flush_seconds = 0.0

    def check_writable(self) -> None:
        """Refuse a log that is closing, broken or read-only.

        Call with the reservation lock held, or inside ``exclusive``.
        """
        if self.closed or self._reservations.closing:
            raise WalClosedError()
        if self.broken is not None:
            self.raise_broken()
        if not self._store.writable:
            raise WalReadOnlyError(self._store.location)

    def break_locked(self, error: BaseException, operation: str) -> None:
        """Break the log for good; call with the reservation lock held.

        Keeps the rule the append fast path relies on: ``fast_limit`` is 0 from the
        moment ``broken`` is set, in the same critical section.
        """
        self._reservations.fast_limit = 0
        with self.lock:
            if self.broken is None:
                self.broken = error
                self.broken_by = operation
            self.lock.notify_all()

    def raise_broken(self) -> None:
        """Raise ``WalBrokenError`` naming what broke the log, chained to its cause."""
        raise WalBrokenError(self.broken_by) from self.broken

    def publish(self, written: int) -> None:
        """Publish the ends for followers in other processes (no-op without a state file)."""
        if self.publisher is not None:
            self.publisher.publish(
                written=written, durable=self.durable_lsn, head=self._store.head_lsn
            )

    def sync_to(self, target: int) -> None:
        """Return once every byte below ``target`` is durable (group commit)."""
        if self._readonly:
            return  # read-only: what refresh found is the writer's to flush
        lock = self.lock
        with lock:
            self.syncs_requested += 1
            self.sync_callers += 1
        try:
            self._await_durable(target)
        finally:
            with lock:
                self.sync_callers -= 1

    def _await_durable(self, target: int) -> None:
        """Return once ``target`` is durable: as a follower, or as the leader."""
        lock = self.lock
        with lock:
            while True:
                # Durable first: a commit whose record is durable never raises, even
                # when a close flushed it or a later flush failed meanwhile. Then
                # broken before closed: a waiter whose flush failed hears of the
                # failure even when a close finished meanwhile.
                if self.durable_lsn >= target:
                    return
                if self.broken is not None:
                    self.raise_broken()
                if self.closed:
                    raise WalClosedError()
                if not self.flushing:
                    self.flushing = True
                    break
                lock.wait()
        self._lead_flush(target)

    def _lead_flush(self, target: int) -> None:
        """Flush as the one leader: up to the watermark, at least up to ``target``."""
        reservations = self._reservations
        try:
            if self.sync_callers > 1:
                # Other threads are committing too: let those a previous flush
                # just released append before this flush takes its range, so one
                # flush covers their commits as well. (Alone, a thread never
                # waits: sleep(0) costs a timer slack, tens of microseconds.)
                time.sleep(0)
            with reservations.lock:
                while (
                    reservations.in_flight
                    and min(reservations.in_flight) < target
                    and not self.broken
                ):
                    reservations.copies_done.wait()
                if self.broken is not None:
                    self.raise_broken()
                flush_to = reservations.written_lsn()
            start = self.durable_lsn
            began = time.perf_counter()
            self._store.flush(start, flush_to)
            elapsed = time.perf_counter() - began
            # Still the one flusher, so no truncation or close runs meanwhile.
            self._store.release(flush_to)
        except OSError as error:
            with reservations.lock:
                self.break_locked(error, "a flush")
            with self.lock:
                self.flushing = False
                self.lock.notify_all()
            raise WalBrokenError("a flush") from error
        except BaseException:
            with self.lock:
                self.flushing = False
                self.lock.notify_all()
            raise
        with self.lock:
            self.durable_lsn = max(self.durable_lsn, flush_to)
            self.flushes += 1
            self.flush_seconds += elapsed
            self.publish(flush_to)
            # The waiters this flush covered return now; the leader stays the one
            # flusher (no truncation or close) while it may write a recovery point.
            self.lock.notify_all()
        try:
            self._points.flushed(start, flush_to)
        finally:
            with self.lock:
                self.flushing = False
                self.lock.notify_all()
        if reservations.followers_waiting:
            reservations.wake_followers()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the log still: no flush running, no copy in flight, no new reservation."""
        with self.lock:
            while self.flushing:
                self.lock.wait()
            self.flushing = True
        reservations = self._reservations
        try:
            with reservations.lock:
                while reservations.in_flight:
                    reservations.copies_done.wait()
                yield
        finally:
            with self.lock:
                self.flushing = False
                self.lock.notify_all()
