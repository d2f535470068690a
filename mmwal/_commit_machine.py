"""``CommitMachine``: the group commit's decisions, with no lock, thread, I/O or clock.

``GroupCommit`` holds the commit lock, calls one method of this machine per
critical section, and does what it answers: return, raise, lead a flush, park a
ticket and wait, wake the tickets it names. The machine only keeps the state
and applies the rules, so every transition can be driven and checked without
threads (as h11 does for HTTP): ``tests/test_commit_machine.py``.

State: ``durable_lsn``; the one-flusher token's ``holder`` (nobody, a leader, a
leader writing a recovery point, or an exclusive section: a truncation or
close); ``broken`` (and ``broken_by``); ``closed``; ``callers`` (threads inside
a sync, waiting or leading); ``waiting`` (threads told to wait that have not
asked again: callers and would-be exclusive holders) and ``parked`` (the
tickets of those not woken yet, in the order they parked, each with the target
it waits for, None for an exclusive section). The fields live in
``CommitMachineBase``: C members with the extension, so that the commit in C
(``_commitpath.c``, ``_commitwait.c``) reads them and makes ``request``'s,
``flush_done``'s, ``park``'s, ``recheck``'s and ``wakeups``' transitions for a
leader and a follower without a Python call (``tests/test_commit_fast_path.py``
and ``tests/test_commit_wait.py`` prove them equal to these methods').

Rules kept here:

- A caller's target durable is answered first (``RETURN``, whatever happened
  since), then broken (``RAISE_BROKEN``), then closed (``RAISE_CLOSED``); only
  then does it lead (the token is free) or wait.
- While a thread waits for the exclusive section, no caller takes the free
  token to lead: the exclusive section goes first, so a truncation or close is
  not starved by commits that keep coming (before, a leader coming back for its
  next commit always took the token first).
- One token holder at a time: a second leader, or an exclusive section while a
  leader holds the token, is a ``CommitProtocolError``, as is any event from a
  holder that does not hold the token (a flush reported without a leader).
- ``durable_lsn`` grows only when a leader's flush is done, and moves otherwise
  only under the exclusive section (a truncation may lower it). A read-only
  handle, which never flushes, sets it to what the writer published.
- ``broken`` is set once (the first error is kept) and never cleared; ``closed``
  is set once, inside the exclusive section.
- Every transition that changes what a waiter waits for (``durable_lsn``,
  ``broken``, ``closed``, the token) answers whether anyone waits: the caller
  asks ``wakeups`` for the tickets to wake exactly then. A change made inside
  the exclusive section is announced when the section ends.
- Wake-ups are few and go one at a time (each one a thread that must take the
  GIL): ``wakeups`` names every parked ticket when the log is broken or closed;
  otherwise the first parked caller whose target is durable; otherwise, when
  the token is free, the first parked exclusive waiter, or with none waiting
  the first parked caller (it leads); otherwise nobody. A woken thread that
  goes on asks ``wakeups`` again before it lets the commit lock go, and so
  wakes the next (``GroupCommit`` releases the tickets just after letting the
  lock go, which changes no decision here): a flush that covers n waiters
  costs a chain of n wake-ups, each started as the previous thread runs,
  instead of n threads woken at once to queue for the GIL, and a waiter the
  flush did not cover is not woken to wait again. A chain ends with a thread
  that takes the token or finds nobody to wake, so no waiter that could go on
  is left parked with nobody woken (``tests/test_commit_machine.py`` checks it).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from ._format import SPEEDUPS

__all__ = [
    "Action",
    "CommitMachine",
    "CommitMachineBase",
    "CommitProtocolError",
    "Holder",
    "Ticket",
]


class Ticket(Protocol):
    """What a parked thread waits on; ``GroupCommit`` releases it to wake the thread."""

    def release(self) -> None:
        """Wake the thread parked on this ticket."""


class CommitProtocolError(RuntimeError):
    """An event the group commit's state does not allow: a bug in mmwal, never a user error."""


class Action(enum.Enum):
    """What a thread asking for durability (or for the exclusive section) does next."""

    #: Its target is durable: return.
    RETURN = "return"
    #: The log is broken: raise ``WalBrokenError``.
    RAISE_BROKEN = "raise broken"
    #: The log is closed: raise ``WalClosedError``.
    RAISE_CLOSED = "raise closed"
    #: It holds the token now: flush (or run the exclusive section).
    LEAD = "lead"
    #: Someone else holds the token: park a ticket, wait until woken, then ask again.
    WAIT = "wait"


class Holder(enum.Enum):
    """Who holds the one-flusher token."""

    NONE = "none"
    LEADER = "leader"
    #: A leader whose flush is done and published, writing a recovery point.
    POINT = "leader writing a recovery point"
    EXCLUSIVE = "exclusive"


RETURN = Action.RETURN
RAISE_BROKEN = Action.RAISE_BROKEN
RAISE_CLOSED = Action.RAISE_CLOSED
LEAD = Action.LEAD
WAIT = Action.WAIT
NONE = Holder.NONE
LEADER = Holder.LEADER
POINT = Holder.POINT
EXCLUSIVE = Holder.EXCLUSIVE


