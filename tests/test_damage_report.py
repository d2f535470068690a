"""What a writable open says about damage below the recovery point: where, and what to do.

The error is the user's only guide at that moment: it names the file, the LSN of
the damaged record, and the three ways forward (a read-only open,
``SKIP_BAD_RECORDS``, ``repair``). Added for mutation testing: mutants that drop the
path or the hint of this error survived every other test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmwal import CorruptionError, Wal


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
    for way in ("readonly=True", "RecoveryPolicy.SKIP_BAD_RECORDS", "mmwal.repair()"):
        assert way in error.hint, way
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
    assert path.read_bytes() == content
