"""``Reservations``: the end of the log, the space appends reserve, and their copies.

The log's end (``next_lsn``) moves here: a frame gets its LSN by reserving room
at the end, is copied into the store, and counts as written once the copy is
done. This object also holds what the append fast path reads (the store's piece
that holds the end and ``fast_limit``) and the followers waiting for the written
end to move.

Rules this module keeps:

- ``lock`` (the reservation lock, a bare ``threading.Lock`` the append fast path
  takes directly) guards ``next_lsn``, ``fast_limit``, ``piece``, ``piece_base``,
  ``in_flight``, ``hole``, ``closing``, ``appends`` and ``bytes_dropped``.
- The fields the append fast path reads and moves live in ``ReservationsBase``:
  with the C extension, C members its ``Appender`` (``_appendpath.c``) reaches
  with no Python call; without it, plain slots. Python reads and writes them the
  same either way. ``lock`` is then a ``_speedups.ReservationLock`` (``_lock.c``),
  which behaves as a ``threading.Lock`` (Conditions over it, a blocking acquire
  that lets the GIL go and that a signal interrupts) and which the fast path
  tries and lets go in C.
- LSNs are reserved in one short critical section; a frame is built before it
  and, when larger than ``INLINE_COPY_LIMIT``, copied after it: then it is in
  ``in_flight`` until its copy ends, and ``copies_done`` (a condition over
  ``lock``) is notified when it leaves. Those who wait on ``copies_done``: a
  flush leader (for the copies below its target) and ``GroupCommit.exclusive``
  (for all of them). The C fast path builds its frames in the critical section,
  straight into ``piece``, and copies a batch there whatever its size: it holds
  the GIL from the reservation to the publication, so no thread could run in
  between anyway.
- ``written_lsn()`` (the contiguous-written watermark) never passes a byte that
  is not copied yet: not the lowest copy in flight, not a copy that failed
  (``hole``). Whoever reads the log (iteration, sync, followers) stops there.
- ``fast_limit`` is 0 whenever appends must take the slow path (closing, broken,
  no piece yet, just truncated); only ``place`` raises it again, after the log's
  ``check_writable`` passed in the same critical section. Breaking the log and
  starting to close it zero it in the critical section that sets their flag.
- Over a store that does not declare ``Store.writes_into_pieces`` (read once,
  here at construction) ``fast_limit`` stays 0: every frame goes through
  ``Store.write``, never into a piece.
- A failed copy breaks the log with ``lock`` held (``GroupCommit.break_locked``).
- Lock order: ``lock`` before the commit lock (``GroupCommit.lock``), and ``lock``
  before ``arrivals``; nothing is taken while ``arrivals`` is held.
- Followers announce themselves in ``followers_waiting`` under ``arrivals`` and
  then read the end; whoever moves an end (appends here, flushes, truncations)
  moves it first, then reads ``followers_waiting`` and notifies ``arrivals`` only
  when someone waits (close notifies always). Either the follower sees the new
  end or the one moving it sees the follower.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._format import SPEEDUPS
from ._store import Store

if TYPE_CHECKING:
    from ._commit import GroupCommit

__all__ = ["INLINE_COPY_LIMIT", "Reservations", "ReservationsBase"]

# Frames up to this size are copied while the reservation lock is held: for them
# a second lock round trip to publish completion costs more than the copy.
INLINE_COPY_LIMIT = 64 * 1024

# How often a thread that finds the reservation lock taken yields before it
# blocks on it (see ``Reservations.acquire_contended``).
_SPINS_BEFORE_BLOCKING = 64


if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import ReservationLock, ReservationsBase
else:
    ReservationLock = threading.Lock

    class ReservationsBase:
        """The fields the append fast path reads and moves (C members with the extension)."""

        __slots__ = (
            "appends",
            "fast_limit",
            "followers_waiting",
            "lock",
            "next_lsn",
            "piece",
            "piece_base",
        )


@contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release an already acquired ``lock`` when the block ends."""
    try:
        yield
    finally:
        lock.release()


