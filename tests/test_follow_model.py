"""Followers against a model: appends, syncs, segment rolls and truncations, interleaved.

Several followers (on the writer's handle and on a read-only handle, copying or
not, durable or not) are stepped one record at a time, only when the model says
a record is there for them (or that their position was removed: then they must
raise ``WalTruncatedError``). Every record a follower yields must be the model's
record at its position: in order, exactly once, never a removed one, never one
past what ``sync`` made durable for a durable follower.

One allowance, by design: a read-only handle that missed more cuts than the state
file keeps (``CUTS_KEPT``) cannot tell which positions survived, so its
followers may raise ``WalTruncatedError`` (never yield a wrong record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mmwal import Record, Wal, WalTruncatedError
from mmwal._published import CUTS_KEPT

SEGMENT = 256


@dataclass
class Follower:
    records: Iterator[Record]
    position: int
    durable: bool
    remote: bool
    doomed: bool = False
    may_raise: bool = False


class FollowersAgainstAModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        path = Path(self.directory.name) / "log"
        self.wal = Wal.open_segmented(path, SEGMENT)
        self.reader = Wal.open_segmented(path, readonly=True)
        self.log: dict[int, bytes] = {}
        self.order: list[int] = []
        self.end = 0
        self.durable = 0
        self.followers: list[Follower] = []
        # Cuts the read-only handle has not looked at yet.
        self.unseen_cuts = 0

    def teardown(self) -> None:
        self.followers.clear()
        self.reader.close()
        self.wal.close()
        self.directory.cleanup()

    @property
    def head(self) -> int:
        return self.order[0] if self.order else self.end

    @rule(data=st.binary(max_size=100))
    def append(self, data: bytes) -> None:
        lsn = self.wal.append(data)
        assert lsn == self.end
        self.log[lsn] = data
        self.order.append(lsn)
        self.end = lsn + 8 + len(data)

    @rule()
    def sync(self) -> None:
        self.wal.sync()
        self.durable = self.end

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.order) - 1))
        lsn = self.order[index]
        self.wal.truncate_after(lsn)
        cut = lsn + 8 + len(self.log[lsn])
        for removed in self.order[index + 1 :]:
            del self.log[removed]
        del self.order[index + 1 :]
        if cut < self.end:
            self.unseen_cuts += 1
        self.end = cut
        self.durable = min(self.durable, cut)
        for follower in self.followers:
            if follower.position > cut:
                follower.doomed = True

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def truncate_before(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.order) - 1))
        lsn = self.order[index]
        self.wal.truncate_before(lsn)
        if lsn == self.head:
            return  # nothing to drop: nothing is flushed either
        for removed in self.order[:index]:
            del self.log[removed]
        del self.order[:index]
        self.durable = self.end  # truncate_before flushes everything first
        for follower in self.followers:
            if follower.position < lsn:
                follower.doomed = True

    @precondition(lambda self: len(self.followers) < 6)
    @rule(
        data=st.data(),
        remote=st.booleans(),
        durable=st.booleans(),
        copy=st.booleans(),
    )
    def start_follower(self, data: st.DataObject, remote: bool, durable: bool, copy: bool) -> None:
        starts = [None, *self.order, self.end]
        start = data.draw(st.sampled_from(starts))
        handle = self.reader if remote else self.wal
        if remote:
            self._reader_looks()
        if remote and start is not None and start not in self.log:
            start = None  # the read-only handle may not have seen it yet
        # A timeout, so a follower that waits for a record the model says is there
        # fails (StopIteration) instead of hanging the test.
        records = handle.follow(start, timeout=0.3, durable=durable, copy=copy)
        position = self.head if start is None else start
        if remote and start is None:
            position = handle.head_lsn
            if position < self.head:
                # It has not seen the last truncate_before yet: it will, and raise.
                self.followers.append(Follower(records, position, durable, remote, doomed=True))
                return
        self.followers.append(Follower(records, position, durable, remote))

    def _reader_looks(self) -> None:
        if self.unseen_cuts > CUTS_KEPT:
            for follower in self.followers:
                follower.may_raise |= follower.remote
        self.unseen_cuts = 0

    def _ready(self, follower: Follower) -> bool:
        if follower.doomed:
            return True
        data = self.log.get(follower.position)
        if data is None:
            return False
        limit = self.durable if follower.durable else self.end
        return follower.position + 8 + len(data) <= limit

    @precondition(lambda self: self.followers)
    @rule(data=st.data())
    def step_follower(self, data: st.DataObject) -> None:
        follower = data.draw(st.sampled_from(self.followers))
        if not self._ready(follower):
            return
        if follower.remote:
            self._reader_looks()
        if follower.may_raise and not follower.doomed:
            try:
                record = next(follower.records)
            except WalTruncatedError:
                self.followers.remove(follower)
                return
            assert record.lsn == follower.position
            assert bytes(record.data) == self.log[record.lsn]
            follower.position = record.end
            return
        if follower.doomed:
            with pytest.raises(WalTruncatedError):
                next(follower.records)
            self.followers.remove(follower)
            return
        record = next(follower.records)
        assert record.lsn == follower.position
        assert bytes(record.data) == self.log[record.lsn]
        follower.position = record.end

    @invariant()
    def the_log_matches_the_model(self) -> None:
        assert self.wal.next_lsn == self.end
        assert self.wal.head_lsn == self.head


FollowersAgainstAModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
test_followers_against_a_model = pytest.mark.slow(FollowersAgainstAModel.TestCase)
