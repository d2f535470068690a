"""``iter(copy=False)`` made fast: a per-record loop (``RecordViews``, in C) over runs.

The loop walks runs of checked frames that the log hands it a step at a time,
so these tests use steps of a few hundred bytes (the ``short_steps`` fixture)
and logs whose segments hold many: the rules (a view released on advance, on
truncation and on close) must hold within a run and across run boundaries.
"""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest

import mmwal
from mmwal import Record, Wal, WalTruncatedError, _batches

SEGMENT = 1 << 20
# A stretch of records: several runs of the short steps below.
_VIEW_CHUNK = 256
COUNT = 3 * _VIEW_CHUNK + 17


@pytest.fixture(autouse=True)
def short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walk runs of about 20 records, so a walk crosses many run boundaries."""
    monkeypatch.setattr(_batches, "_VIEW_STEP_BYTES", 512)


def payloads(count: int) -> list[bytes]:
    return [f"{i}:".encode() * (1 + i % 13) for i in range(count)]


def test_each_view_is_released_when_the_next_is_asked_across_chunks(tmp_path: Path) -> None:
    data = payloads(COUNT)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        held: list[Record] = []
        for record in wal.iter(copy=False):
            if held:
                with pytest.raises(ValueError, match="released"):
                    bytes(held[-1].data)
            assert bytes(record.data) == data[len(held)]
            assert record.lsn == lsns[len(held)]
            held.append(record)
        assert len(held) == COUNT
        with pytest.raises(ValueError, match="released"):
            bytes(held[-1].data)


def test_close_releases_the_views_made_but_not_yet_yielded(tmp_path: Path) -> None:
    wal = Wal.open_segmented(tmp_path / "log", SEGMENT)
    wal.append_many(payloads(COUNT))
    before = {id(view) for view in _live_map_views()}
    walk = iter(wal.iter(copy=False))
    first = next(walk)
    wal.close()
    with pytest.raises(ValueError, match="released"):
        bytes(first.data)
    # The chunk's other records were made with the first: none may still pin
    # the mapping (close would have had to leave it mapped).
    assert [view for view in _live_map_views() if id(view) not in before] == []
    del walk


def _live_map_views() -> list[memoryview]:
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, memoryview) and not _released(o) and isinstance(o.obj, mmap.mmap)
    ]


def _released(view: memoryview) -> bool:
    try:
        view.nbytes  # noqa: B018
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("at", [10, _VIEW_CHUNK - 1, _VIEW_CHUNK + 3])
def test_truncate_after_mid_chunk_yields_the_survivors_then_raises(tmp_path: Path, at: int) -> None:
    data = payloads(COUNT)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        keep = 2 * _VIEW_CHUNK + 5
        walk = iter(wal.iter(copy=False))
        seen = [bytes(next(walk).data) for _ in range(at + 1)]
        held = next(walk)
        wal.truncate_after(lsns[keep])
        with pytest.raises(ValueError, match="released"):
            bytes(held.data)
        seen.append(data[at + 1])
        with pytest.raises(WalTruncatedError) as caught:
            seen.extend(bytes(record.data) for record in walk)
        assert seen == data[: keep + 1]
        assert caught.value.lsn == lsns[keep + 1]


def test_truncate_after_below_the_walk_raises_at_the_next_record(tmp_path: Path) -> None:
    data = payloads(COUNT)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        walk = iter(wal.iter(copy=False))
        for _ in range(_VIEW_CHUNK + 20):
            next(walk)
        wal.truncate_after(lsns[_VIEW_CHUNK])
        with pytest.raises(WalTruncatedError) as caught:
            next(walk)
        assert caught.value.lsn == lsns[_VIEW_CHUNK + 20]


def test_an_abandoned_walk_leaves_nothing_pinned(tmp_path: Path) -> None:
    wal = Wal.open_segmented(tmp_path / "log", SEGMENT)
    wal.append_many(payloads(COUNT))
    walk = iter(wal.iter(copy=False))
    record = next(walk)
    del walk  # the generator is finalised here, its views released
    with pytest.raises(ValueError, match="released"):
        bytes(record.data)
    wal.close()


@pytest.mark.parametrize("segmented", [False, True])
def test_a_smaller_max_record_size_reads_long_records_in_every_walk(
    tmp_path: Path, segmented: bool
) -> None:
    # Catches: batches() and iter(copy=False) reporting a healthy log as damaged
    # ("implausible length") when it was opened with a max_record_size below the
    # length of records it holds, where iter() reads them (a CRC-checked frame is
    # a record whatever its length).
    payloads = [b"x" * 100, b"y" * 5, b"z" * 3000, b"w"]
    path = tmp_path / ("log" if segmented else "a.wal")
    size = 4096 if segmented else None
    with mmwal.open(path, segment_size=size) as wal:
        wal.append_many(payloads)
    config = mmwal.WalConfig(max_record_size=10)
    with mmwal.open(path, segment_size=size, config=config, readonly=True) as wal:
        assert [bytes(record.data) for record in wal.iter()] == payloads
        assert [bytes(record.data) for record in wal.iter(copy=False)] == payloads
        assert [bytes(record.data) for batch in wal.batches() for record in batch] == payloads
