"""LSNs a caller passes: mistakes are ``InvalidLSNError`` (a ``ValueError``), damage is not.

One set of rules for every method that takes an LSN (``iter(start=)``, ``iter_from``,
``truncate_after``, ``truncate_before``):

- inside a record: ``InvalidLSNError`` naming the record starts before and after;
- below the head: ``InvalidLSNError`` naming the head (``truncate_before``: a no-op,
  what it would drop is gone already);
- ``next_lsn``: valid for the readers (empty) and ``truncate_before`` (drops all),
  a mistake for ``truncate_after`` (no record starts there);
- past ``next_lsn``: ``InvalidLSNError`` naming ``next_lsn`` (``truncate_after``:
  the last record's start);
- a damaged record at a real record start: ``CorruptionError`` at that LSN, except
  for a reader under ``SKIP_BAD_RECORDS``, which steps over it when its length fits.

Every refused call leaves the log as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmwal import (
    CorruptionError,
    InvalidLSNError,
    MemStore,
    Record,
    RecoveryPolicy,
    Wal,
    WalConfig,
    WalError,
    _positions,
)

KINDS = ["file", "seg64", "seg4k", "mem"]
PAYLOADS = [bytes([65 + i % 26]) * (i * 7 % 50) for i in range(40)]


def open_log(kind: str, root: Path) -> Wal:
    config = WalConfig(max_record_size=1024)
    if kind == "file":
        return Wal.open(root / "log", config)
    if kind == "mem":
        return Wal.with_store(MemStore(), config)
    size = 64 if kind == "seg64" else 4096
    return Wal.open_segmented(root / "log", size, config)


@pytest.fixture(params=KINDS)
def wal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Wal]:
    log = open_log(request.param, tmp_path)
    for payload in PAYLOADS:
        log.append(payload)
    yield log
    log.close()


def readers(wal: Wal) -> list[Callable[[int], object]]:
    return [lambda lsn: list(wal.iter_from(lsn)), lambda lsn: list(wal.iter(start=lsn))]


def refused(call: Callable[[int], object], lsn: int) -> InvalidLSNError:
    with pytest.raises(InvalidLSNError) as caught:
        call(lsn)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, WalError)
    assert caught.value.lsn == lsn
    assert str(lsn) in str(caught.value)
    return caught.value


def snapshot(wal: Wal) -> tuple[list[Record], int, int]:
    return list(wal), wal.head_lsn, wal.next_lsn


def test_an_lsn_inside_a_record_names_the_records_around_it(wal: Wal) -> None:
    records = list(wal)
    before = snapshot(wal)
    calls = [*readers(wal), wal.truncate_after, wal.truncate_before]
    for record, following in zip(records, [*records[1:], None], strict=True):
        end = record.lsn + 8 + len(record.data)
        for inside in sorted({1, 4, 7, 8, 8 + len(record.data) // 2, end - record.lsn - 1}):
            lsn = record.lsn + inside
            if lsn >= end:
                continue
            for call in calls:
                error = refused(call, lsn)
                assert error.before == record.lsn
                if following is not None:
                    assert error.after == following.lsn
                elif call == wal.truncate_after:
                    assert error.after is None  # the end is no record to keep up to
                else:
                    assert error.after == wal.next_lsn
    assert snapshot(wal) == before


def test_past_the_end_is_a_mistake_for_every_method(wal: Wal) -> None:
    last = list(wal)[-1].lsn
    end = wal.next_lsn
    before = snapshot(wal)
    for lsn in (end + 1, end + 100, 2**40):
        for call in [*readers(wal), wal.truncate_before]:
            error = refused(call, lsn)
            assert (error.before, error.after) == (end, None)
            assert f"past the end of the log ({end})" in str(error)
        error = refused(wal.truncate_after, lsn)
        assert (error.before, error.after) == (last, None)
    assert snapshot(wal) == before


def test_the_end_itself(wal: Wal) -> None:
    records = list(wal)
    end = wal.next_lsn
    assert list(wal.iter_from(end)) == []
    assert list(wal.iter(start=end)) == []
    error = refused(wal.truncate_after, end)
    assert (error.before, error.after) == (records[-1].lsn, None)
    assert list(wal) == records
    head = wal.truncate_before(end)
    assert list(wal) == [r for r in records if r.lsn >= head]
    assert wal.append(b"next") == end


def test_below_the_head(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", 64) as wal:
        lsns = [wal.append(payload) for payload in PAYLOADS]
        head = wal.truncate_before(lsns[20])
        assert head == lsns[20]
        before = snapshot(wal)
        for lsn in (0, lsns[3], head - 1):
            for call in [*readers(wal), wal.truncate_after]:
                error = refused(call, lsn)
                assert (error.before, error.after) == (None, head)
                assert "below the head" in str(error)
            # truncate_before: what it would drop is gone already.
            assert wal.truncate_before(lsn) == head
        assert snapshot(wal) == before


def test_an_empty_log_has_no_record_to_name(tmp_path: Path) -> None:
    with Wal.open(tmp_path / "log") as wal:
        assert list(wal.iter_from(0)) == []
        error = refused(wal.truncate_after, 0)
        assert (error.before, error.after) == (None, None)
        error = refused(wal.truncate_after, 5)
        assert (error.before, error.after) == (None, None)
        error = refused(wal.iter_from, 5)
        assert (error.before, error.after) == (0, None)


def test_damage_at_a_real_record_start_stays_corruption(wal: Wal) -> None:
    records = list(wal)
    victim = records[17]
    assert victim.data
    wal.store.write(victim.lsn + 8, bytes([victim.data[0] ^ 0xFF]))
    for call in [*readers(wal), wal.truncate_after, wal.truncate_before]:
        with pytest.raises(CorruptionError) as caught:
            call(victim.lsn)
        assert caught.value.offset == victim.lsn
        assert "checksum mismatch" in caught.value.reason
        assert not isinstance(caught.value, ValueError)
        hint = caught.value.hint or ""
        assert "iterate from it with " in hint
        assert "WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)" in hint
        assert "steps over the damaged record (its data is lost)" in hint
    # Past the damage a record start cannot be told from a mistake: damage again.
    with pytest.raises(CorruptionError) as caught:
        wal.iter_from(records[20].lsn + 1)
    assert caught.value.offset == victim.lsn
    # Before the damage, mistakes are still mistakes.
    error = refused(wal.iter_from, records[5].lsn + 1)
    assert (error.before, error.after) == (records[5].lsn, records[6].lsn)
    # And intact records past the damage are still reachable by their LSN.
    assert next(iter(wal.iter_from(records[20].lsn))) == records[20]


def test_the_way_forward_the_damage_hint_names_holds(tmp_path: Path) -> None:
    # Under SKIP_BAD_RECORDS every reader started at a damaged record's own LSN
    # steps over it (listed in ``skipped`` where the reader has that list) and loses
    # that record only; truncations still refuse it. Catches a reader that refuses
    # the start its own hint names, or one that yields the damaged record.
    with open_log("seg4k", tmp_path) as wal:
        wal.append_many(PAYLOADS)
        records = list(wal)
    victim = records[17]
    assert victim.data
    with open_log("seg4k", tmp_path) as wal:
        wal.store.write(victim.lsn + 8, bytes([victim.data[0] ^ 0xFF]))
    skipping = WalConfig(max_record_size=1024, recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)
    after = records[18:]
    with Wal.open_segmented(tmp_path / "log", 4096, skipping) as wal:
        for walk in (wal.iter(victim.lsn), wal.iter_from(victim.lsn)):
            assert list(walk) == after
            assert [error.offset for error in walk.skipped] == [victim.lsn]
        views = wal.iter(victim.lsn, copy=False)
        assert [(lsn, bytes(data)) for lsn, data in views] == after
        assert [error.offset for error in views.skipped] == [victim.lsn]
        bounded = wal.iter(victim.lsn, records[20].lsn)
        assert list(bounded) == records[18:20]
        batched = [
            (record.lsn, bytes(record.data))
            for batch in wal.batches(victim.lsn)
            for record in batch
        ]
        assert batched == after
        assert list(wal.follow(victim.lsn, timeout=0)) == after
        assert list(wal.iter(records[16].lsn)) == [records[16], *after]
        for cut in (wal.truncate_after, wal.truncate_before):
            with pytest.raises(CorruptionError):
                cut(victim.lsn)
        assert list(wal) == [*records[:17], *after]


def test_a_length_no_policy_trusts_is_refused_from_its_own_lsn(tmp_path: Path) -> None:
    # A damaged length tells no reader where the next record starts: even under
    # SKIP_BAD_RECORDS the walk refuses to start there, and the hint does not
    # promise a step it cannot take.
    with open_log("seg4k", tmp_path) as wal:
        wal.append_many(PAYLOADS)
        records = list(wal)
    victim = records[17]
    with open_log("seg4k", tmp_path) as wal:
        wal.store.write(victim.lsn + 4, (4000).to_bytes(4, "little"))
    skipping = WalConfig(max_record_size=1024, recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)
    with Wal.open_segmented(tmp_path / "log", 4096, skipping) as wal:
        for call in (wal.iter, wal.iter_from, wal.batches):
            with pytest.raises(CorruptionError) as caught:
                call(victim.lsn)
            assert caught.value.offset == victim.lsn
            hint = caught.value.hint or ""
            assert "no policy can step over" in hint
            assert "SKIP_BAD_RECORDS" not in hint


def test_lsns_that_are_not_ints_are_type_errors(wal: Wal) -> None:
    calls: list[Callable[[object], object]] = [
        wal.iter_from,  # type: ignore[list-item]
        wal.truncate_after,  # type: ignore[list-item]
        wal.truncate_before,  # type: ignore[list-item]
    ]
    for call in calls:
        for bad in (True, 1.0, "8", None):
            with pytest.raises(TypeError):
                call(bad)


def test_the_walk_is_bounded(wal: Wal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``WALK_LIMIT`` the walk stops and names the last record start it reached."""
    records = list(wal)
    monkeypatch.setattr(_positions, "WALK_LIMIT", 100)
    target = records[-1].lsn + 1
    error = refused(wal.iter_from, target)
    assert error.before is not None
    assert error.before <= 100 + 58  # the bound plus at most one frame
    assert error.before in {r.lsn for r in records}
    assert error.after is None
    assert "walk of" in str(error)


