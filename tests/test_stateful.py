"""A hypothesis state machine drives a log through appends, syncs, truncations and crashes.

The oracle is a list of ``(lsn, payload)`` from the head and the count of records a
returned ``sync`` (or a truncation, or a recovery) made durable; it shares no code
with mmwal: LSNs are computed here from the format (an 8-byte header per record).

The log runs on the real ``FileStore`` or ``SegmentStore`` over
``PowerLossSimulator``. After every crash (a power loss, through
``crash_image``; a crash of the process alone, through ``cache_image``; a power
loss at a seam call in the middle of a sync or a truncation) the reopened log
must be a prefix of the records, hold every durable one, and nothing else: no
ghost, no reorder, the head where ``truncate_before`` put it. A crash inside a
truncation leaves exactly the old log or exactly the new one. The machine then
goes on appending to the recovered log, so appends after recovery are checked by
the same rules.

``MMWAL_SOAK=1`` runs many more, longer programs.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mmwal import Wal, WalConfig
from mmwal._chunked import ChunkedStore
from mmwal.testing import CrashImage, Layout, PowerLossSimulator

SOAK = os.environ.get("MMWAL_SOAK") == "1"
HEADER = 8
CONFIG = WalConfig(max_record_size=1 << 16)

# records span segments freely
LAYOUTS = [
    Layout(segment_size=512),
    Layout(segment_size=4096),
    Layout(window_size=8192),
    Layout(segment_size=512, sync_method="msync"),  # the default is fdatasync
]

sizes = st.one_of(
    st.just(0),
    st.integers(1, 64),
    st.integers(65, 1200),
    st.integers(1200, 9000),  # spans two or more segments of every layout
)


class CrashingLog(RuleBasedStateMachine):
    """Appends, syncs, truncations, reopens and crashes, checked against an oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.wal: Wal | None = None
        self.sim: PowerLossSimulator | None = None
        self.base = Path(tempfile.mkdtemp(prefix="mmwal-stateful-"))
        self.opened = 0
        self.records: list[tuple[int, bytes]] = []  # from the head
        self.head = 0
        self.end = 0
        self.durable = 0  # self.records[:durable] must survive any crash
        self.counter = 0
        self.segmented = False

    # -- oracle helpers -----------------------------------------------------------

    def payload(self, size: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (size // 4 + 1))[:size]

    def expect_append(self, payload: bytes) -> int:
        lsn = self.end
        self.records.append((lsn, payload))
        self.end = lsn + HEADER + len(payload)
        return lsn

    def open_image(self, image: CrashImage) -> list[tuple[int, bytes]]:
        """Open ``image``, adopt it as the running log, return its records.

        The log that crashed is closed (what it does now no longer matters) and
        its files removed.
        """
        self.opened += 1
        wal = image.open(self.base / f"log-{self.opened}", CONFIG)
        got = [(record.lsn, record.data) for record in wal]
        store = wal.store
        assert isinstance(store, ChunkedStore)
        assert isinstance(store.syscalls, PowerLossSimulator)
        if self.wal is not None and self.sim is not None:
            self.wal.close()
            shutil.rmtree(self.sim.root, ignore_errors=True)
        self.wal, self.sim = wal, store.syscalls
        return got

    def check_recovered(
        self,
        got: list[tuple[int, bytes]],
        *,
        head: int,
        records: list[tuple[int, bytes]],
        durable: int,
        new: tuple[int, int] | None = None,
    ) -> None:
        """Check the recovered log is the old one (``head``, ``durable``) or exactly ``new``.

        ``new`` is ``(head, count)``: the log from that head holding ``records[:count]``.
        """
        assert self.wal is not None
        recovered_head = self.wal.head_lsn
        live = [record for record in records if record[0] >= recovered_head]
        dropped = len(records) - len(live)
        if new is None or recovered_head != new[0] or got != live[: new[1] - dropped]:
            assert recovered_head == head, (recovered_head, head, new)
            assert got == live[: len(got)], "not a prefix of what was appended (ghost or reorder)"
            assert len(got) >= durable - dropped, (
                f"neither the old log nor the new one: recovered {len(got)}, "
                f"{durable - dropped} were durable, the new log holds {new}"
            )
        head = recovered_head
        # Adopt what was recovered: recovery flushed it, so all of it is durable now.
        self.records = got
        self.head = head
        self.end = got[-1][0] + HEADER + len(got[-1][1]) if got else head
        self.durable = len(got)
        assert self.wal.next_lsn == self.end

    @property
    def log(self) -> Wal:
        assert self.wal is not None
        return self.wal

    # -- rules ----------------------------------------------------------------------

    @initialize(layout=st.sampled_from(LAYOUTS))
    def start(self, layout: Layout) -> None:
        self.sim = PowerLossSimulator(self.base / "log-0", layout)
        self.segmented = layout.segmented
        self.wal = Wal.with_store(self.sim.open_store(), CONFIG)

    @rule(size=sizes)
    def append(self, size: int) -> None:
        payload = self.payload(size)
        assert self.log.append(payload) == self.expect_append(payload)

    @rule(batch=st.lists(sizes, min_size=0, max_size=6))
    def append_many(self, batch: list[int]) -> None:
        payloads = [self.payload(size) for size in batch]
        assert self.log.append_many(payloads) == [self.expect_append(p) for p in payloads]

    @rule(size=sizes)
    def append_and_sync(self, size: int) -> None:
        payload = self.payload(size)
        assert self.log.append_and_sync(payload) == self.expect_append(payload)
        self.durable = len(self.records)

    @rule()
    def sync(self) -> None:
        self.log.sync()
        self.durable = len(self.records)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        keep = data.draw(st.integers(0, len(self.records) - 1), label="keep through index")
        self.log.truncate_after(self.records[keep][0])
        del self.records[keep + 1 :]
        self.end = self.records[-1][0] + HEADER + len(self.records[-1][1])
        self.durable = keep + 1  # truncate_after makes the records it keeps durable

    @precondition(lambda self: self.segmented)
    @rule(data=st.data())
    def truncate_before(self, data: st.DataObject) -> None:
        targets = [lsn for lsn, _ in self.records] + [self.end]
        target = data.draw(st.sampled_from(targets), label="new head")
        new_head = self.log.truncate_before(target)
        assert new_head == max(target, self.head)
        dropped = sum(1 for lsn, _ in self.records if lsn < new_head)
        self.records = self.records[dropped:]
        # truncate_before flushes the whole log before it writes the head file
        self.durable = len(self.records) if new_head > self.head else self.durable - dropped
        self.head = new_head

    @rule()
    def reopen(self) -> None:
        """Close (which syncs) and open again: everything comes back."""
        assert self.sim is not None
        self.log.close()
        records = list(self.records)
        got = self.open_image(self.sim.cache_image())
        self.check_recovered(got, head=self.head, records=records, durable=len(records))
        assert got == records

    @rule()
    def process_crash(self) -> None:
        """The process dies, the kernel keeps its page cache: nothing appended is lost."""
        assert self.sim is not None
        records = list(self.records)
        got = self.open_image(self.sim.cache_image())
        self.check_recovered(got, head=self.head, records=records, durable=len(records))
        assert got == records

    @rule(seed=st.integers(0, 2**32 - 1))
    def power_loss(self, seed: int) -> None:
        """The machine loses power now: any image the kernel could leave."""
        assert self.sim is not None
        records, durable, head = list(self.records), self.durable, self.head
        image = self.sim.crash_image(random.Random(seed))
        got = self.open_image(image)
        self.check_recovered(got, head=head, records=records, durable=durable)

    @rule(
        operation=st.sampled_from(["sync", "truncate_after", "truncate_before"]),
        seed=st.integers(0, 2**32 - 1),
        data=st.data(),
    )
    def power_loss_during(self, operation: str, seed: int, data: st.DataObject) -> None:
        """The machine loses power at a seam call in the middle of a sync or a truncation."""
        sim = self.sim
        assert sim is not None
        rng = random.Random(seed)
        records, durable, head = list(self.records), self.durable, self.head
        new: tuple[int, int] | None = None
        images: list[CrashImage] = []
        sim.crash_hook = lambda _call: images.append(sim.crash_image(rng))
        try:
            if operation == "sync":
                self.log.sync()
            elif operation == "truncate_after" and records:
                keep = data.draw(st.integers(0, len(records) - 1), label="keep through index")
                new = (head, keep + 1)
                self.log.truncate_after(records[keep][0])
            elif operation == "truncate_before" and self.segmented:
                targets = [lsn for lsn, _ in records] + [self.end]
                target = data.draw(st.sampled_from(targets), label="new head")
                new = (self.log.truncate_before(target), len(records))
        finally:
            sim.crash_hook = None
        if not images:
            images.append(sim.crash_image(rng))
        image = images[data.draw(st.integers(0, len(images) - 1), label="crash point")]
        got = self.open_image(image)
        self.check_recovered(got, head=head, records=records, durable=durable, new=new)

    @invariant()
    def iteration_shows_the_model(self) -> None:
        if self.wal is None:
            return
        assert self.wal.head_lsn == self.head
        assert self.wal.next_lsn == self.end
        assert [(record.lsn, record.data) for record in self.wal] == self.records

    def teardown(self) -> None:
        if self.wal is not None:
            self.wal.close()
        shutil.rmtree(self.base, ignore_errors=True)


CrashingLog.TestCase.settings = settings(
    max_examples=5000 if SOAK else 300,
    stateful_step_count=80 if SOAK else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not SOAK,
)


TestCrashingLog = pytest.mark.slow(CrashingLog.TestCase)
