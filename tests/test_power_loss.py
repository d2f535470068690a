"""Durability against power loss, on the real stores: what a commit promises survives.

A process kill (``tests/test_kills.py``, ``tests/test_processes.py``) keeps the
page cache, so it cannot tell a ``sync`` that reached the disk from one that did
nothing. Here the real ``FileStore`` and ``SegmentStore`` run over
``PowerLossSimulator``; after each commit returns (``sync``, ``append_and_sync``,
``close``, ``truncate_after``, ``truncate_before``) the machine loses power with
the harshest fate for every page not written back (the disk keeps its old
contents) and no pending metadata surviving, and then with random fates. Every
record the commit covered must be in the reopened log.

The check can fail: with ``Store.flush`` or the seam's ``msync``/``fsync`` made
no-ops, the same check reports lost records (the mutation tests at the end).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mmwal import CorruptionError, Wal, WalConfig
from mmwal._chunked import ChunkedStore
from mmwal.testing import Layout, PowerLossSimulator
from mmwal.testing._simdisk import Inode

CONFIG = WalConfig(max_record_size=1 << 16)
LAYOUTS = [
    Layout(segment_size=512),
    Layout(segment_size=4096),
    Layout(window_size=8192),
    # Every sync method offered keeps the same proofs: the default (fdatasync)
    # above, msync here.
    Layout(segment_size=512, sync_method="msync"),
    Layout(window_size=8192, sync_method="msync"),
]
RANDOM_CRASHES = 5

Commit = Callable[[Wal], None]


def sync(wal: Wal) -> None:
    wal.sync()


def append_and_sync(wal: Wal) -> None:
    wal.append_and_sync(b"committed by append_and_sync")


def close(wal: Wal) -> None:
    wal.close()


def truncate_after(wal: Wal) -> None:
    records = list(wal)
    wal.truncate_after(records[len(records) // 2].lsn)


def truncate_before(wal: Wal) -> None:
    records = list(wal)
    wal.truncate_before(records[len(records) // 3].lsn)


COMMITS: list[Commit] = [sync, append_and_sync, close, truncate_after, truncate_before]


def lost_after_power_loss(
    root: Path,
    layout: Layout,
    commit: Commit,
    simulator: type[PowerLossSimulator] = PowerLossSimulator,
) -> list[str]:
    """Run a workload, ``commit``, then lose power; return what was lost that was promised."""
    sim = simulator(root / "run", layout)
    wal = Wal.with_store(sim.open_store(), CONFIG)
    rng = random.Random(7)
    for number in range(60):
        wal.append(number.to_bytes(4, "little") * rng.randint(0, 300))
        if number == 20:
            wal.sync()
    commit(wal)
    promised = [(record.lsn, record.data) for record in wal] if not wal.closed else None
    if promised is None:
        promised = [(record.lsn, record.data) for record in sim.cache_image().open(root / "all")]
    images = [sim.durable_image()] + [sim.crash_image(rng) for _ in range(RANDOM_CRASHES)]
    if not wal.closed:
        wal.close()
    problems: list[str] = []
    for number, image in enumerate(images):
        try:
            recovered = image.open(root / f"crash-{number}", CONFIG)
            try:
                got = [(record.lsn, record.data) for record in recovered]
            finally:
                recovered.close()
        except CorruptionError as error:
            # A recovery point that names bytes the disk lost reads as damage.
            problems.append(f"crash {number}: {error.reason}")
            continue
        if got != promised:
            problems.append(
                f"crash {number}: {len(got)} records back of the {len(promised)} "
                f"{commit.__name__} made durable"
            )
    return problems


@pytest.mark.parametrize(
    ("layout", "commit"),
    [
        (layout, commit)
        for layout in LAYOUTS
        for commit in COMMITS
        # a single file keeps its prefix: truncate_before changes nothing there
        if layout.segmented or commit is not truncate_before
    ],
    ids=lambda value: value.__name__ if callable(value) else str(value),
)
def test_a_commit_survives_power_loss(tmp_path: Path, layout: Layout, commit: Commit) -> None:
    assert lost_after_power_loss(tmp_path, layout, commit) == []


class NoWriteBack(PowerLossSimulator):
    """A disk whose ``msync`` and ``fsync`` report success and write no data back."""

    def _write_back(self, inode: Inode, offset: int, data: bytes) -> None:
        del inode, offset, data


@pytest.mark.parametrize("commit", [sync, append_and_sync, close], ids=lambda c: c.__name__)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_the_check_catches_a_flush_that_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: Layout, commit: Commit
) -> None:
    """Mutation check: a ``Store.flush`` that returns at once loses committed records."""

    def flush(self: ChunkedStore, start: int, end: int) -> None:
        del self, start, end

    monkeypatch.setattr(ChunkedStore, "flush", flush)
    assert lost_after_power_loss(tmp_path, layout, commit)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_the_check_catches_a_disk_that_writes_nothing_back(tmp_path: Path, layout: Layout) -> None:
    """Mutation check: ``msync`` and ``fsync`` that succeed without writing lose the sync."""
    assert lost_after_power_loss(tmp_path, layout, sync, simulator=NoWriteBack)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_the_simulator_keeps_no_descriptor_of_a_closed_log(tmp_path: Path) -> None:
    # Catches: the simulator holding every mapping a store made (strongly), so the
    # descriptor of each mapping the store let go stayed open after close: a long
    # campaign (the stateful soak) ran out of descriptors.
    import gc

    gc.disable()  # what is freed must be freed at once, not by a later collection
    try:
        sim = PowerLossSimulator(tmp_path / "log", Layout(segment_size=512))
        wal = Wal.with_store(sim.open_store(), WalConfig(max_record_size=1 << 16))
        wal.append_many([bytes(300)] * 40)  # 24 segments of 512 bytes
        wal.sync()
        wal.close()
        held = []
        for fd in Path("/proc/self/fd").iterdir():
            try:
                target = fd.readlink()
            except OSError:
                continue
            if str(tmp_path) in str(target):
                held.append(target)
        assert held == []
    finally:
        gc.enable()
