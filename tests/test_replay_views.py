"""``iter(copy=False)`` made fast: a per-record loop (``RecordViews``, in C) over runs.

The loop walks runs of checked frames that the log hands it a step at a time,
so these tests use steps of a few hundred bytes (the ``short_steps`` fixture)
and logs whose segments hold many: the rules (a view released on advance, on
truncation and on close) must hold within a run and across run boundaries.

The copying walk (``iter()``, ``_reading.read_records``) decodes batches too:
the same promises (never a record removed by a truncation or appended after the
iterator was made, never a bare ``OSError``) for records decoded before the
change, on the writer's handle and on a read-only one.
"""

from __future__ import annotations

import gc
import mmap
from collections.abc import Iterable
from pathlib import Path

import pytest

import mmwal
from mmwal import (
    CorruptionError,
    Record,
    RecoveryPolicy,
    SegmentStore,
    Wal,
    WalConfig,
    WalTruncatedError,
    _batches,
    _recordviews,
)

SEGMENT = 1 << 20
# A stretch of records: several runs of the short steps below.
_VIEW_CHUNK = 256
COUNT = 3 * _VIEW_CHUNK + 17


# The per-record loop in C (where built) and its Python twin: every test runs both.
LOOPS = {"c": _recordviews.RecordViews, "python": _recordviews.RecordViewsPython}


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Walk with one of the twins, in runs of about 20 records (many run boundaries)."""
    monkeypatch.setattr(_batches, "RecordViews", LOOPS[request.param])
    monkeypatch.setattr(_batches, "_VIEW_STEP_BYTES", 512)
    return str(request.param)


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


def _walk(walk: Iterable[Record]) -> tuple[list[tuple[int, bytes]], Exception | None]:
    """Read ``walk`` to its end or its error: (lsn, payload) pairs, and the error."""
    got: list[tuple[int, bytes]] = []
    try:
        got.extend((record.lsn, bytes(record.data)) for record in walk)
    except (CorruptionError, WalTruncatedError) as error:
        return got, error
    return got, None


@pytest.mark.parametrize("policy", list(RecoveryPolicy))
@pytest.mark.parametrize("damaged", [[5], [0, 1], [40, 90, 91], [-1]])
def test_a_damaged_segmented_log_reads_as_the_copying_walk_reads_it(
    tmp_path: Path, policy: RecoveryPolicy, damaged: list[int]
) -> None:
    # Records of 0 to 700 bytes in 4 KiB segments: many frames cross from one
    # mapping into the next (each a copied run of one).
    data = [bytes([i % 251]) * (i * 37 % 701) for i in range(120)]
    config = WalConfig(recovery_policy=policy)
    with Wal.open_segmented(tmp_path / "log", 4096, config) as wal:
        lsns = wal.append_many(data)
        wal.sync()
        for index in damaged:
            # A payload byte, or (for an empty payload) the length: a bad CRC either way.
            at = lsns[index] + 8 + len(data[index]) // 2 if data[index] else lsns[index] + 4
            wal.store.write(at, bytes([wal.store.read(at, 1)[0] ^ 0x10]))
        copied = wal.iter()
        viewed = wal.iter(copy=False)
        expected, expected_error = _walk(copied)
        got, error = _walk(viewed)
    assert got == expected
    assert len(expected) < len(data)
    assert type(error) is type(expected_error)
    assert [getattr(e, "offset", None) for e in (error, expected_error)] == [
        getattr(expected_error, "offset", None)
    ] * 2
    assert [e.offset for e in viewed.skipped] == [e.offset for e in copied.skipped]


@pytest.mark.parametrize("cut", [10, 45, 55])
def test_a_writer_in_another_handle_truncating_stops_a_read_only_walk(
    tmp_path: Path, cut: int
) -> None:
    data = payloads(60)
    with Wal.open_segmented(tmp_path / "log", 4096) as wal:
        lsns = wal.append_many(data)
        wal.sync()
        with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
            walk = iter(reader.iter(copy=False))
            seen = [bytes(next(walk).data) for _ in range(40)]
            # The writer's counter moves; the reader's lifetime hears nothing until
            # the walk looks at the counter, before its next record.
            wal.truncate_after(lsns[cut])
            got, error = _walk(walk)
    assert isinstance(error, WalTruncatedError)
    survivors = [(lsn, payload) for lsn, payload in zip(lsns, data, strict=True)][40 : cut + 1]
    assert got == survivors
    assert error.lsn == lsns[max(40, cut + 1)]
    assert seen == data[:40]


# -- the copying walk (iter(), copy=True) under appends, truncations and its own bounds ----------
#
# The walk decodes up to 256 records or 128 KiB of frames at a time, before it
# yields them: records decoded before a truncation must still be checked
# against it one by one. Written for mutation testing of ``_reading.py``.

BATCH = 256  # _reading._BATCH_RECORDS
BATCH_BYTES = 128 * 1024  # _reading._BATCH_BYTES


def small(count: int, tag: bytes = b"") -> list[bytes]:
    return [tag + b"%d:" % i + b"x" * (i % 7) for i in range(count)]


@pytest.mark.parametrize("copy", [True, False])
def test_an_iterator_never_yields_records_appended_after_it_was_made(
    tmp_path: Path, copy: bool
) -> None:
    # The end lies inside the third segment (a piece whose base is not 0), and
    # the new records land right after it in the same piece.
    with Wal.open_segmented(tmp_path / "log", 4096) as wal:
        data = small(700)
        wal.append_many(data)
        assert wal.next_lsn // 4096 == 2
        walk = wal.iter(copy=copy)
        wal.append_many(small(20, b"late "))
        assert [bytes(record.data) for record in walk] == data


def test_a_walk_that_ends_a_batch_exactly_at_the_byte_bound_goes_on(tmp_path: Path) -> None:
    # 128 frames of 1 KiB are exactly the batch's byte bound: the piece goes on
    # there, it has not ended (a good frame is never reported as damage).
    data = [bytes([i % 251]) * (1024 - 8) for i in range(3 * BATCH_BYTES // 1024 + 5)]
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_many(data)
        assert [record.data for record in wal] == data


def test_truncate_before_at_a_batch_boundary_raises_walTruncatedError(tmp_path: Path) -> None:
    # The walk stands after its first batch, in a segment that truncate_before
    # removes (and unmaps): the next record is gone, named by its LSN.
    data = small(1000)
    with Wal.open_segmented(tmp_path / "log", 8192) as wal:
        lsns = wal.append_many(data)
        assert lsns[BATCH] < 8192 <= lsns[-1]
        walk = iter(wal.iter())
        assert [next(walk).data for _ in range(BATCH)] == data[:BATCH]
        wal.truncate_before(lsns[-1])
        with pytest.raises(WalTruncatedError) as caught:
            next(walk)
        assert caught.value.lsn == lsns[BATCH]


def test_truncate_after_ahead_of_a_walk_yields_the_survivors_then_raises(tmp_path: Path) -> None:
    data = small(200)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        walk = iter(wal.iter())
        seen = [next(walk).data for _ in range(10)]
        wal.truncate_after(lsns[50])
        wal.append_many(small(30, b"new "))  # at the cut: never this walk's
        with pytest.raises(WalTruncatedError) as caught:
            seen.extend(record.data for record in walk)
        assert seen == data[:51]
        assert caught.value.lsn == lsns[51]


def _reader(directory: Path, mapped_chunks: int | None = None) -> Wal:
    return Wal.with_store(
        SegmentStore(directory, 4096, writable=False, mapped_chunks=mapped_chunks)
    )


@pytest.mark.parametrize("refresh_first", [False, True])
def test_a_read_only_walk_never_yields_what_the_writer_truncated_since(
    tmp_path: Path, refresh_first: bool
) -> None:
    # The reader's batch was decoded before the writer's cut; the writer's
    # counter (or a refresh that took it in) must stop it at the cut.
    directory = tmp_path / "log"
    data = small(200)
    with Wal.open_segmented(directory, 4096) as writer:
        lsns = writer.append_many(data)
        writer.sync()
        with _reader(directory) as reader:
            walk = iter(reader.iter())
            seen = [next(walk).data for _ in range(10)]
            writer.truncate_after(lsns[50])
            writer.append_many(small(30, b"new "))
            if refresh_first:
                reader.refresh()
            with pytest.raises(WalTruncatedError) as caught:
                seen.extend(record.data for record in walk)
    assert seen == data[:51]
    assert caught.value.lsn == lsns[51]


@pytest.mark.parametrize("frames", ["crossing", "aligned"])
def test_a_read_only_walk_without_the_state_file_finds_a_removed_segment_truncated(
    tmp_path: Path, frames: str
) -> None:
    # No published ends (lost, or a writer that keeps none): the reader learns
    # of a truncate_before only when the segment it needs next is gone. It then
    # looks at the head file and raises WalTruncatedError, not FileNotFoundError,
    # whether it needed that segment for a frame crossing into it or for the next
    # frame (64-byte frames fill each segment exactly).
    directory = tmp_path / "log"
    data = small(600) if frames == "crossing" else [b"%055d;" % i for i in range(600)]
    with Wal.open_segmented(directory, 4096) as writer:
        lsns = writer.append_many(data)
        writer.sync()
        (directory / "mmwal-ends").unlink()
        with _reader(directory, mapped_chunks=1) as reader:
            walk = iter(reader.iter())
            first = next(walk)
            writer.truncate_before(lsns[-1])
            got = [first]
            with pytest.raises(WalTruncatedError) as caught:
                got.extend(walk)
    assert caught.value.lsn > first.lsn
    assert [(r.lsn, r.data) for r in got] == list(zip(lsns, data, strict=False))[: len(got)]


@pytest.mark.parametrize("cut", ["before", "after"])
def test_a_walk_meeting_a_batch_released_mid_truncation_reports_the_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    # Catches: a truncation in another thread that has released the reader's
    # batch but not yet the walk itself (the log releases its holders one by one,
    # and the GIL may pass to the reader between them) making the reader's next
    # step raise a bare ValueError on the released view, where the record it
    # stands at was removed: it must be WalTruncatedError.
    data = payloads(COUNT)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        wal.sync()
        walk = wal.iter(copy=False)
        assert bytes(next(walk).data) == data[0]
        lifetime = wal._lifetime
        batches_only = mmwal._lifetime.Lifetime.release_views

        def release_batches_only(self: mmwal._lifetime.Lifetime) -> None:
            for holder in list(self._holders):
                if isinstance(holder, _batches._Views):
                    holder.release_views()

        monkeypatch.setattr(mmwal._lifetime.Lifetime, "release_views", release_batches_only)
        if cut == "before":
            wal.truncate_before(lsns[5])
        else:
            wal.truncate_after(lsns[0])
        monkeypatch.setattr(mmwal._lifetime.Lifetime, "release_views", batches_only)
        with pytest.raises(WalTruncatedError):
            next(walk)
        lifetime.release_views()
