"""Crash scenarios made on purpose, on the real stores over the power-loss simulator.

The ghost scenario (a lost page between intact ones), the lost first page, and
a crash at every seam call of ``truncate_after`` and ``truncate_before`` (issue
8, item 6), each with the pages not written back chosen rather than drawn. Also
the deliberately broken disks and stores the campaign in
``test_crash_simulation.py`` must catch.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmwal import Wal, WalConfig
from mmwal._chunked import ChunkedStore
from mmwal.testing import CrashImage, Layout, PageFate, PowerLossSimulator
from mmwal.testing._simdisk import Inode

HEADER = 8  # the frame header: crc32c u32, length u32 (DESIGN.md)
CONFIG = WalConfig(max_record_size=1 << 16)


def records_of(wal: Wal) -> list[tuple[int, bytes]]:
    return [(record.lsn, record.data) for record in wal]


def simulator_of(wal: Wal) -> PowerLossSimulator:
    store = wal.store
    assert isinstance(store, ChunkedStore)
    assert isinstance(store.syscalls, PowerLossSimulator)
    return store.syscalls


# -- the ghost scenario, made on purpose ----------------------------------------------


def fill_to(wal: Wal, records: list[tuple[int, bytes]], boundary: int, fill: int) -> None:
    """Append records of ``fill`` bytes, then one that ends exactly at ``boundary``."""
    while wal.next_lsn + 2 * (HEADER + fill) <= boundary:
        payload = bytes([len(records) % 250 + 1]) * fill
        records.append((wal.append(payload), payload))
    payload = bytes([len(records) % 250 + 1]) * (boundary - wal.next_lsn - HEADER)
    records.append((wal.append(payload), payload))
    assert wal.next_lsn == boundary


def ghost_setup(sim: PowerLossSimulator) -> tuple[Wal, list[tuple[int, bytes]]]:
    """Sync page 0 full of records; fill pages 1 to 3 without a sync.

    Records end exactly at each page boundary, so the first record of page 2 is
    where a record appended after recovery at 4096 with 4088 bytes would end.
    """
    wal = Wal.with_store(sim.open_store(), CONFIG)
    records: list[tuple[int, bytes]] = []
    fill_to(wal, records, 4096, 400)
    wal.sync()
    for page in (2, 3, 4):
        fill_to(wal, records, page * 4096, 300)
    return wal, records


def tear_page_one(_name: str, page: int) -> PageFate:
    return PageFate.OLD if page == 1 else PageFate.NEW


# msync: a later fdatasync writes back every page of the file, the zeroing the
# mutant below leaves unflushed included, and so hides it.
GHOST_LAYOUT = Layout(segment_size=1 << 16, sync_method="msync")
FIRST_SEGMENT = "wal/00000000000000000000.wal"


def ghost_image(sim: PowerLossSimulator) -> tuple[CrashImage, list[tuple[int, bytes]]]:
    wal, records = ghost_setup(sim)
    image = sim.crash_image(random.Random(1), fate=tear_page_one)
    wal.close()
    return image, records


def test_the_ghost_scenario_is_simulated_and_survived(tmp_path: Path) -> None:
    """Page 1 lost, pages 2 and 3 intact: recovery must cut at 4096 and zero the rest."""
    image, records = ghost_image(PowerLossSimulator(tmp_path / "run", GHOST_LAYOUT))
    synced = [r for r in records if r[0] < 4096]
    ghosts = [r for r in records if r[0] >= 8192]
    data = image.files[FIRST_SEGMENT]
    assert ghosts
    for lsn, payload in ghosts:  # the image really holds intact frames past the tear
        assert data[lsn + HEADER : lsn + HEADER + len(payload)] == payload
    wal = image.open(tmp_path / "recovered", CONFIG)
    assert records_of(wal) == synced
    assert wal.recovery.discarded_bytes > 0
    # The trap: a durable record from 4096 to 8192, where the first ghost starts.
    payload = b"\xee" * (8192 - 4096 - HEADER)
    assert wal.append(payload) == 4096
    wal.sync()
    for seed in range(20):
        after = simulator_of(wal).crash_image(random.Random(seed)).open(tmp_path / f"after-{seed}")
        assert records_of(after) == [*synced, (4096, payload)]
        after.close()
    wal.close()


_discarding = threading.local()


@contextmanager
def discarding_marked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Mark the time a store spends in ``discard_after``, for ``LazyZeroingSimulator``."""
    discard_after = ChunkedStore.discard_after

    def marked_discard_after(self: ChunkedStore, end: int) -> None:
        _discarding.active = True
        try:
            discard_after(self, end)
        finally:
            _discarding.active = False

    monkeypatch.setattr(ChunkedStore, "discard_after", marked_discard_after)
    yield
    monkeypatch.undo()


