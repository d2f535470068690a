"""The group commit's decisions, driven directly: no thread, lock, I/O or clock.

``CommitMachine`` decides for ``GroupCommit`` who returns, raises, leads or
waits, and whether a transition must wake the waiters. The first tests walk
every transition by hand; the hypothesis state machine at the end drives
simulated threads through random interleavings and checks each answer against
``RulesModel``, an independent statement of the rules (it shares no code with
mmwal), including the one a lock-and-condition protocol most easily breaks: no
waiter that could go on is left without a notify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mmwal._commit_machine import Action, CommitMachine, CommitProtocolError, Holder, Ticket

RETURN, RAISE_BROKEN, RAISE_CLOSED, LEAD, WAIT = (
    Action.RETURN,
    Action.RAISE_BROKEN,
    Action.RAISE_CLOSED,
    Action.LEAD,
    Action.WAIT,
)


def state(machine: CommitMachine) -> tuple[object, ...]:
    return (
        machine.durable_lsn,
        machine.holder,
        machine.broken,
        machine.broken_by,
        machine.closed,
        machine.callers,
        machine.waiting,
        machine.exclusive_waiting,
        machine.syncs_requested,
        machine.flushes,
        machine.flush_seconds,
    )


@dataclass
class FakeTicket:
    """What a simulated thread parks: it only says whose it is."""

    key: int

    def release(self) -> None:
        """Nothing to wake: the model tracks who was woken."""


def keys(tickets: list[Ticket]) -> list[int]:
    return [ticket.key for ticket in tickets if isinstance(ticket, FakeTicket)]


# -- each transition by hand --------------------------------------------------------


def test_a_target_already_durable_returns_without_the_token() -> None:
    machine = CommitMachine(100)
    assert machine.request(100) is RETURN
    assert machine.request(40) is RETURN
    assert (machine.holder, machine.callers, machine.syncs_requested) == (Holder.NONE, 0, 2)


def test_a_lone_commit_leads_then_returns_the_token_with_nobody_to_notify() -> None:
    machine = CommitMachine(0)
    assert machine.request(10) is LEAD
    assert (machine.holder, machine.callers) == (Holder.LEADER, 1)
    # Nobody waits: the leader's finish must not notify (the lone commit's saving).
    assert machine.flush_done(16, 0.5, writing_point=False) is False
    assert (machine.durable_lsn, machine.holder, machine.callers) == (16, Holder.NONE, 0)
    assert (machine.flushes, machine.flush_seconds) == (1, 0.5)


def test_a_second_caller_waits_and_the_leaders_flush_notifies_and_covers_it() -> None:
    machine = CommitMachine(0)
    assert machine.request(10) is LEAD
    assert machine.request(20) is WAIT
    assert (machine.callers, machine.waiting) == (2, 1)
    assert machine.flush_done(20, 0.0, writing_point=False) is True
    assert machine.recheck(20) is RETURN
    assert (machine.callers, machine.waiting, machine.flushes) == (0, 0, 1)


def test_a_waiter_the_flush_did_not_cover_becomes_the_next_leader() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    machine.request(30)
    assert machine.flush_done(10, 0.0, writing_point=False) is True
    assert machine.recheck(30) is LEAD
    assert machine.holder is Holder.LEADER


def test_a_waiter_woken_while_the_token_is_held_waits_again() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    machine.request(30)
    assert machine.recheck(30) is WAIT  # a spurious wake-up
    assert machine.waiting == 1


def test_the_leader_keeps_the_token_while_it_writes_a_recovery_point() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    machine.request(10)
    assert machine.flush_done(10, 0.0, writing_point=True) is True
    assert machine.recheck(10) is RETURN  # covered: returns while the point is written
    assert machine.holder is Holder.POINT
    assert machine.request_exclusive() is WAIT  # no truncation or close meanwhile
    assert machine.request(20) is WAIT  # nor another leader
    assert machine.point_written() is True
    assert machine.recheck_exclusive() is LEAD
    assert machine.recheck(20) is WAIT


def test_a_lone_leader_that_wrote_a_point_is_no_longer_a_caller() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    assert machine.flush_done(10, 0.0, writing_point=True) is False
    assert (machine.holder, machine.callers) == (Holder.POINT, 1)
    assert machine.point_written() is False
    assert (machine.holder, machine.callers) == (Holder.NONE, 0)


def test_a_failed_flush_breaks_the_log_and_every_uncovered_waiter_raises() -> None:
    machine = CommitMachine(0)
    error = OSError(5, "EIO")
    machine.request(10)
    machine.request(20)
    assert machine.flush_failed(error, "a flush") is True
    assert (machine.broken, machine.broken_by, machine.holder) == (error, "a flush", Holder.NONE)
    assert machine.recheck(20) is RAISE_BROKEN
    assert machine.request(30) is RAISE_BROKEN
    assert machine.request(0) is RETURN  # durable first, broken or not
    assert machine.callers == 0


def test_the_first_break_is_kept() -> None:
    machine = CommitMachine(0)
    first, second = OSError("first"), OSError("second")
    machine.request(5)
    machine.request(5)
    assert machine.break_(first, "a copy into the log") is True  # one waits
    assert machine.flush_failed(second, "a flush") is True
    assert (machine.broken, machine.broken_by) == (first, "a copy into the log")


def test_an_abandoned_flush_gives_the_token_back_without_breaking() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    assert machine.flush_abandoned() is False
    assert (machine.holder, machine.broken, machine.callers) == (Holder.NONE, None, 0)
    assert machine.request(10) is LEAD


def test_a_waiter_interrupted_in_its_wait_is_no_longer_counted() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    machine.request(10)
    machine.abandon_wait()
    assert (machine.callers, machine.waiting) == (1, 0)
    assert machine.flush_done(10, 0.0, writing_point=False) is False


def test_exclusive_waits_for_the_leader_and_is_announced_when_it_ends() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    assert machine.request_exclusive() is WAIT
    assert machine.flush_done(10, 0.0, writing_point=False) is True
    assert machine.recheck_exclusive() is LEAD
    assert machine.holder is Holder.EXCLUSIVE
    assert machine.request(50) is WAIT  # a commit waits for the truncation
    machine.truncated(4)
    assert machine.durable_lsn == 4  # a truncation may lower it
    assert machine.end_exclusive() is True
    assert machine.recheck(50) is LEAD


def test_a_flush_inside_exclusive_only_raises_the_durable_end() -> None:
    machine = CommitMachine(30)
    assert machine.request_exclusive() is LEAD
    machine.flushed_exclusively(20)
    assert machine.durable_lsn == 30
    machine.flushed_exclusively(40)
    assert machine.durable_lsn == 40
    assert machine.end_exclusive() is False


def test_close_inside_exclusive_makes_uncovered_callers_raise_closed() -> None:
    machine = CommitMachine(10)
    machine.request_exclusive()
    machine.close()
    machine.end_exclusive()
    assert machine.closed
    assert machine.request(10) is RETURN
    assert machine.request(11) is RAISE_CLOSED
    machine.break_(OSError(), "a flush")
    assert machine.request(11) is RAISE_BROKEN  # broken before closed
    assert machine.request_exclusive() is LEAD  # close of a broken log still releases


def parked_waiters(machine: CommitMachine, *targets: int | None) -> list[FakeTicket]:
    """Park a ticket for each target on a machine whose token is held (None: exclusive)."""
    tickets = []
    for key, target in enumerate(targets):
        if target is None:
            assert machine.request_exclusive() is WAIT
        else:
            assert machine.request(target) is WAIT
        ticket = FakeTicket(key)
        machine.park(ticket, target)
        tickets.append(ticket)
    return tickets


def test_a_flush_wakes_the_waiters_it_covered_one_at_a_time_in_the_order_they_parked() -> None:
    # Waking every waiter at once (notify_all) made them all queue for the GIL.
    machine = CommitMachine(0)
    assert machine.request(10) is LEAD
    parked_waiters(machine, 30, 20, 60, 25)
    assert machine.flush_done(30, 0.0, writing_point=False) is True
    assert keys(machine.wakeups()) == [0]
    assert machine.recheck(30) is RETURN
    assert keys(machine.wakeups()) == [1]  # the woken thread wakes the next
    assert machine.recheck(20) is RETURN
    assert keys(machine.wakeups()) == [3]  # 60 is not covered: skipped
    assert machine.recheck(25) is RETURN
    # Nobody left that the flush covered, and the token is free: the uncovered
    # waiter is woken to lead.
    assert keys(machine.wakeups()) == [2]
    assert machine.recheck(60) is LEAD
    assert machine.wakeups() == []
    assert machine.wakeups_issued == 4


def test_a_waiter_the_flush_did_not_cover_sleeps_while_the_token_is_held() -> None:
    # notify_all woke it, only for it to find the token taken and wait again.
    machine = CommitMachine(0)
    machine.request(10)
    parked_waiters(machine, 10, 40)
    assert machine.flush_done(10, 0.0, writing_point=True) is True  # keeps the token
    assert keys(machine.wakeups()) == [0]
    assert machine.recheck(10) is RETURN
    assert machine.wakeups() == []  # 40 waits for a flush: not woken
    assert machine.point_written() is True
    assert keys(machine.wakeups()) == [1]


def test_a_broken_log_wakes_every_parked_thread() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    parked_waiters(machine, 20, None, 30)
    assert machine.flush_failed(OSError("EIO"), "a flush") is True
    assert keys(machine.wakeups()) == [0, 1, 2]
    assert machine.parked == []


def test_a_closed_log_wakes_every_parked_thread_when_the_close_ends() -> None:
    machine = CommitMachine(0)
    assert machine.request_exclusive() is LEAD
    parked_waiters(machine, 20, None)
    machine.close()
    assert machine.end_exclusive() is True
    assert keys(machine.wakeups()) == [0, 1]
    assert machine.recheck(20) is RAISE_CLOSED
    assert machine.recheck_exclusive() is LEAD


def test_a_woken_waiter_that_leaves_passes_its_wakeup_on() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    first, _ = parked_waiters(machine, 10, 10)
    machine.flush_done(10, 0.0, writing_point=False)
    assert machine.wakeups() == [first]
    # Interrupted after it was woken: unpark finds nothing to drop, and the
    # wake-up it got goes to the next waiter.
    machine.unpark(first)
    machine.abandon_wait()
    assert keys(machine.wakeups()) == [1]


def test_a_parked_waiter_that_leaves_is_never_woken() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    first, second = parked_waiters(machine, 10, 10)
    machine.unpark(first)
    machine.abandon_wait()
    machine.flush_done(10, 0.0, writing_point=False)
    assert machine.wakeups() == [second]


def test_a_waiting_exclusive_section_takes_the_free_token_before_a_new_leader() -> None:
    # Before, a leader coming back for its next commit took the token again at
    # once, and a truncation or close waited as long as commits kept coming.
    machine = CommitMachine(0)
    machine.request(10)
    (exclusive,) = parked_waiters(machine, None)
    assert machine.flush_done(10, 0.0, writing_point=False) is True
    assert machine.wakeups() == [exclusive]
    assert machine.request(20) is WAIT  # the token is free, but the section goes first
    machine.park(FakeTicket(1), 20)
    assert machine.wakeups() == []  # the exclusive waiter is on its way
    assert machine.recheck_exclusive() is LEAD
    assert (machine.holder, machine.exclusive_waiting) == (Holder.EXCLUSIVE, 0)
    assert machine.end_exclusive() is True
    assert keys(machine.wakeups()) == [1]
    assert machine.recheck(20) is LEAD


def test_the_free_token_goes_to_the_first_parked_exclusive_waiter() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    parked_waiters(machine, 30, None, 40, None)
    assert machine.flush_abandoned() is True
    assert keys(machine.wakeups()) == [1]
    assert machine.recheck_exclusive() is LEAD
    assert machine.exclusive_waiting == 1
    assert machine.end_exclusive() is True
    assert keys(machine.wakeups()) == [3]  # the second exclusive waiter, then callers
    assert machine.recheck_exclusive() is LEAD


def test_a_ticket_is_parked_only_by_a_thread_told_to_wait() -> None:
    machine = CommitMachine(0)
    machine.request(10)
    with pytest.raises(CommitProtocolError, match=r"^a ticket parked by a thread not told"):
        machine.park(FakeTicket(0), 10)
    assert machine.parked == []


def test_a_read_only_refresh_sets_the_durable_end_either_way() -> None:
    machine = CommitMachine(50)
    machine.refreshed(80)
    assert machine.durable_lsn == 80
    machine.refreshed(20)  # the writer truncated
    assert machine.durable_lsn == 20


ILLEGAL = {
    "flush_done without a leader": lambda m: m.flush_done(1, 0.0, writing_point=False),
    "flush_failed without a leader": lambda m: m.flush_failed(OSError(), "a flush"),
    "flush_abandoned without a leader": lambda m: m.flush_abandoned(),
    "point_written without a point": lambda m: m.point_written(),
    "a second leader": lambda m: m.begin_flush(),
    "exclusive while the token is held": lambda m: m.begin_exclusive(),
    "end_exclusive without exclusive": lambda m: m.end_exclusive(),
    "truncated outside exclusive": lambda m: m.truncated(0),
    "flushed_exclusively outside exclusive": lambda m: m.flushed_exclusively(0),
    "close outside exclusive": lambda m: m.close(),
    "recheck with nobody waiting": lambda m: m.recheck(1),
    "recheck_exclusive with nobody waiting": lambda m: m.recheck_exclusive(),
    "abandon_wait with nobody waiting": lambda m: m.abandon_wait(),
    "abandon_exclusive_wait with nobody waiting": lambda m: m.abandon_exclusive_wait(),
}

#: What each illegal event's error says first: the event, then the state.
MESSAGES = {
    "flush_done without a leader": "a flush reported done without a leader",
    "flush_failed without a leader": "a flush reported failed without a leader",
    "flush_abandoned without a leader": "a flush abandoned without a leader",
    "point_written without a point": "a recovery point reported without a leader writing one",
    "a second leader": "a second token holder \\(leader\\)",
    "exclusive while the token is held": "an exclusive section while the leader holds the token",
    "end_exclusive without exclusive": "the end of an exclusive section nobody holds",
    "truncated outside exclusive": "a truncation outside the exclusive section",
    "flushed_exclusively outside exclusive": "a flush outside the exclusive section",
    "close outside exclusive": "a close outside the exclusive section",
    "recheck with nobody waiting": "a waiter woken while none waits",
    "recheck_exclusive with nobody waiting": "a waiter woken while none waits",
    "abandon_wait with nobody waiting": "a waiter leaving while none waits",
    "abandon_exclusive_wait with nobody waiting": "a waiter leaving while none waits",
}


#: Legal only while a leader holds the token (covered by the tests above).
LEADER_EVENTS = {
    "flush_done without a leader",
    "flush_failed without a leader",
    "flush_abandoned without a leader",
}


@pytest.mark.parametrize("event", sorted(set(ILLEGAL) - LEADER_EVENTS))
def test_an_illegal_event_with_a_leader_flushing_raises_and_changes_nothing(event: str) -> None:
    machine = CommitMachine(0)
    assert machine.request(10) is LEAD
    before = state(machine)
    with pytest.raises(
        CommitProtocolError, match=f"^{MESSAGES[event]} is not allowed in <CommitMachine "
    ):
        ILLEGAL[event](machine)
    assert state(machine) == before


# On an idle machine, begin_flush is refused for want of a caller (below) and
# begin_exclusive is legal.
@pytest.mark.parametrize(
    "event", sorted(set(ILLEGAL) - {"a second leader", "exclusive while the token is held"})
)
def test_an_illegal_event_on_an_idle_machine_raises_and_changes_nothing(event: str) -> None:
    machine = CommitMachine(0)
    before = state(machine)
    with pytest.raises(CommitProtocolError, match=f"^{MESSAGES[event]} is not allowed in "):
        ILLEGAL[event](machine)
    assert state(machine) == before


def test_the_token_is_refused_to_a_leader_that_is_not_a_caller() -> None:
    machine = CommitMachine(0)
    with pytest.raises(CommitProtocolError, match=r"^a leader that is not a caller is not"):
        machine.begin_flush()
    machine.callers = 1  # one caller, counted by ``request``, and the token free
    machine.begin_flush()
    assert machine.holder is Holder.LEADER


def test_a_caller_cannot_leave_a_wait_only_an_exclusive_section_waits_in() -> None:
    machine = CommitMachine(0)
    machine.request(5)
    machine.flush_done(0, 0.0, writing_point=True)  # the leader writes a point
    assert machine.request_exclusive() is WAIT
    machine.callers = 0  # as if the leader were not counted: one waiter, no caller
    before = state(machine)
    with pytest.raises(CommitProtocolError, match=r"^a waiter leaving while none waits"):
        machine.abandon_wait()
    assert state(machine) == before


def test_the_repr_shows_the_state() -> None:
    machine = CommitMachine(7)
    assert repr(machine) == (
        "<CommitMachine durable=7 holder=none broken=False closed=False callers=0 waiting=0"
        " parked=0>"
    )
    machine.break_(OSError(), "a flush")
    assert "broken=True" in repr(machine)


def test_a_second_close_is_refused() -> None:
    machine = CommitMachine(0)
    machine.request_exclusive()
    machine.close()
    with pytest.raises(CommitProtocolError, match=r"^a second close is not allowed"):
        machine.close()


def test_exclusive_is_refused_while_a_leader_flushes() -> None:
    machine = CommitMachine(0)
    machine.request(1)
    with pytest.raises(CommitProtocolError, match="while the leader holds the token"):
        machine.begin_exclusive()


def test_a_read_only_refresh_is_refused_on_a_handle_that_flushes() -> None:
    machine = CommitMachine(0)
    machine.request(1)
    with pytest.raises(
        CommitProtocolError, match=r"^a read-only refresh on a handle that flushes is not allowed"
    ):
        machine.refreshed(5)


# -- an independent model of the rules ---------------------------------------------


@dataclass
class Thread:
    """A simulated thread inside the protocol."""

    kind: str  # "sync" or "exclusive"
    target: int = 0
    # "parked" (waits, not woken), "woken" (woken, not yet asked again),
    # "leading", "point", "exclusive"
    state: str = "parked"


@dataclass
class RulesModel:
    """The group commit's rules, restated: what each caller must be told, who is woken."""

    durable: int
    holder: int | None = None  # the id of the thread holding the token
    broken: object = None
    closed: bool = False
    threads: dict[int, Thread] = field(default_factory=dict)
    parked: list[int] = field(default_factory=list)  # in the order they parked
    next_id: int = 0

    def answer_sync(self, target: int) -> str:
        if self.durable >= target:
            return "return"
        if self.broken is not None:
            return "raise broken"
        if self.closed:
            return "raise closed"
        # A waiting exclusive section goes first: no caller takes the token before it.
        return "lead" if self.holder is None and not self.exclusive_waiters() else "wait"

    def exclusive_waiters(self) -> list[int]:
        return [key for key in self.waiters() if self.threads[key].kind == "exclusive"]

    def waiters(self) -> list[int]:
        return [key for key, thread in self.threads.items() if thread.state in ("parked", "woken")]

    def woken(self) -> list[int]:
        return [key for key, thread in self.threads.items() if thread.state == "woken"]

    def to_wake(self) -> list[int]:
        """Whom a wake-up goes to: everyone once broken or closed; else the first
        parked caller whose target is durable; else, with the token free, the first
        parked exclusive waiter (none if one is woken already), or with none
        waiting the first parked caller; else nobody."""
        if self.broken is not None or self.closed:
            return list(self.parked)
        for key in self.parked:
            thread = self.threads[key]
            if thread.kind == "sync" and thread.target <= self.durable:
                return [key]
        if self.holder is not None:
            return []
        exclusive = self.exclusive_waiters()
        if not exclusive:
            return self.parked[:1]
        if any(self.threads[key].state == "woken" for key in exclusive):
            return []
        return [next(key for key in self.parked if self.threads[key].kind == "exclusive")]

    def could_go_on(self, thread: Thread) -> bool:
        if thread.kind == "exclusive":
            return self.holder is None
        return self.answer_sync(thread.target) != "wait"

    def callers(self) -> int:
        return sum(1 for thread in self.threads.values() if thread.kind == "sync")


