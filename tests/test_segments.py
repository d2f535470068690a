"""Segmented logs: file naming and sizes, size inference, and both truncations."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from mmwal import InvalidLSNError, MemStore, Record, SegmentStore, Wal, WalConfig
from mmwal._format import encode_head_file

CONFIG = WalConfig(max_record_size=4096)


def name(index: int) -> str:
    return f"{index:020d}.wal"


def log_files(directory: Path) -> list[Path]:
    """The files of the log itself: not its recovery point or state file for followers."""
    return sorted(p for p in directory.iterdir() if p.name not in {"recovery", "mmwal-ends"})


def listing(directory: Path) -> list[str]:
    """The log's files: segments and head, not the files mmwal keeps beside them."""
    return [p.name for p in log_files(directory)]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in listing(directory)}


def segment_files(directory: Path) -> list[str]:
    return [n for n in listing(directory) if n != "head"]


def log_bytes(directory: Path, segment_size: int) -> tuple[bytes, int]:
    """The concatenated segment files and the log offset of their first byte."""
    names = segment_files(directory)
    first = int(names[0][:20])
    assert names == [name(first + i) for i in range(len(names))]
    return b"".join((directory / n).read_bytes() for n in names), first * segment_size


def payloads_for(count: int, max_size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(max_size + 1)) for _ in range(count)]


def fill(wal: Wal, payloads: list[bytes]) -> list[Record]:
    return [Record(wal.append(p), p) for p in payloads]


# -- layout ------------------------------------------------------------------------------