class LazyZeroingSimulator(PowerLossSimulator):
    """A deliberately broken store: ``discard_after`` zeroes but its flushes write nothing."""

    def msync(self, address: int, length: int) -> None:
        if not getattr(_discarding, "active", False):
            super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        if not getattr(_discarding, "active", False):
            super().fdatasync(fd)


class UnflushingSimulator(PowerLossSimulator):
    """A deliberately broken disk: ``msync`` and ``fsync`` write no data back."""

    def _write_back(self, inode: Inode, offset: int, data: bytes) -> None:
        del inode, offset, data


class NoMetadataSimulator(PowerLossSimulator):
    """A deliberately broken disk: data is written back, metadata is never committed."""

    def fsync(self, fd: int) -> None:
        pending = list(self.disk.pending)
        super().fsync(fd)
        self.disk.pending = pending

    def fsync_directory(self, path: str) -> None:
        del path


def test_the_ghost_check_catches_non_durable_zeroing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: if recovery's zeroing is not durable, the ghost comes back."""
    image, records = ghost_image(LazyZeroingSimulator(tmp_path / "run", GHOST_LAYOUT))
    with discarding_marked(monkeypatch):
        wal = image.open(tmp_path / "recovered", CONFIG)
        synced = records_of(wal)
        payload = b"\xee" * (8192 - 4096 - HEADER)
        wal.append(payload)
        wal.sync()
        durable = simulator_of(wal).durable_image()
        wal.close()
    after = records_of(durable.open(tmp_path / "after", CONFIG))
    assert after[: len(synced) + 1] == [*synced, (4096, payload)]
    assert after[len(synced) + 1 :], "the mutant should have let the ghosts back"
    assert after[len(synced) + 1] == next(r for r in records if r[0] == 8192)


# -- regressions ----------------------------------------------------------------------------


def lose_first_file_page(name: str, page: int) -> PageFate:
    first = name == FIRST_SEGMENT or (name == "wal.log" and page == 0)
    return PageFate.OLD if first else PageFate.NEW


@pytest.mark.parametrize(
    "layout",
    [Layout(segment_size=512), Layout(window_size=8192)],
    ids=["a record spanning two segments", "two records on two pages of one file"],
)
def test_losing_the_unsynced_first_page_is_not_a_refusal(tmp_path: Path, layout: Layout) -> None:
    """Found by the campaign: nothing synced, page 0 lost, a later page written back.

    Nothing was synced, so the empty log is the right recovery; the log must open
    (keeping the unreadable bytes in quarantine if it likes), not refuse as
    "not an mmwal/wal-db log".
    """
    sim = PowerLossSimulator(tmp_path / "run", layout)
    wal = Wal.with_store(sim.open_store(), CONFIG)
    if layout.segmented:
        wal.append(b"x" * 505)  # one frame of 513 bytes: the last byte in segment 1
    else:
        wal.append(b"a" * 3000)
        wal.append(b"b" * 3000)  # ends on page 1
    image = sim.crash_image(
        random.Random(0), fate=lose_first_file_page, metadata_ops=sim.pending_metadata
    )
    recovered = image.open(tmp_path / "recovered", CONFIG)
    assert records_of(recovered) == []
    recovered.close()
    wal.close()


