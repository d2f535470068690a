"""Damage: bit rot found after open, damaged logs opened under each recovery policy,
and seeking to places where no record starts.

Damage after open is written into the live log, either through ``wal.store.write``
or through another file descriptor (the mapping is shared, so the log sees it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmwal import (
    CorruptionError,
    FileStore,
    InvalidLSNError,
    MemStore,
    RecoveryPolicy,
    SegmentStore,
    Wal,
    WalConfig,
)

GRANULE = 4096
KINDS = ["file", "seg32", "seg64", "mem"]
SEGMENT_SIZES = {"seg32": 32, "seg64": 64}
MEM_CHUNK = 48
SKIP = WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)
STOP = WalConfig()
# Sizes chosen so that, with 32- and 64-byte segments, many frames span files.
SIZES = [5, 20, 33, 3, 60, 17, 40, 8, 25, 12, 70, 9]
PAYLOADS = [bytes([65 + i]) * size for i, size in enumerate(SIZES)]

Records = list[tuple[int, bytes]]


class Log:
    """A log of one kind in ``root``; can damage its bytes live or at rest."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.path = root / ("log.wal" if kind == "file" else "log")
        self.mem_image = b""

    def open(self, config: WalConfig | None = None) -> Wal:
        if self.kind == "mem":
            store = MemStore.from_bytes(self.mem_image, MEM_CHUNK) if self.mem_image else None
            return Wal.with_store(store if store is not None else MemStore(MEM_CHUNK), config)
        if self.kind == "file":
            return Wal.with_store(FileStore(self.path, window_size=GRANULE), config)
        return Wal.with_store(SegmentStore(self.path, SEGMENT_SIZES[self.kind]), config)

    def close(self, wal: Wal) -> None:
        if self.kind == "mem":
            store = wal.store
            assert isinstance(store, MemStore)
            self.mem_image = store.getvalue()
        wal.close()

    def create(self) -> tuple[Records, Wal]:
        wal = self.open()
        lsns = [wal.append(payload) for payload in PAYLOADS]
        wal.sync()
        return list(zip(lsns, PAYLOADS, strict=True)), wal

    def _file_at(self, offset: int) -> tuple[Path, int]:
        if self.kind == "file":
            return self.path, offset
        size = SEGMENT_SIZES[self.kind]
        return self.path / f"{offset // size:020d}.wal", offset % size

    def damage_live(self, wal: Wal, offset: int, data: bytes, *, via: str) -> None:
        """Overwrite log bytes at ``offset`` while ``wal`` is open."""
        if via == "store" or self.kind == "mem":
            wal.store.write(offset, data)
            return
        for i, byte in enumerate(data):
            path, local = self._file_at(offset + i)
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, bytes([byte]), local)
            finally:
                os.close(fd)

    def forget_point(self) -> None:
        """Remove the recovery point: the log is then one wal-db wrote, or lost it."""
        if self.kind == "mem":
            return  # a MemStore image carries no side files
        side = self.path / "recovery" if self.kind != "file" else Path(f"{self.path}.recovery")
        side.unlink(missing_ok=True)

    def files(self) -> dict[str, bytes]:
        if self.kind == "mem":
            return {"mem": self.mem_image}
        if self.kind == "file":
            return {"log": self.path.read_bytes()}
        return {p.name: p.read_bytes() for p in sorted(self.path.iterdir())}

    def damage_at_rest(self, offset: int, data: bytes) -> None:
        """Overwrite log bytes at ``offset`` of a closed log."""
        if self.kind == "mem":
            image = bytearray(self.mem_image)
            image[offset : offset + len(data)] = data
            self.mem_image = bytes(image)
            return
        for i, byte in enumerate(data):
            path, local = self._file_at(offset + i)
            with open(path, "r+b") as file:
                file.seek(local)
                file.write(bytes([byte]))


def flipped(wal: Wal, offset: int) -> bytes:
    return bytes([wal.store.read(offset, 1)[0] ^ 0x10])


def payload_middle(lsn: int, payload: bytes) -> int:
    return lsn + 8 + len(payload) // 2


def walk(wal: Wal) -> tuple[Records, CorruptionError | None, list[CorruptionError]]:
    """Iterate the log; return what was yielded, the error raised (if any), and skipped."""
    it = wal.iter()
    got: Records = []
    try:
        for record in it:
            got.append((record.lsn, record.data))
    except CorruptionError as error:
        return got, error, it.skipped
    return got, None, it.skipped


def cases() -> list[tuple[str, str]]:
    out = [(kind, "store") for kind in KINDS]
    out += [(kind, "fd") for kind in KINDS if kind != "mem"]
    return out