def test_records_larger_than_a_segment(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    rng = random.Random(1)
    payloads = [rng.randbytes(1000) for _ in range(20)]
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads)
        assert [r.lsn for r in records] == [i * 1008 for i in range(20)]
        assert list(wal) == records
        assert wal.stats().segments_created == -(-20 * 1008 // 64)
    end = 20 * 1008
    assert listing(directory) == [name(i) for i in range(-(-end // 64))]
    assert len(listing(directory)) == 315
    assert all((directory / n).stat().st_size == 64 for n in listing(directory))
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        assert list(wal) == records
        assert [r.data for r in wal.iter_from(records[7].lsn)] == payloads[7:]
        assert wal.stats().segments_created == 0


def test_files_are_named_by_index_and_sized_exactly(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 100, CONFIG) as wal:
        # A frame ending exactly on a boundary does not create the next segment.
        wal.append(b"x" * 92)
        assert listing(directory) == [name(0)]
        wal.append(b"")
        assert listing(directory) == [name(0), name(1)]
        wal.append(b"y" * 250)
        wal.sync()
    assert listing(directory) == [name(i) for i in range(4)]
    for n in listing(directory):
        assert len(n) == 24
        assert (directory / n).stat().st_size == 100


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / "notes.txt").write_text("not a segment")
    (directory / "0000000000000000000.wal").write_bytes(b"\xff" * 10)
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        wal.append(b"data")
    with Wal.open_segmented(directory, None, CONFIG) as wal:
        assert [r.data for r in wal] == [b"data"]
    assert (directory / "notes.txt").read_text() == "not a segment"
    assert (directory / "0000000000000000000.wal").read_bytes() == b"\xff" * 10


# -- segment size -----------------------------------------------------------------------


def test_segment_size_none_infers_from_the_files(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 128, CONFIG) as wal:
        wal.append(b"a" * 300)
    with Wal.open_segmented(directory, None, CONFIG) as wal:
        assert isinstance(wal.store, SegmentStore)
        assert wal.store.segment_size == 128
        assert [r.data for r in wal] == [b"a" * 300]
        wal.append(b"b" * 300)
    assert {(directory / n).stat().st_size for n in listing(directory)} == {128}
    assert len(listing(directory)) == -(-616 // 128)


def test_new_log_default_segment_size(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log") as wal:
        assert isinstance(wal.store, SegmentStore)
        assert wal.store.segment_size == 64 * 1024 * 1024


@pytest.mark.parametrize("wrong", [64, 256, 129])
def test_contradicting_segment_size_names_both(tmp_path: Path, wrong: int) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 128, CONFIG) as wal:
        wal.append(b"z" * 300)
    before = snapshot(directory)
    with pytest.raises(ValueError, match="segment_size") as info:
        Wal.open_segmented(directory, wrong, CONFIG)
    message = str(info.value)
    assert str(wrong) in message
    assert "128" in message
    assert snapshot(directory) == before
    # The failed open released everything: the right size still opens.
    with Wal.open_segmented(directory, 128, CONFIG) as wal:
        assert [r.data for r in wal] == [b"z" * 300]


@pytest.mark.parametrize("bad", [0, -64, True])
def test_invalid_segment_size(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="segment_size"):
        Wal.open_segmented(tmp_path / "log", bad)


# -- truncate_before ------------------------------------------------------------------------


def test_truncate_before_drops_whole_segments(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    payloads = payloads_for(60, 100, seed=2)
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads)
        end = wal.next_lsn
        wal.sync()
        before = snapshot(directory)
        target = records[37]
        assert target.lsn % 64 != 0
        assert wal.truncate_before(target.lsn) == target.lsn
        assert wal.head_lsn == target.lsn
        assert list(wal) == records[37:]
        assert wal.next_lsn == end
        assert not wal.is_empty
        first = target.lsn // 64
        assert listing(directory) == [*(name(i) for i in range(first, -(-end // 64))), "head"]
        assert (directory / "head").read_bytes() == encode_head_file(target.lsn)
        # The kept segments are untouched, including their bytes before the head.
        assert all((directory / n).read_bytes() == before[n] for n in segment_files(directory))
        assert wal.append(b"after") == end
    with Wal.open_segmented(directory, None, CONFIG) as wal:
        assert wal.head_lsn == target.lsn
        assert list(wal) == [*records[37:], Record(end, b"after")]
        with pytest.raises(ValueError, match="below the head"):
            wal.iter_from(records[0].lsn)


def test_truncate_before_at_a_segment_start_keeps_that_segment(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, [b"a" * 56, b"b" * 56, b"c" * 56, b"d" * 10])
        assert records[2].lsn == 128
        assert wal.truncate_before(128) == 128
        assert segment_files(directory) == [name(2), name(3)]
        assert list(wal) == records[2:]


def test_truncate_before_below_the_head_is_a_no_op(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads_for(40, 80, seed=3))
        head = records[20].lsn
        assert wal.truncate_before(head) == head
        wal.sync()
        before = snapshot(directory)
        for lsn in (records[3].lsn, 0, head):
            assert wal.truncate_before(lsn) == head
            assert wal.head_lsn == head
            assert snapshot(directory) == before
            assert list(wal) == records[20:]


def test_truncate_before_a_non_record_start_raises(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads_for(30, 80, seed=4))
        wal.sync()
        before = snapshot(directory)
        for bad in (records[10].lsn + 1, records[10].lsn + 8, records[-1].lsn - 3):
            with pytest.raises(InvalidLSNError) as info:
                wal.truncate_before(bad)
            assert info.value.lsn == bad
        with pytest.raises(InvalidLSNError) as info:
            wal.truncate_before(wal.next_lsn + 1)
        assert info.value.before == wal.next_lsn
        assert snapshot(directory) == before
        assert wal.head_lsn == 0
        assert list(wal) == records


def test_truncate_before_the_end_drops_everything(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        fill(wal, payloads_for(20, 80, seed=5))
        end = wal.next_lsn
        assert wal.truncate_before(end) == end
        assert wal.is_empty
        assert list(wal) == []
        assert wal.append(b"fresh") == end
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        assert wal.head_lsn == end
        assert list(wal) == [Record(end, b"fresh")]


def test_truncate_before_everything_at_a_boundary_keeps_the_segment_size(tmp_path: Path) -> None:
    """Dropping every segment must not lose the log's segment size.

    When the end lies on a segment boundary, ``truncate_before(next_lsn)`` leaves
    only the head file. Reopening with ``segment_size=None`` must still find the
    log's size, not fall back to the 64 MiB default for a new log.
    """
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        fill(wal, [b"x" * 24] * 8)
        end = wal.next_lsn
        assert end == 256
        assert wal.truncate_before(end) == end
    with Wal.open_segmented(directory, None, CONFIG) as wal:
        assert wal.head_lsn == end
        assert wal.append(b"after") == end
    assert segment_files(directory) == [name(end // 64)]
    assert (directory / name(end // 64)).stat().st_size == 64


def test_truncate_before_on_single_file_and_memstore_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payloads = payloads_for(30, 200, seed=6)
    with Wal.open(path, CONFIG) as wal:
        records = fill(wal, payloads)
        wal.sync()
        before = path.read_bytes()
        for lsn in (records[10].lsn, records[-1].lsn, wal.next_lsn, 0):
            assert wal.truncate_before(lsn) == 0
            assert wal.head_lsn == 0
            assert list(wal) == records
        assert path.read_bytes() == before
        beside = sorted(p.name for p in tmp_path.iterdir() if p.name != "log.mmwal-ends")
        assert beside == ["log", "log.recovery"]

    store = MemStore(64)
    with Wal.with_store(store, CONFIG) as wal:
        records = fill(wal, payloads)
        image = store.getvalue()
        assert wal.truncate_before(records[20].lsn) == 0
        assert wal.head_lsn == 0
        assert list(wal) == records
        assert store.getvalue() == image


# -- truncate_after ----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 13, 29])
def test_truncate_after_segmented(tmp_path: Path, keep: int) -> None:
    directory = tmp_path / "log"
    payloads = payloads_for(30, 150, seed=7)
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads)
        wal.sync()
        before, _ = log_bytes(directory, 64)
        wal.truncate_after(records[keep].lsn)
        new_end = records[keep].lsn + 8 + len(records[keep].data)
        assert wal.next_lsn == new_end
        assert list(wal) == records[: keep + 1]
        # Segment files wholly past the end are gone; what is left past it is zero.
        assert listing(directory) == [name(i) for i in range(-(-new_end // 64))]
        data, base = log_bytes(directory, 64)
        assert base == 0
        assert data[:new_end] == before[:new_end]
        assert data[new_end:] == bytes(len(data) - new_end)
        assert all((directory / n).stat().st_size == 64 for n in listing(directory))
        assert wal.append(b"replacement") == new_end
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        assert list(wal) == [*records[: keep + 1], Record(new_end, b"replacement")]
        assert wal.recovery.discarded_bytes == 0


def test_truncate_after_ending_on_a_boundary_removes_the_next_segment(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, [b"a" * 56, b"b" * 56, b"c" * 100])
        wal.truncate_after(records[1].lsn)
        assert listing(directory) == [name(0), name(1)]
        assert wal.next_lsn == 128
        assert wal.append(b"d") == 128
        assert listing(directory) == [name(0), name(1), name(2)]
        assert list(wal) == [*records[:2], Record(128, b"d")]
    data, _ = log_bytes(directory, 64)
    assert data[128 + 9 :] == bytes(64 - 9)


def test_truncate_after_the_last_record_changes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads_for(10, 100, seed=8))
        wal.sync()
        before = snapshot(directory)
        wal.truncate_after(records[-1].lsn)
        assert snapshot(directory) == before
        assert list(wal) == records


def test_truncate_after_single_file_zeroes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payloads = payloads_for(50, 300, seed=9)
    with Wal.open(path, CONFIG) as wal:
        records = fill(wal, payloads)
        wal.truncate_after(records[20].lsn)
        new_end = records[21].lsn
        data = path.read_bytes()
        assert data[new_end:].count(0) == len(data) - new_end
        assert list(wal) == records[:21]
        assert wal.append(b"x") == new_end
    with Wal.open(path, CONFIG) as wal:
        assert list(wal) == [*records[:21], Record(new_end, b"x")]


def test_truncate_after_a_non_record_start_raises(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads_for(10, 100, seed=10))
        wal.sync()
        before = snapshot(directory)
        for bad in (records[4].lsn + 1, wal.next_lsn, wal.next_lsn + 100):
            with pytest.raises(InvalidLSNError):
                wal.truncate_after(bad)
        assert snapshot(directory) == before
        assert list(wal) == records


def test_truncate_after_below_the_head_raises(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 64, CONFIG) as wal:
        records = fill(wal, payloads_for(20, 100, seed=11))
        wal.truncate_before(records[10].lsn)
        with pytest.raises(ValueError, match="below the head"):
            wal.truncate_after(records[2].lsn)
        wal.truncate_after(records[10].lsn)
        assert list(wal) == [records[10]]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists descriptors through /proc")
def test_truncate_before_the_end_keeps_no_descriptor_on_a_removed_segment(tmp_path: Path) -> None:
    # Catches: the descriptor a store keeps for fdatasync left open on the
    # segment truncate_before removed (every segment, when it cuts at the end),
    # holding that segment's disk space until a flush of another segment.
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 4096, CONFIG) as wal:
        for _ in range(8):
            wal.append_and_sync(b"x" * 1016)
        end = wal.next_lsn
        assert end == 2 * 4096  # the end of segment 1, whose descriptor is kept
        assert wal.truncate_before(end) == end
        removed = [
            p for p in open_files() if p.startswith(str(directory)) and p.endswith("(deleted)")
        ]
        assert removed == []
        wal.append_and_sync(b"fresh")
    with Wal.open_segmented(directory, 4096, CONFIG) as wal:
        assert list(wal) == [Record(end, b"fresh")]


def open_files() -> list[str]:
    """The paths this process has descriptors open on (``/proc/self/fd``)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    return paths