class Reservations(ReservationsBase):
    """The end of the log: reserves room for frames and tracks their copies."""

    __slots__ = (
        "_store",
        "_writes_into_pieces",
        "arrivals",
        "bytes_dropped",
        "closing",
        "copies_done",
        "hole",
        "in_flight",
    )

    def __init__(self, store: Store, end: int) -> None:
        """Start at ``end``, the end recovery found; the fast path stays shut."""
        self._store = store
        self._writes_into_pieces = bool(store.writes_into_pieces)
        # A bare lock, not a Condition: the append path takes it directly, in C
        # (with the extension a ReservationLock, a threading.Lock it can try and
        # let go without a Python call).
        self.lock = ReservationLock()
        self.copies_done = threading.Condition(self.lock)
        self.next_lsn = end
        # Copies running outside the lock: their LSN and end.
        self.in_flight: dict[int, int] = {}
        # The LSN of a copy that failed: the watermark never passes it.
        self.hole: int | None = None
        # Set once, by the first close: no reservation is made from then on.
        self.closing = False
        self.appends = 0
        self.bytes_dropped = 0
        # The append fast path copies a frame straight into the store's piece that
        # holds the end, while the frame fits below ``fast_limit``: the end of that
        # piece while the log accepts appends, 0 when it must take the slow path.
        self.piece = b""
        self.piece_base = 0
        self.fast_limit = 0
        # Followers on the log's handle wait on ``arrivals``; appends, flushes,
        # truncations and close notify it only while one is waiting.
        self.arrivals = threading.Condition(threading.Lock())
        self.followers_waiting = 0

    def acquire_contended(self) -> None:
        """Take ``lock`` when another thread holds it, without starting a convoy.

        A thread that blocks on the lock gives up the GIL; when the holder lets the
        lock go, the blocked thread owns it but must wait for the GIL, which the
        holder, running on, needs for its next append, and blocks in turn: from
        then on every append costs two context switches (measured: appends from 4
        threads fell to a fifth of one thread's rate). Yielding instead, a few
        times, hands the GIL to a holder that is waiting for it; only a holder
        that keeps the lock long (growing the log) makes the waiters block.
        """
        lock = self.lock
        for _ in range(_SPINS_BEFORE_BLOCKING):
            os.sched_yield()
            if lock.acquire(False):
                return
        lock.acquire()

    def place(self, frame: bytes, count: int, log: GroupCommit) -> int:
        """Reserve room for ``frame``, copy it in, publish it; return its LSN.

        ``frame`` holds ``count`` records. ``log`` refuses a log that takes no
        writes and is broken by a copy that fails.
        """
        size = len(frame)
        lock = self.lock
        if not lock.acquire(False):
            self.acquire_contended()
        with _held(lock):
            log.check_writable()
            lsn = self.next_lsn
            end = lsn + size
            store = self._store
            if end > store.capacity:
                # On OSError nothing was reserved: the log is unchanged and usable.
                store.ensure_capacity(end)
            if size <= INLINE_COPY_LIMIT:
                try:
                    store.write(lsn, frame)
                except BaseException as error:
                    # Nothing was reserved yet, so no hole; but the mapping may hold
                    # part of the frame past the end, which only recovery clears.
                    log.break_locked(error, "a copy into the log")
                    raise
            else:
                self.in_flight[lsn] = end
            self.appends += count
            self.next_lsn = end
            if end < store.capacity and self._writes_into_pieces:
                self.piece, self.piece_base, self.fast_limit = store.piece(end)
            else:
                self.fast_limit = 0
            if size <= INLINE_COPY_LIMIT:
                if self.followers_waiting:
                    self.wake_followers()
                return lsn
        try:
            store.write(lsn, frame)
        except BaseException as error:
            with lock:
                self.hole = lsn if self.hole is None else min(self.hole, lsn)
                del self.in_flight[lsn]
                log.break_locked(error, "a copy into the log")
                self.copies_done.notify_all()
            raise
        with lock:
            del self.in_flight[lsn]
            self.copies_done.notify_all()
            if self.followers_waiting:
                self.wake_followers()
        return lsn

    def written_lsn(self) -> int:
        """Return the contiguous-written watermark; call with ``lock`` held.

        Every byte below it is copied: the lowest copy still in flight, or a copy
        that failed, bounds it.
        """
        low = self.next_lsn if self.hole is None else self.hole
        return min(low, *self.in_flight) if self.in_flight else low

    def wake_followers(self) -> None:
        """Wake every follower waiting on ``arrivals``."""
        with self.arrivals:
            self.arrivals.notify_all()
