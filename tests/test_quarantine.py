"""Recovery never destroys bytes silently; read-only opens change nothing; repair is explicit."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

import mmwal


def _digest(path: Path) -> dict[str, str]:
    if path.is_dir():
        return {
            entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
            for entry in sorted(path.iterdir())
            if entry.name != "mmwal-ends"  # the state file published for followers
        }
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}


def _forget_point(path: Path) -> None:
    """Remove the recovery point, as a crash before one was written leaves the log."""
    side = path / "recovery" if path.is_dir() else Path(f"{path}.recovery")
    side.unlink()


def _garble(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_torn_tail_is_quarantined_before_it_is_zeroed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        lsns = wal.append_many([b"one", b"two", b"three", b"four"])
    _forget_point(path)
    _garble(path, lsns[2] + 9)
    tail = path.read_bytes()[lsns[2] : lsns[3] + 12]
    with caplog.at_level(logging.WARNING, logger="mmwal"), mmwal.open(path) as wal:
        assert [record.data for record in wal] == [b"one", b"two"]
        report = wal.recovery
    assert report.end == lsns[2]
    assert report.discarded_bytes == len(tail)
    assert report.quarantine_path is not None
    quarantine = Path(report.quarantine_path)
    assert quarantine.parent == tmp_path
    assert f"{lsns[2]:020d}" in quarantine.name
    assert quarantine.read_bytes() == tail
    assert path.read_bytes()[lsns[2] :].count(0) == len(path.read_bytes()) - lsns[2]
    assert any(report.quarantine_path in message for message in caplog.messages)


def test_clean_tail_makes_no_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        wal.append(b"x")
    with mmwal.open(path) as wal:
        assert wal.recovery.quarantine_path is None
        assert wal.recovery.discarded_bytes == 0
    # Besides the log: its recovery point and the state file published for followers.
    assert sorted(os.listdir(tmp_path)) == ["a.wal", "a.wal.mmwal-ends", "a.wal.recovery"]


def test_second_quarantine_at_the_same_lsn_keeps_the_first(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    paths = []
    for garbage in (b"\x01", b"\x02"):
        with mmwal.open(path) as wal:
            end = wal.next_lsn
            wal.append(b"kept")
        with path.open("r+b") as file:
            file.seek(end + 12)
            file.write(garbage)
        with mmwal.open(path) as wal:
            assert wal.recovery.quarantine_path is not None
            paths.append(wal.recovery.quarantine_path)
    assert len(set(paths)) == 2
    assert all(Path(p).exists() for p in paths)


def test_segmented_quarantine_is_not_a_segment(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with mmwal.open(directory, segment_size=32) as wal:
        lsns = wal.append_many([b"a" * 20, b"b" * 20, b"c" * 20])
    _forget_point(directory)
    segment = directory / "00000000000000000001.wal"
    _garble(segment, lsns[1] + 9 - 32)
    with mmwal.open(directory) as wal:
        assert [record.lsn for record in wal] == [lsns[0]]
        assert wal.recovery.quarantine_path is not None
        name = Path(wal.recovery.quarantine_path).name
    assert not name.endswith(".wal")
    with mmwal.open(directory) as wal:
        assert [record.lsn for record in wal] == [lsns[0]]


def test_readonly_open_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        lsns = wal.append_many([b"one", b"two", b"three"])
    _forget_point(path)
    _garble(path, lsns[1] + 9)
    before = _digest(tmp_path)
    with mmwal.open(path, readonly=True) as wal:
        assert [record.data for record in wal] == [b"one"]
        assert wal.recovery.discarded_bytes > 0
        assert wal.recovery.quarantine_path is None
        with pytest.raises(mmwal.WalReadOnlyError):
            wal.append(b"x")
        with pytest.raises(mmwal.WalReadOnlyError):
            wal.truncate_after(lsns[0])
        wal.sync()
    assert _digest(tmp_path) == before


def test_readonly_open_takes_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as writer:
        writer.append(b"one")
        with mmwal.open(path, readonly=True) as reader:
            assert [record.data for record in reader] == [b"one"]


def test_readonly_segmented_changes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with mmwal.open(directory, segment_size=64) as wal:
        wal.append_many([b"x" * 100, b"y" * 3])
        wal.truncate_before(wal.next_lsn - 11)
    before = _digest(directory)
    with mmwal.Wal.open_segmented(directory, readonly=True) as wal:
        assert [record.data for record in wal] == [b"y" * 3]
    assert _digest(directory) == before


def test_repair_is_never_implicit_and_keeps_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    content = b"definitely not a write-ahead log" * 10
    path.write_bytes(content)
    with pytest.raises(mmwal.CorruptionError) as refused:
        mmwal.open(path)
    assert "repair" in str(refused.value)
    assert path.read_bytes() == content
    # Repair keeps no record of it, so it refuses unless forced, and changes nothing.
    with pytest.raises(mmwal.CorruptionError, match="force"):
        mmwal.repair(path)
    assert path.read_bytes() == content
    report = mmwal.repair(path, force=True)
    assert (report.head, report.end) == (0, 0)
    assert [Path(p).read_bytes() for p in report.quarantined] == [content]
    with mmwal.open(path) as wal:
        assert wal.is_empty
        wal.append(b"fresh")
    with mmwal.open(path) as wal:
        assert [record.data for record in wal] == [b"fresh"]


def test_repair_of_a_healthy_log_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        wal.append_many([b"a", b"b"])
    before = path.read_bytes()
    report = mmwal.repair(path)
    assert report.quarantined == []
    assert report.end == 18
    assert path.read_bytes() == before


def test_repair_sets_segments_after_a_gap_aside(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with mmwal.open(directory, segment_size=32) as wal:
        lsns = wal.append_many([bytes([65 + i]) * 10 for i in range(12)])
    (directory / "00000000000000000002.wal").unlink()
    with pytest.raises(mmwal.CorruptionError, match="gap"):
        mmwal.open(directory)
    report = mmwal.repair(directory)
    assert all(Path(p).exists() for p in report.quarantined)
    assert any("gap" in action for action in report.actions)
    with mmwal.open(directory) as wal:
        kept = [record.lsn for record in wal]
    assert kept == [lsn for lsn in lsns if lsn + 18 <= 64]


def test_repair_moves_a_head_that_lies_in_a_missing_segment(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with mmwal.open(directory, segment_size=32) as wal:
        lsns = wal.append_many([bytes([65 + i]) * 10 for i in range(12)])
    (directory / "00000000000000000000.wal").unlink()
    with pytest.raises(mmwal.CorruptionError, match="missing"):
        mmwal.open(directory)
    report = mmwal.repair(directory)
    with mmwal.open(directory) as wal:
        records = list(wal)
    first_in_segment_1 = min(lsn for lsn in lsns if lsn >= 32)
    assert report.head == first_in_segment_1
    assert [record.lsn for record in records] == [lsn for lsn in lsns if lsn >= 32]
