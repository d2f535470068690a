"""What a writable open says about damage below the recovery point: where, and what to do.

The error is the user's only guide at that moment: it names the file, the LSN of
the damaged record, and the ways forward (``SKIP_BAD_RECORDS``, which costs the
damaged record, or ``repair``). Added for mutation testing: mutants that drop the
path or the hint of this error survived every other test.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from spec import spec_frame

from mmwal import CorruptionError, MemStore, RecoveryPolicy, Wal, WalConfig, repair
from mmwal._format import RECOVERY_FILE_NAME, RecoveryPoint, encode_recovery_point


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_damage_below_the_point_names_the_file_the_record_and_the_ways_forward(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "log"

    def open_log() -> Wal:
        return Wal.open(path) if kind == "file" else Wal.open_segmented(path, 4096)

    with open_log() as wal:
        lsns = [wal.append(b"record %04d" % i) for i in range(200)]
    victim = lsns[0]  # the head: every open checks it against the point
    files = sorted(path.glob("*.wal")) if kind == "segments" else [path]
    segment, offset = divmod(victim + 8, 4096) if kind == "segments" else (0, victim + 8)
    target = files[segment]
    data = bytearray(target.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as caught:
        open_log()
    error = caught.value
    assert error.offset == victim
    assert error.path == str(path)
    assert error.hint is not None
    assert error.hint.startswith("nothing was changed")
    # One sentence: each way forward with the option to pass and what it costs.
    assert error.hint == (
        "nothing was changed; open with "
        "WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS) to read on past the "
        "damage, which skips the damaged record (its data is lost; it is listed in "
        "Wal.recovery.skipped), or run mmwal.repair() to cut the log at the damage, keeping "
        "what follows in a quarantine file"
    )
    # And the option it names does what it says it costs: that record, no other.
    skipping = WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)
    reopened = (
        Wal.open(path, skipping) if kind == "file" else Wal.open_segmented(path, 4096, skipping)
    )
    with reopened as wal:
        assert [damage.offset for damage in wal.recovery.skipped] == [victim]
        assert [record.lsn for record in wal] == lsns[1:]
    assert str(path) in str(error)


def test_a_file_that_is_no_log_is_refused_with_what_was_found_and_the_way_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "not-a-log"
    content = b"this is not a log at all" * 20  # length field " is ": 544 MB
    path.write_bytes(content)
    with pytest.raises(CorruptionError) as caught:
        Wal.open(path)
    error = caught.value
    assert error.path == str(path)
    assert error.reason.startswith("no valid record starts at the head (")
    assert "(implausible length)" in error.reason
    assert "nonzero bytes lie at offset 8:" in error.reason  # the first past the header
    assert error.hint is not None
    assert error.hint.startswith("nothing was changed")
    assert "mmwal.repair(path, force=True)" in error.hint
    assert "mmwal repair --force PATH" in error.hint
    assert "or run mmwal.repair(path, force=True)" in error.hint
    assert error.hint.endswith("to quarantine the unreadable bytes and start afresh")
    assert path.read_bytes() == content


# -- what an open that discards a torn tail reports and logs -------------------------------


def _tear_last_record(path: Path) -> tuple[list[int], int]:
    """Write three records, close, flip a byte of the last one and drop the point."""
    with Wal.open(path) as wal:
        lsns = wal.append_many([b"first", b"second", b"third"])
        end = wal.next_lsn
    Path(f"{path}.recovery").unlink()  # a crash before the point covered the last record
    data = bytearray(path.read_bytes())
    data[lsns[2] + 8] ^= 0xFF
    path.write_bytes(bytes(data))
    return lsns, end


def test_a_torn_tail_is_reported_with_its_stop_and_logged_with_where_it_was_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log"
    lsns, end = _tear_last_record(path)
    with caplog.at_level(logging.WARNING, logger="mmwal"), Wal.open(path) as wal:
        report = wal.recovery
    assert report.end == lsns[2]
    assert report.stop is not None
    assert report.stop.value == "checksum mismatch"
    assert report.discarded_bytes == end - lsns[2]
    assert report.quarantine_path is not None
    assert Path(report.quarantine_path).exists()
    messages = [r.getMessage() for r in caplog.records if r.name == "mmwal"]
    expected = (
        f"recovered {path} to LSN {lsns[2]}; discarded {end - lsns[2]} bytes past it "
        f"(checksum mismatch), kept in {report.quarantine_path}"
    )
    assert messages == [expected]


def test_a_clean_open_reports_no_quarantine_and_the_zero_header_it_stopped_at(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log"
    with Wal.open(path) as wal:
        wal.append(b"only")
    with caplog.at_level(logging.WARNING, logger="mmwal"), Wal.open(path) as wal:
        report = wal.recovery
    assert report.quarantine_path is None
    assert report.discarded_bytes == 0
    assert report.stop is not None
    assert report.stop.value == "an all-zero header (the end of the log)"
    assert not caplog.records


def test_a_store_with_no_place_for_a_quarantine_says_so_in_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torn = bytearray(spec_frame(b"torn record"))
    torn[-1] ^= 0xFF
    image = spec_frame(b"kept") + bytes(torn)
    with caplog.at_level(logging.WARNING, logger="mmwal"):
        wal = Wal.with_store(MemStore.from_bytes(image))
    with wal:
        assert wal.recovery.quarantine_path is None
        assert wal.recovery.end == len(spec_frame(b"kept"))
    [message] = [r.getMessage() for r in caplog.records if r.name == "mmwal"]
    assert message.endswith(
        f"discarded {len(torn)} bytes past it (checksum mismatch), "
        "kept in no quarantine (the store has no place for it)"
    )


# -- damage at the record the point names ------------------------------------------------


def _flip_last_record(path: Path, payloads: list[bytes]) -> list[int]:
    """Write ``payloads``, close (a point at the end), flip a byte of the last record."""
    with Wal.open(path) as wal:
        lsns = wal.append_many(payloads)
    assert Path(f"{path}.recovery").exists()
    data = bytearray(path.read_bytes())
    data[lsns[-1] + 8] ^= 0xFF
    path.write_bytes(bytes(data))
    return lsns


def test_damage_to_the_record_the_point_names_is_refused_naming_why(tmp_path: Path) -> None:
    path = tmp_path / "log"
    lsns = _flip_last_record(path, [b"one", b"two", b"three"])
    before = path.read_bytes()
    with pytest.raises(CorruptionError) as caught:
        Wal.open(path)
    assert caught.value.offset == lsns[-1]
    assert "(checksum mismatch), below the recovery point" in caught.value.reason
    assert path.read_bytes() == before


def test_a_damaged_only_record_is_skipped_once(tmp_path: Path) -> None:
    # The head is also the record the point names: it is one damaged record, not two.
    path = tmp_path / "log"
    [lsn] = _flip_last_record(path, [b"alone"])
    config = WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)
    with Wal.open(path, config, readonly=True) as wal:
        assert [error.offset for error in wal.recovery.skipped] == [lsn]


# -- repair does not trust the point --------------------------------------------------------


def test_repair_cuts_at_damage_below_the_point_that_the_point_would_step_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log"
    with Wal.open(path) as wal:
        lsns = wal.append_many([b"record %02d" % i for i in range(20)])
    assert Path(f"{path}.recovery").exists()
    data = bytearray(path.read_bytes())
    data[lsns[10] + 8] ^= 0xFF  # neither the head nor the record the point names
    path.write_bytes(bytes(data))
    repair(path)
    with Wal.open(path) as wal:
        assert [r.lsn for r in wal] == lsns[:10]


# -- a damaged last record that ends exactly at the store's end ----------------------------

SKIP = WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS)


def _kept_then_damaged() -> tuple[bytes, bytes]:
    """A good frame, then a frame with a plausible length whose checksum fails."""
    damaged = bytearray(spec_frame(b"damaged"))
    damaged[-1] ^= 0xFF
    return spec_frame(b"kept"), bytes(damaged)


def test_a_skipped_record_at_the_store_end_is_a_torn_tail_logged_as_the_end_of_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The scan steps over the damaged record to the store's end (no stop) and finds
    # no intact frame after it, so the record is a tail, not a skipped record.
    kept, damaged = _kept_then_damaged()
    image = kept + damaged
    with caplog.at_level(logging.WARNING, logger="mmwal"):
        wal = Wal.with_store(MemStore.from_bytes(image, len(image)), SKIP)
    with wal:
        assert wal.recovery.stop is None
        assert wal.recovery.end == len(kept)
        assert wal.recovery.skipped == []
    [message] = [r.getMessage() for r in caplog.records if r.name == "mmwal"]
    assert f"discarded {len(damaged)} bytes past it (end of store), kept in" in message


def test_a_skipped_record_the_point_names_at_the_store_end_is_reported_as_a_checksum_failure() -> (
    None
):
    # The scan from the point steps over the record (no stop) and meets the store's
    # end: the record was whole, so the reason is its checksum, not a short payload.
    kept, damaged = _kept_then_damaged()
    image = kept + damaged
    store = MemStore.from_bytes(image, len(image))
    crc, length = struct.unpack_from("<II", damaged)
    point = RecoveryPoint(len(image), len(kept), crc, length, unit_size=0)
    store.save_side_file(RECOVERY_FILE_NAME, encode_recovery_point(point))
    with Wal.with_store(store, SKIP) as wal:
        assert wal.recovery.recovery_point == len(image)
        assert wal.recovery.end == len(image)
        [error] = wal.recovery.skipped
    assert error.offset == len(kept)
    assert "(checksum mismatch), below the recovery point" in error.reason


def test_damage_to_an_oversized_record_the_point_names_is_refused_as_its_length(
    tmp_path: Path,
) -> None:
    # Larger than today's max_record_size, its checksum is checked in place and
    # fails: the reason is the scan's own (an implausible length), not a guess.
    path = tmp_path / "log"
    lsns = _flip_last_record(path, [b"small", b"x" * 100])
    with pytest.raises(CorruptionError) as caught:
        Wal.open(path, WalConfig(max_record_size=50))
    assert caught.value.offset == lsns[-1]
    assert "(implausible length), below the recovery point" in caught.value.reason


def test_a_store_of_only_skipped_records_is_refused_naming_their_checksum() -> None:
    # Under SKIP_BAD_RECORDS the scan steps over both frames to the store's end
    # (no stop) and keeps none: the refusal names the checksum failure at the head.
    first = bytearray(spec_frame(b"first"))
    first[-1] ^= 0xFF
    _, second = _kept_then_damaged()
    image = bytes(first) + second
    store = MemStore.from_bytes(image, len(image))
    with pytest.raises(CorruptionError) as caught:
        Wal.with_store(store, SKIP)
    assert caught.value.offset == 0
    assert caught.value.reason.startswith(
        "no valid record starts at the head (checksum mismatch), yet nonzero bytes lie at "
        f"offset {len(first)}:"
    )