def crash_points(
    tmp_path: Path, layout: Layout, operation: Callable[[Wal], object], records: int
) -> Iterator[tuple[str, int, Wal]]:
    """Yield, for every seam call of ``operation``, the log a crash at that call leaves.

    Before the operation, ``records`` records of 100 bytes are appended and synced.
    Every page not yet written back at the crash is lost (the disk keeps what it
    had), the harshest and most telling fate for an order of writes.
    """
    sim = PowerLossSimulator(tmp_path / "run", layout)
    wal = Wal.with_store(sim.open_store(), CONFIG)
    wal.append_many([bytes([n + 1]) * 100 for n in range(records)])
    wal.sync()
    images: list[tuple[str, CrashImage]] = []
    first = sim.calls

    def on_call(call: str) -> None:
        image = sim.crash_image(random.Random(0), fate=lambda _f, _p: PageFate.OLD, metadata_ops=0)
        images.append((f"{call} (seam call {sim.calls - first})", image))

    sim.crash_hook = on_call
    operation(wal)
    sim.crash_hook = None
    images.append(("after it returned", sim.durable_image()))
    wal.close()
    for number, (where, image) in enumerate(images):
        recovered = image.open(tmp_path / f"crash-{number}", CONFIG)
        yield where, len(list(recovered)), recovered
        recovered.close()


@pytest.mark.parametrize(
    "layout",
    [Layout(segment_size=1024), Layout(segment_size=512), Layout(window_size=8192)],
    ids=str,
)
def test_truncate_after_is_atomic(tmp_path: Path, layout: Layout) -> None:
    """Issue 8, item 6: a crash inside ``truncate_after`` leaves exactly the old or new log.

    100 synced records of 108 bytes over 512 B and 1 KiB segments (and one file),
    cut after the 11th, a crash at every seam call with every page not written
    back lost. The old code removed later segments durably before the zeroed tail
    of the cut segment reached the disk: a crash in between left 18 of the 100
    records on 1 KiB segments (14 on 512 B ones), neither the old log nor the new.
    """
    outcomes = {
        where: count
        for where, count, _wal in crash_points(
            tmp_path, layout, lambda wal: wal.truncate_after(10 * 108), records=100
        )
    }
    wrong = {where: count for where, count in outcomes.items() if count not in (100, 11)}
    assert not wrong, f"crashes that left neither 100 nor 11 records: {wrong}"
    assert outcomes["after it returned"] == 11
    assert 100 in outcomes.values()


def test_truncate_before_is_atomic(tmp_path: Path) -> None:
    """A crash inside ``truncate_before`` leaves the old head with every record, or the new."""
    layout = Layout(segment_size=512)
    results = set()
    for where, count, wal in crash_points(
        tmp_path, layout, lambda wal: wal.truncate_before(30 * 108), records=100
    ):
        results.add((wal.head_lsn, count))
        assert (wal.head_lsn, count) in {(0, 100), (30 * 108, 70)}, where
    assert results == {(0, 100), (30 * 108, 70)}


def lose_segment_one(name: str, page: int) -> PageFate:
    del page
    return PageFate.OLD if name == "wal/00000000000000000001.wal" else PageFate.NEW


def test_a_header_torn_across_segments_at_the_head_is_not_a_refusal(tmp_path: Path) -> None:
    """Found by the soak (seed 1,000,240): a torn first header split over two segments.

    The head (after ``truncate_before``) is 4 bytes before a segment boundary, so
    the first record's header lies in two files. Nothing after the head was
    synced; the second file's page was lost (its half of the header, the length,
    reads zero) while a later segment's page was written back. Recovery refused
    the log as "not an mmwal log" although a crash explains every byte: the right
    recovery is the empty log at the head.
    """
    layout = Layout(segment_size=1024)
    sim = PowerLossSimulator(tmp_path / "run", layout)
    wal = Wal.with_store(sim.open_store(), CONFIG)
    wal.append(b"a" * 1004)
    wal.append(b"")
    assert wal.truncate_before(wal.next_lsn) == 1020
    wal.append(b"x" * 2058)  # from 1020 into segment 3
    image = sim.crash_image(
        random.Random(0), fate=lose_segment_one, metadata_ops=sim.pending_metadata
    )
    wal.close()
    recovered = image.open(tmp_path / "recovered", CONFIG)
    assert recovered.head_lsn == 1020
    assert records_of(recovered) == []
    recovered.close()