HOLDERS = {
    "leading": Holder.LEADER,
    "point": Holder.POINT,
    "exclusive": Holder.EXCLUSIVE,
}


class CommitRules(RuleBasedStateMachine):
    """Random interleavings of simulated threads against the machine and the model.

    Each step does what ``GroupCommit`` does in one critical section: a thread told
    to wait parks its ticket; a transition that answers "wake" asks ``wakeups``;
    a woken thread that goes on asks ``wakeups`` again (the chain).
    """

    def __init__(self) -> None:
        super().__init__()
        self.machine = CommitMachine(0)
        self.model = RulesModel(durable=0)
        self.tickets: dict[int, FakeTicket] = {}

    # helpers

    def _holder_thread(self, state: str) -> int | None:
        holder = self.model.holder
        if holder is not None and self.model.threads[holder].state == state:
            return holder
        return None

    def _park(self, key: int) -> None:
        thread = self.model.threads[key]
        thread.state = "parked"
        self.model.parked.append(key)
        ticket = self.tickets.setdefault(key, FakeTicket(key))
        self.machine.park(ticket, thread.target if thread.kind == "sync" else None)

    def _wake(self, answered: bool) -> None:
        # ``answered``: the transition's "wake" answer, which is whether anyone waits.
        model = self.model
        assert answered is bool(model.waiters())
        self._wake_parked()

    def _wake_parked(self) -> None:
        # What ``GroupCommit`` does with a "wake" answer, and a woken thread that
        # goes on or leaves, when a ticket is parked.
        model = self.model
        if not self.machine.parked:
            return
        expected = model.to_wake()
        woken = self.machine.wakeups()
        assert all(isinstance(ticket, FakeTicket) for ticket in woken)
        assert [ticket.key for ticket in woken if isinstance(ticket, FakeTicket)] == expected
        for key in expected:
            # Nobody is woken only to find it must wait again: a caller is woken
            # when its target is durable or to take the free token (or because
            # the log broke or closed, which every waiter must hear).
            if model.broken is None and not model.closed:
                assert model.could_go_on(model.threads[key]), f"thread {key} woken to wait"
            model.parked.remove(key)
            model.threads[key].state = "woken"

    def _settle_sync(self, key: int, answer: str) -> None:
        model = self.model
        thread = model.threads[key]
        if answer == "lead":
            model.holder = key
            thread.state = "leading"
        elif answer == "wait":
            self._park(key)
        else:
            del model.threads[key]

    def _expect_illegal(self, event: Callable[[], object]) -> None:
        before = state(self.machine)
        with pytest.raises(CommitProtocolError):
            event()
        assert state(self.machine) == before

    # callers

    @rule(lsn=st.integers(0, 200))
    def a_thread_syncs(self, lsn: int) -> None:
        model = self.model
        expected = model.answer_sync(lsn)
        key = model.next_id
        model.next_id += 1
        model.threads[key] = Thread("sync", lsn)
        assert self.machine.request(lsn).value == expected
        self._settle_sync(key, expected)

    @precondition(lambda self: self.model.woken())
    @rule(data=st.data())
    def a_woken_thread_asks_again(self, data: st.DataObject) -> None:
        model = self.model
        key = data.draw(st.sampled_from(model.woken()))
        thread = model.threads[key]
        if thread.kind == "sync":
            expected = model.answer_sync(thread.target)
            assert self.machine.recheck(thread.target).value == expected
            self._settle_sync(key, expected)
        else:
            expected = "lead" if model.holder is None else "wait"
            assert self.machine.recheck_exclusive().value == expected
            if expected == "lead":
                model.holder = key
                thread.state = "exclusive"
            else:
                self._park(key)
        if expected != "wait":
            self._wake_parked()  # pass the chain on

    @precondition(lambda self: self.model.waiters())
    @rule(data=st.data())
    def a_waiter_is_interrupted(self, data: st.DataObject) -> None:
        # Parked or already woken: either way it leaves, and a wake-up it got is
        # passed on.
        model = self.model
        key = data.draw(st.sampled_from(model.waiters()))
        self.machine.unpark(self.tickets[key])
        if model.threads[key].kind == "sync":
            self.machine.abandon_wait()
        else:
            self.machine.abandon_exclusive_wait()
        if key in model.parked:
            model.parked.remove(key)
        del model.threads[key]
        self._wake_parked()

    # the leader

    @rule(extra=st.integers(0, 50), point=st.booleans(), seconds=st.floats(0, 1))
    def the_leader_flush_returns(self, extra: int, point: bool, seconds: float) -> None:
        model = self.model
        key = self._holder_thread("leading")
        if key is None:
            self._expect_illegal(lambda: self.machine.flush_done(1, 0.0, writing_point=point))
            return
        flush_to = max(model.threads[key].target, model.durable) + extra
        flushes, spent = self.machine.flushes, self.machine.flush_seconds
        model.durable = max(model.durable, flush_to)
        if point:
            model.threads[key].state = "point"
        else:
            del model.threads[key]
            model.holder = None
        self._wake(self.machine.flush_done(flush_to, seconds, writing_point=point))
        assert (self.machine.flushes, self.machine.flush_seconds) == (flushes + 1, spent + seconds)

    @rule()
    def the_leader_writes_its_point(self) -> None:
        model = self.model
        key = self._holder_thread("point")
        if key is None:
            self._expect_illegal(self.machine.point_written)
            return
        del model.threads[key]
        model.holder = None
        self._wake(self.machine.point_written())

    @rule()
    def the_leader_flush_fails(self) -> None:
        model = self.model
        key = self._holder_thread("leading")
        error = OSError("injected")
        if key is None:
            self._expect_illegal(lambda: self.machine.flush_failed(error, "a flush"))
            return
        if model.broken is None:
            model.broken = error
        del model.threads[key]
        model.holder = None
        self._wake(self.machine.flush_failed(error, "a flush"))
        assert self.machine.broken is model.broken

    @rule()
    def the_leader_gives_up(self) -> None:
        model = self.model
        key = self._holder_thread("leading")
        if key is None:
            self._expect_illegal(self.machine.flush_abandoned)
            return
        del model.threads[key]
        model.holder = None
        self._wake(self.machine.flush_abandoned())

    @rule()
    def a_second_leader_is_refused(self) -> None:
        if self.model.holder is not None:
            self._expect_illegal(self.machine.begin_flush)

    @rule()
    def a_copy_fails(self) -> None:
        model = self.model
        error = OSError("copy")
        if model.broken is None:
            model.broken = error
        self._wake(self.machine.break_(error, "a copy into the log"))

    # the exclusive section

    @rule()
    def a_thread_asks_for_exclusive(self) -> None:
        model = self.model
        key = model.next_id
        model.next_id += 1
        if model.holder is None:
            model.threads[key] = Thread("exclusive", state="exclusive")
            model.holder = key
            assert self.machine.request_exclusive() is LEAD
        else:
            self._expect_illegal(self.machine.begin_exclusive)
            model.threads[key] = Thread("exclusive")
            assert self.machine.request_exclusive() is WAIT
            self._park(key)

    @rule(end=st.integers(0, 250))
    def a_truncation_moves_the_end(self, end: int) -> None:
        if self._holder_thread("exclusive") is None:
            self._expect_illegal(lambda: self.machine.truncated(end))
            return
        self.model.durable = end
        self.machine.truncated(end)

    @rule(end=st.integers(0, 250))
    def a_flush_inside_exclusive(self, end: int) -> None:
        if self._holder_thread("exclusive") is None:
            self._expect_illegal(lambda: self.machine.flushed_exclusively(end))
            return
        self.model.durable = max(self.model.durable, end)
        self.machine.flushed_exclusively(end)

    @rule()
    def close(self) -> None:
        model = self.model
        if self._holder_thread("exclusive") is None or model.closed:
            self._expect_illegal(self.machine.close)
            return
        model.closed = True
        self.machine.close()

    @rule()
    def the_exclusive_section_ends(self) -> None:
        model = self.model
        key = self._holder_thread("exclusive")
        if key is None:
            self._expect_illegal(self.machine.end_exclusive)
            return
        del model.threads[key]
        model.holder = None
        self._wake(self.machine.end_exclusive())

    # what must hold after every step

    @invariant()
    def the_machine_says_what_the_model_says(self) -> None:
        machine, model = self.machine, self.model
        assert machine.durable_lsn == model.durable
        assert machine.closed == model.closed
        assert machine.broken is model.broken
        expected_holder = (
            Holder.NONE if model.holder is None else HOLDERS[model.threads[model.holder].state]
        )
        assert machine.holder is expected_holder
        assert machine.callers == model.callers()
        assert machine.waiting == len(model.waiters())
        assert machine.exclusive_waiting == len(model.exclusive_waiters())
        assert [
            ticket.key for _, ticket in machine.parked if isinstance(ticket, FakeTicket)
        ] == model.parked

    @invariant()
    def no_wakeup_is_lost(self) -> None:
        # While a waiter that could go on is parked, some thread is woken and
        # not yet done (the chain runs on to it); changes made inside the
        # exclusive section are announced when it ends.
        model = self.model
        if model.holder is not None and model.threads[model.holder].state == "exclusive":
            return
        stuck = [key for key in model.parked if model.could_go_on(model.threads[key])]
        assert not stuck or model.woken(), f"threads {stuck} could go on and nobody was woken"


CommitRules.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_the_machine_keeps_the_rules = CommitRules.TestCase