# -- bit rot found after open --------------------------------------------------------


@pytest.mark.parametrize(("kind", "via"), cases())
@pytest.mark.parametrize("victim", [0, 4, 10, 11])
def test_bit_rot_after_open_stops_iteration_at_the_damaged_record(
    tmp_path: Path, kind: str, via: str, victim: int
) -> None:
    log = Log(kind, tmp_path)
    records, wal = log.create()
    lsn, payload = records[victim]
    offset = payload_middle(lsn, payload)
    log.damage_live(wal, offset, flipped(wal, offset), via=via)

    got, error, skipped = walk(wal)
    assert got == records[:victim]
    assert error is not None, "iteration passed over a damaged record"
    assert error.offset == lsn
    assert error.reason
    assert "checksum" in error.reason
    assert skipped == []
    # The same from an iter_from before the damage.
    if victim > 0:
        it = wal.iter_from(records[victim - 1][0])
        first = next(iter(it))
        assert (first.lsn, first.data) == records[victim - 1]
        with pytest.raises(CorruptionError) as caught:
            next(iter(it))
        assert caught.value.offset == lsn
    log.close(wal)


def location(log: Log) -> str:
    return "<memory>" if log.kind == "mem" else str(log.path)


@pytest.mark.parametrize(("kind", "via"), cases())
@pytest.mark.parametrize("damage", ["payload", "length", "zeroed header"])
def test_iteration_names_the_damage_it_reaches(
    tmp_path: Path, kind: str, via: str, damage: str
) -> None:
    # What an engine logs when its replay stops: where, in which log, and why,
    # for each way a frame found after open can be bad.
    log = Log(kind, tmp_path)
    records, wal = log.create()
    lsn, payload = records[5]
    if damage == "payload":
        offset = payload_middle(lsn, payload)
        log.damage_live(wal, offset, flipped(wal, offset), via=via)
        reason = f"checksum mismatch in a record of length {len(payload)}"
    elif damage == "length":
        log.damage_live(wal, lsn + 4, (1 << 30).to_bytes(4, "little"), via=via)
        reason = f"implausible length {1 << 30}"
    else:
        log.damage_live(wal, lsn, bytes(8), via=via)
        reason = "an all-zero header (the end of the log)"
    got, error, _ = walk(wal)
    assert got == records[:5]
    assert error is not None
    assert (error.offset, error.reason, error.path) == (lsn, reason, location(log))
    log.close(wal)


@pytest.mark.parametrize(("kind", "via"), cases())
def test_skip_policy_iteration_steps_over_damaged_records(
    tmp_path: Path, kind: str, via: str
) -> None:
    log = Log(kind, tmp_path)
    records, first = log.create()
    log.close(first)
    wal = log.open(SKIP)
    assert wal.recovery.skipped == []
    victims = [2, 6, 11]
    for victim in victims:
        lsn, payload = records[victim]
        offset = payload_middle(lsn, payload)
        log.damage_live(wal, offset, flipped(wal, offset), via=via)
    # A flipped header CRC byte is damage with a plausible length too.
    lsn_crc, _ = records[8]
    log.damage_live(wal, lsn_crc, flipped(wal, lsn_crc), via=via)
    victims = sorted([*victims, 8])

    got, error, skipped = walk(wal)
    assert error is None
    assert got == [record for i, record in enumerate(records) if i not in victims]
    assert all(isinstance(item, CorruptionError) for item in skipped)
    assert [item.offset for item in skipped] == [records[i][0] for i in victims]
    assert all(item.reason for item in skipped)

    # Each iterator has its own list.
    again = wal.iter()
    assert again.skipped == []
    list(again)
    assert len(again.skipped) == len(victims)
    log.close(wal)


# -- opening a damaged log -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("victim", [1, 5, 9])
def test_opening_with_damage_in_the_middle_without_a_recovery_point(
    tmp_path: Path, kind: str, victim: int
) -> None:
    """A log wal-db wrote (no recovery point) opens exactly as before the point existed."""
    log = Log(kind, tmp_path)
    records, wal = log.create()
    log.close(wal)
    log.forget_point()
    lsn, payload = records[victim]
    log.damage_at_rest(payload_middle(lsn, payload), b"\x00\xff")

    # SKIP_BAD_RECORDS keeps the intact records after the damaged one.
    wal = log.open(SKIP)
    assert wal.recovery.recovery_point is None
    assert wal.recovery.end == records[-1][0] + 8 + len(records[-1][1])
    assert [item.offset for item in wal.recovery.skipped] == [lsn]
    assert all(isinstance(item, CorruptionError) for item in wal.recovery.skipped)
    got, error, skipped = walk(wal)
    assert error is None
    assert got == records[:victim] + records[victim + 1 :]
    assert [item.offset for item in skipped] == [lsn]
    new = wal.append(b"after")
    assert new == wal.recovery.end
    log.close(wal)
    log.forget_point()
    wal = log.open(SKIP)
    got, _, _ = walk(wal)
    assert got == [*records[:victim], *records[victim + 1 :], (new, b"after")]
    log.close(wal)
    log.forget_point()

    # The default policy cannot tell damage from a torn tail: it discards (and
    # quarantines) everything from the damaged record on.
    wal = log.open(STOP)
    assert wal.recovery.end == lsn
    assert wal.recovery.skipped == []
    assert wal.recovery.discarded_bytes > 0
    got, error, skipped = walk(wal)
    assert error is None
    assert got == records[:victim]
    assert wal.next_lsn == lsn
    assert not any(wal.store.read(lsn, wal.store.capacity - lsn))
    log.close(wal)