if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import CommitMachineBase
else:

    class CommitMachineBase:
        """The machine's fields (C members with the extension, which the lone commit moves)."""

        __slots__ = (
            "broken",
            "broken_by",
            "callers",
            "closed",
            "durable_lsn",
            "exclusive_waiting",
            "flush_seconds",
            "flushes",
            "holder",
            "parked",
            "syncs_requested",
            "waiting",
            "wakeups_issued",
        )


class CommitMachine(CommitMachineBase):
    """The durable end and the leader/follower decisions of one log."""

    __slots__ = ()

    def __init__(self, durable_lsn: int) -> None:
        """Start with ``durable_lsn`` durable, no token holder, nobody waiting."""
        self.durable_lsn = durable_lsn
        self.holder = NONE
        self.broken: BaseException | None = None
        self.broken_by = ""
        self.closed = False
        self.callers = 0
        self.waiting = 0
        #: Of those, the threads waiting for the exclusive section: while one
        #: waits, no caller takes the token to lead (a truncation or close is not
        #: starved by commits that keep coming).
        self.exclusive_waiting = 0
        #: The tickets of waiting threads not woken yet, in the order they
        #: parked, each with its target (None: an exclusive section).
        self.parked: list[tuple[int | None, Ticket]] = []
        #: How many tickets ``wakeups`` named.
        self.wakeups_issued = 0
        self.syncs_requested = 0
        self.flushes = 0
        self.flush_seconds = 0.0

    def __repr__(self) -> str:
        return (
            f"<CommitMachine durable={self.durable_lsn} holder={self.holder.value} "
            f"broken={self.broken is not None} closed={self.closed} "
            f"callers={self.callers} waiting={self.waiting} parked={len(self.parked)}>"
        )

    def _illegal(self, event: str) -> CommitProtocolError:
        return CommitProtocolError(f"{event} is not allowed in {self!r}")

    # -- callers asking for durability ------------------------------------------

    def request(self, target: int) -> Action:
        """Count a caller asking for everything below ``target`` durable; decide what it does."""
        self.syncs_requested += 1
        self.callers += 1
        return self._decide(target)

    def recheck(self, target: int) -> Action:
        """Decide again for a waiting caller that was woken."""
        if self.waiting <= 0:
            raise self._illegal("a waiter woken while none waits")
        self.waiting -= 1
        return self._decide(target)

    def abandon_wait(self) -> None:
        """Let a waiting caller leave without an answer (an exception in its wait)."""
        if self.waiting <= 0 or self.callers <= 0:
            raise self._illegal("a waiter leaving while none waits")
        self.waiting -= 1
        self.callers -= 1

    def park(self, ticket: Ticket, target: int | None) -> None:
        """Keep the ticket of a thread just told to wait (``target`` None: an exclusive one)."""
        if self.waiting <= len(self.parked):
            raise self._illegal("a ticket parked by a thread not told to wait")
        self.parked.append((target, ticket))

    def unpark(self, ticket: Ticket) -> None:
        """Drop the ticket of a thread leaving its wait (an exception), if not woken yet.

        A ticket already woken leaves a wake-up unanswered: the leaving thread
        then asks ``wakeups`` (after ``abandon_wait``) to pass it on.
        """
        for index, (_, parked) in enumerate(self.parked):
            if parked is ticket:
                del self.parked[index]
                return

    def wakeups(self) -> list[Ticket]:
        """Take out the parked tickets to wake now (see the rules above)."""
        parked = self.parked
        if not parked:
            return []
        if self.broken is not None or self.closed:
            woken = [ticket for _, ticket in parked]
            parked.clear()
        else:
            woken = []
            durable = self.durable_lsn
            for index, (target, ticket) in enumerate(parked):
                if target is not None and target <= durable:
                    del parked[index]
                    woken.append(ticket)
                    break
            if not woken and self.holder is NONE:
                woken.extend(self._token_taker())
        self.wakeups_issued += len(woken)
        return woken

    def _token_taker(self) -> list[Ticket]:
        # The free token goes to the first parked exclusive waiter, else to the
        # first parked thread.
        parked = self.parked
        if not self.exclusive_waiting:
            return [parked.pop(0)[1]]
        exclusive = [index for index, (target, _) in enumerate(parked) if target is None]
        if len(exclusive) < self.exclusive_waiting:
            return []  # one was woken and has not asked again: the token is its
        return [parked.pop(exclusive[0])[1]]

    def _decide(self, target: int) -> Action:
        # Durable first: a commit whose record is durable never raises, even when
        # a close flushed it or a later flush failed meanwhile. Then broken before
        # closed: a waiter whose flush failed hears of the failure even when a
        # close finished meanwhile.
        if self.durable_lsn >= target:
            self.callers -= 1
            return RETURN
        if self.broken is not None:
            self.callers -= 1
            return RAISE_BROKEN
        if self.closed:
            self.callers -= 1
            return RAISE_CLOSED
        if self.holder is NONE and not self.exclusive_waiting:
            self.holder = LEADER  # ``begin_flush``, whose checks this call has made
            return LEAD
        self.waiting += 1
        return WAIT

    # -- the leader ------------------------------------------------------------------

    def begin_flush(self) -> None:
        """Give the token to a leader; only ``request`` and ``recheck`` do."""
        if self.holder is not NONE:
            raise self._illegal("a second token holder (leader)")
        if self.callers <= 0:
            raise self._illegal("a leader that is not a caller")
        self.holder = LEADER

    def flush_done(self, flush_to: int, seconds: float, *, writing_point: bool) -> bool:
        """Take the leader's flush up to ``flush_to`` as returned; return whether anyone waits.

        The durable end moves and the waiters it covers may return. With
        ``writing_point`` the leader keeps the token (no truncation or close) while
        it writes a recovery point, and reports ``point_written`` after;
        otherwise it is done.
        """
        if self.holder is not LEADER:
            raise self._illegal("a flush reported done without a leader")
        self.durable_lsn = max(self.durable_lsn, flush_to)
        self.flushes += 1
        self.flush_seconds += seconds
        if writing_point:
            self.holder = POINT
        else:
            self.holder = NONE
            self.callers -= 1
        return self.waiting > 0

    def point_written(self) -> bool:
        """End the leader's recovery point (written or not); return whether anyone waits."""
        if self.holder is not POINT:
            raise self._illegal("a recovery point reported without a leader writing one")
        self.holder = NONE
        self.callers -= 1
        return self.waiting > 0

    def flush_failed(self, error: BaseException, operation: str) -> bool:
        """Take the leader's flush as failed, breaking the log; return whether anyone waits."""
        if self.holder is not LEADER:
            raise self._illegal("a flush reported failed without a leader")
        self.break_(error, operation)
        self.holder = NONE
        self.callers -= 1
        return self.waiting > 0

    def flush_abandoned(self) -> bool:
        """Stop a leader with no flush outcome (refused, interrupted); say if anyone waits."""
        if self.holder is not LEADER:
            raise self._illegal("a flush abandoned without a leader")
        self.holder = NONE
        self.callers -= 1
        return self.waiting > 0

    # -- fail-stop ---------------------------------------------------------------------

    def break_(self, error: BaseException, operation: str) -> bool:
        """Break the log for good (the first cause is kept); return whether anyone waits."""
        if self.broken is None:
            self.broken = error
            self.broken_by = operation
        return self.waiting > 0

    # -- the exclusive section (truncation, close) -------------------------------------

    def request_exclusive(self) -> Action:
        """Ask for the exclusive section: ``LEAD`` (it is held now) or ``WAIT``.

        Broken and closed logs grant it too: close releases a broken log there.
        """
        if self.holder is NONE:
            self.begin_exclusive()
            return LEAD
        self.waiting += 1
        self.exclusive_waiting += 1
        return WAIT

    def recheck_exclusive(self) -> Action:
        """Ask again for a thread that waited for the exclusive section and was woken."""
        if self.exclusive_waiting <= 0:
            raise self._illegal("a waiter woken while none waits")
        self.waiting -= 1
        self.exclusive_waiting -= 1
        return self.request_exclusive()

    def abandon_exclusive_wait(self) -> None:
        """Let a thread waiting for the exclusive section leave (an exception in its wait)."""
        if self.exclusive_waiting <= 0:
            raise self._illegal("a waiter leaving while none waits")
        self.waiting -= 1
        self.exclusive_waiting -= 1

    def begin_exclusive(self) -> None:
        """Give the token to an exclusive section; only ``request_exclusive`` does."""
        if self.holder is not NONE:
            holder = self.holder.value
            raise self._illegal(f"an exclusive section while the {holder} holds the token")
        self.holder = EXCLUSIVE

    def end_exclusive(self) -> bool:
        """Leave the exclusive section; return whether anyone waits."""
        if self.holder is not EXCLUSIVE:
            raise self._illegal("the end of an exclusive section nobody holds")
        self.holder = NONE
        return self.waiting > 0

    def truncated(self, end: int) -> None:
        """Make ``end`` the durable end after a truncation (it may be lower than before)."""
        if self.holder is not EXCLUSIVE:
            raise self._illegal("a truncation outside the exclusive section")
        self.durable_lsn = end

    def flushed_exclusively(self, end: int) -> None:
        """Note that a flush inside the exclusive section covered everything below ``end``."""
        if self.holder is not EXCLUSIVE:
            raise self._illegal("a flush outside the exclusive section")
        self.durable_lsn = max(self.durable_lsn, end)

    def close(self) -> None:
        """Close the log: later callers whose target is not durable raise ``WalClosedError``."""
        if self.holder is not EXCLUSIVE:
            raise self._illegal("a close outside the exclusive section")
        if self.closed:
            raise self._illegal("a second close")
        self.closed = True

    # -- a read-only handle ------------------------------------------------------------

    def refreshed(self, durable: int) -> None:
        """Take the writer's durable end on a read-only handle (it never flushes)."""
        if self.callers:
            raise self._illegal("a read-only refresh on a handle that flushes")
        self.durable_lsn = durable
