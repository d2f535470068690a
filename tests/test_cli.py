"""``python -m mmwal``: info, dump, verify and repair on real logs."""

from __future__ import annotations

from pathlib import Path

import pytest

import mmwal
from mmwal.__main__ import main


def _log(path: Path, payloads: list[bytes]) -> None:
    with mmwal.open(path) as wal:
        wal.append_many(payloads)


def test_info_counts_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"a", b"bb", b"ccc"])
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records:         3" in out
    assert "end LSN:         30" in out


def test_dump_prints_lsn_length_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"a", b"bb", b"ccc"])
    assert main(["dump", str(path), "--start", "9", "--hex"]) == 0
    assert capsys.readouterr().out.splitlines() == ["9\t2\t6262", "19\t3\t636363"]


def test_dump_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"x"] * 10)
    assert main(["dump", str(path), "--limit", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_verify_reports_a_torn_tail_without_changing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"first", b"second"])
    # No recovery point (a crash before one was written): the bad last record may
    # be a torn write.
    Path(f"{path}.recovery").unlink(missing_ok=True)
    with path.open("r+b") as file:
        file.seek(13 + 8)
        file.write(b"X")
    before = path.read_bytes()
    assert main(["verify", str(path)]) == 2
    assert "1 intact records up to LSN 13" in capsys.readouterr().out
    assert path.read_bytes() == before


@pytest.mark.parametrize("point", [True, False])
def test_verify_names_damage_with_intact_records_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], point: bool
) -> None:
    """Catches: verify calling durable damage with 990 intact records after it a torn tail."""
    path = tmp_path / "a.wal"
    payloads = [b"r%04d" % i for i in range(1000)]
    _log(path, payloads)
    if not point:
        Path(f"{path}.recovery").unlink(missing_ok=True)
    victim = 10 * 13
    with path.open("r+b") as file:
        file.seek(victim + 9)
        file.write(b"X")
    before = path.read_bytes()
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"damaged record at LSN {victim}" in err
    assert "989 intact records follow it" in err
    assert ("below the recovery point" in err) == point
    assert path.read_bytes() == before
    report = mmwal.verify(path)
    assert not report.ok
    assert [(d.lsn, d.intact_after, d.durable) for d in report.damage] == [(victim, 989, point)]
    assert report.records == 999


def test_verify_of_a_healthy_log_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"a", b"bb"])
    assert main(["verify", str(path)]) == 0
    assert "OK: 2 intact records" in capsys.readouterr().out
    assert mmwal.verify(path).ok


@pytest.mark.parametrize("command", ["repair", "verify", "info", "dump"])
def test_a_small_max_record_size_flag_destroys_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Catches: ``--max-record-size 10 repair`` zeroing every record of a healthy log."""
    path = tmp_path / "a.wal"
    payloads = [b"x" * 100, b"y" * 50, b"z"]
    _log(path, payloads)
    Path(f"{path}.recovery").unlink(missing_ok=True)  # the full scan meets every record
    before = path.read_bytes()
    assert main(["--max-record-size", "10", command, str(path)]) == 0
    capsys.readouterr()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*quarantine*"))
    with mmwal.open(path) as wal:
        assert [record.data for record in wal] == payloads


def test_verify_fails_on_what_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    path.write_bytes(b"this is not a log at all")
    assert main(["verify", str(path)]) == 1


def test_repair_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    path.write_bytes(b"this is not a log at all")
    assert main(["repair", "--force", str(path)]) == 0
    assert "zeroed" in capsys.readouterr().out
    assert main(["verify", str(path)]) == 0


def test_missing_path_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path / "missing.wal")]) == 1
    assert "error:" in capsys.readouterr().err