@pytest.mark.parametrize("kind", ["file", "seg32", "seg64"])
@pytest.mark.parametrize("victim", [1, 5, 9])
def test_damage_below_the_recovery_point_is_kept_and_reported(
    tmp_path: Path, kind: str, victim: int
) -> None:
    """Catches: a flipped byte in a synced, cleanly closed log discarding every record
    after it (found-item 2 of issue 8)."""
    log = Log(kind, tmp_path)
    records, wal = log.create()
    log.close(wal)
    end = records[-1][0] + 8 + len(records[-1][1])
    lsn, payload = records[victim]
    log.damage_at_rest(payload_middle(lsn, payload), b"\x00\xff")
    before = log.files()

    # The open does not meet the damage: it keeps the true end and changes nothing.
    for config in (STOP, SKIP):
        wal = log.open(config)
        assert (wal.recovery.end, wal.recovery.discarded_bytes) == (end, 0)
        got, error, skipped = walk(wal)
        if config is STOP:
            assert got == records[:victim]
            assert error is not None, "iteration ended silently at durable damage"
            assert error.offset == lsn
        else:
            assert error is None
            assert got == records[:victim] + records[victim + 1 :]
            assert [item.offset for item in skipped] == [lsn]
        assert wal.recovery.recovery_point == end
        log.close(wal)
        assert log.files() == before

    # A read-only open reads up to it too.
    readonly = (
        Wal.open(log.path, readonly=True)
        if kind == "file"
        else Wal.open_segmented(log.path, readonly=True)
    )
    with readonly:
        assert readonly.next_lsn == end
        got, error, _ = walk(readonly)
        assert got == records[:victim]
        assert error is not None
        assert error.offset == lsn
    assert log.files() == before


@pytest.mark.parametrize("kind", KINDS)
def test_skip_policy_drops_a_damaged_last_record_past_what_is_known_durable(
    tmp_path: Path, kind: str
) -> None:
    """Damage with nothing intact after it, and no point: a torn tail, not a skipped record."""
    log = Log(kind, tmp_path)
    records, wal = log.create()
    log.close(wal)
    log.forget_point()
    lsn, payload = records[-1]
    log.damage_at_rest(payload_middle(lsn, payload), b"\x00")
    wal = log.open(SKIP)
    assert wal.recovery.end == lsn
    got, error, _ = walk(wal)
    assert error is None
    assert got == records[:-1]
    log.close(wal)


@pytest.mark.parametrize("kind", ["file", "seg32", "seg64"])
@pytest.mark.parametrize("victim", [0, -1])
def test_a_damaged_record_open_meets_below_the_point_is_refused_not_cut(
    tmp_path: Path, kind: str, victim: int
) -> None:
    """Open checks the first record and the one the point names: damage, never a torn tail."""
    log = Log(kind, tmp_path)
    records, wal = log.create()
    log.close(wal)
    end = records[-1][0] + 8 + len(records[-1][1])
    lsn, payload = records[victim]
    log.damage_at_rest(payload_middle(lsn, payload), b"\x00")
    before = log.files()
    with pytest.raises(CorruptionError) as caught:
        log.open(STOP)
    assert caught.value.offset == lsn
    assert "recovery point" in str(caught.value)
    assert log.files() == before, "a refused open changed the files"
    intact = [record for record in records if record[0] != lsn]
    # SKIP_BAD_RECORDS steps over it, keeping the true end.
    wal = log.open(SKIP)
    assert wal.recovery.end == end
    assert [item.offset for item in wal.recovery.skipped] == [lsn]
    got, error, _ = walk(wal)
    assert (got, error) == (intact, None)
    log.close(wal)
    # A read-only open keeps the true end; iteration raises at the damage.
    readonly = (
        Wal.open(log.path, readonly=True)
        if kind == "file"
        else Wal.open_segmented(log.path, readonly=True)
    )
    with readonly:
        assert readonly.next_lsn == end
        got, error, _ = walk(readonly)
        assert got == records[: records.index((lsn, payload))]
        assert error is not None
        assert error.offset == lsn