def test_a_truncation_forgets_the_record_starts_past_the_cut(
    wal: Wal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walks remember record starts; after a cut and new appends none of them may be used.

    With every record start remembered, a stale one past the cut would start the
    next walk inside a new record and name wrong neighbours.
    """
    monkeypatch.setattr(_positions, "_LANDMARK_SPACING", 1)
    records = list(wal)
    refused(wal.iter_from, records[-1].lsn + 1)  # walks the whole log, remembering
    wal.truncate_after(records[9].lsn)
    new = [wal.append(b"z" * 13) for _ in range(40)]
    error = refused(wal.iter_from, new[30] + 3)
    assert (error.before, error.after) == (new[30], new[31])


def test_an_lsn_past_a_record_longer_than_the_limit_is_a_mistake_not_damage(
    tmp_path: Path,
) -> None:
    # Catches the nearest-LSN walk treating an intact record longer than today's
    # max_record_size as damage, which every other reader keeps as a record.
    path = tmp_path / "log.wal"
    with Wal.open(path) as wal:
        wal.append(b"a")
        long_lsn = wal.append(b"x" * 100)
        last = wal.append(b"c")
    with Wal.open(path, WalConfig(max_record_size=50)) as wal:
        end = wal.next_lsn  # where iter may start too
        for inside, before, after in ((long_lsn + 1, long_lsn, last), (last + 1, last, end)):
            with pytest.raises(InvalidLSNError) as raised:
                wal.iter(inside)
            assert (raised.value.before, raised.value.after) == (before, after)
        assert [record.lsn for record in wal.iter(last)] == [last]