@pytest.mark.parametrize("kind", KINDS)
def test_an_all_zero_header_is_the_end_even_under_skip(tmp_path: Path, kind: str) -> None:
    log = Log(kind, tmp_path)
    records, wal = log.create()
    log.close(wal)
    log.forget_point()
    victim = 6
    lsn = records[victim][0]
    log.damage_at_rest(lsn, bytes(8))
    wal = log.open(SKIP)
    assert wal.recovery.end == lsn
    assert wal.recovery.skipped == []
    got, error, _ = walk(wal)
    assert error is None
    assert got == records[:victim]
    assert not any(wal.store.read(lsn, wal.store.capacity - lsn)), "records after it survived"
    log.close(wal)


@pytest.mark.parametrize(("kind", "via"), cases())
def test_an_all_zero_header_found_after_open_ends_a_skip_iteration(
    tmp_path: Path, kind: str, via: str
) -> None:
    log = Log(kind, tmp_path)
    records, first = log.create()
    log.close(first)
    wal = log.open(SKIP)
    victim = 4
    log.damage_live(wal, records[victim][0], bytes(8), via=via)
    got, error, _ = walk(wal)
    assert error is None
    assert got == records[:victim], "a skip iteration went on past an all-zero header"
    log.close(wal)


# -- seeking -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_iter_from_a_place_where_no_record_starts_raises(tmp_path: Path, kind: str) -> None:
    log = Log(kind, tmp_path)
    records, wal = log.create()
    for lsn, payload in records:
        for inside in (1, 4, 7, 8, 8 + len(payload) // 2, 8 + len(payload) - 1):
            with pytest.raises(InvalidLSNError) as caught:
                wal.iter_from(lsn + inside)
            # A caller's mistake, not damage: the nearest record starts are named.
            assert caught.value.lsn == lsn + inside
            assert (caught.value.before, caught.value.after) == (lsn, lsn + 8 + len(payload))
            with pytest.raises(InvalidLSNError):
                wal.iter(start=lsn + inside)
    # Every record start works, and gives the rest of the log.
    for index, (lsn, _) in enumerate(records):
        got = [(r.lsn, r.data) for r in wal.iter_from(lsn)]
        assert got == records[index:]
    log.close(wal)


@pytest.mark.parametrize("kind", KINDS)
def test_iter_from_the_end_is_empty_and_past_it_is_a_mistake(tmp_path: Path, kind: str) -> None:
    log = Log(kind, tmp_path)
    _, wal = log.create()
    end = wal.next_lsn
    assert list(wal.iter_from(end)) == []
    for lsn in (end + 1, end + 1000, 2**40):
        with pytest.raises(InvalidLSNError) as caught:
            wal.iter_from(lsn)
        assert (caught.value.before, caught.value.after) == (end, None)
    log.close(wal)


@pytest.mark.parametrize("kind", KINDS)
def test_iter_from_a_damaged_record_raises(tmp_path: Path, kind: str) -> None:
    log = Log(kind, tmp_path)
    records, wal = log.create()
    lsn, payload = records[3]
    offset = payload_middle(lsn, payload)
    log.damage_live(wal, offset, flipped(wal, offset), via="store")
    with pytest.raises(CorruptionError) as caught:
        wal.iter_from(lsn)
    assert caught.value.offset == lsn
    log.close(wal)


@pytest.mark.parametrize("size", [32, 64])
def test_iter_from_below_the_head_raises_value_error(tmp_path: Path, size: int) -> None:
    wal = Wal.open_segmented(tmp_path / "log", size)
    lsns = [wal.append(payload) for payload in PAYLOADS]
    head_index = 7
    assert wal.truncate_before(lsns[head_index]) == lsns[head_index]
    assert wal.head_lsn == lsns[head_index]
    for lsn in (0, lsns[1], lsns[head_index - 1], lsns[head_index] - 1):
        with pytest.raises(ValueError, match="below the head"):
            wal.iter_from(lsn)
    got = [(r.lsn, r.data) for r in wal.iter_from(lsns[head_index])]
    assert got == list(zip(lsns, PAYLOADS, strict=True))[head_index:]
    wal.close()
    with Wal.open_segmented(tmp_path / "log", size) as again:
        with pytest.raises(ValueError):
            again.iter_from(0)
        assert [r.lsn for r in again.iter()] == lsns[head_index:]
