"""``python -m mmwal``: info, dump, verify and repair on real logs."""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mmwal
from mmwal.__main__ import GROUPS, main
from mmwal._cli import build_parser


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
    assert main(["verify", str(path)]) == 3
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


# -- the operator's surface ------------------------------------------------------------


def _segmented(path: Path, payloads: list[bytes], segment_size: int = 4096) -> None:
    with mmwal.open(path, segment_size=segment_size) as wal:
        wal.append_many(payloads)


def test_options_work_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"a" * 50])
    assert main(["info", "--max-record-size", "100", str(path)]) == 0
    assert "records:         1" in capsys.readouterr().out
    parser = build_parser(GROUPS)
    after = parser.parse_args(["info", "--max-record-size", "100", "--segment-size", "4096", "p"])
    before = parser.parse_args(["--max-record-size", "100", "info", "p"])
    neither = parser.parse_args(["info", "p"])
    assert (after.max_record_size, after.segment_size) == (100, 4096)
    assert before.max_record_size == 100
    assert (neither.max_record_size, neither.segment_size) == (64 << 20, None)


def test_info_json_describes_a_segmented_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log"
    _segmented(path, [bytes(1000)] * 10)
    assert main(["info", "--json", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["head_lsn"] == 0
    assert described["next_lsn"] == described["durable_lsn"] == 10 * 1008
    assert described["records"] == 10
    assert described["segment_size"] == 4096
    assert described["segments"] == 3
    assert [file["bytes"] for file in described["files"]] == [4096] * 3
    assert described["files"][0]["name"] == "00000000000000000000.wal"
    assert described["layout"] == "segmented"


def test_info_plain_names_the_segment_size_and_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log"
    _segmented(path, [bytes(1000)] * 10)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "segment size:    4096 bytes" in out
    assert "segments:        3" in out


def test_info_json_of_a_single_file_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"x"])
    assert main(["info", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["segment_size"] is None
    assert described["files"] == [{"name": "a.wal", "bytes": 64 << 20}]
    assert described["recovery_point"] == 9  # written at close: the whole log
    Path(f"{path}.recovery").unlink()
    assert main(["info", str(path), "--json"]) == 0
    assert "recovery_point" not in json.loads(capsys.readouterr().out)


def test_tail_prints_the_last_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"r%d" % n for n in range(20)])
    assert main(["tail", "-n", "2", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["188\t3\tb'r18'", "199\t3\tb'r19'"]


def test_tail_json_from_an_lsn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"\x00\xffa", b"bb", b"c"])
    assert main(["tail", "--from", "11", "--json", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"lsn": 11, "size": 2, "data": base64.b64encode(b"bb").decode()},
        {"lsn": 21, "size": 1, "data": base64.b64encode(b"c").decode()},
    ]


def test_dump_json_with_a_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"x"] * 5)
    assert main(["dump", "--json", "--limit", "2", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["lsn"] for line in lines] == [0, 9]
    assert base64.b64decode(lines[0]["data"]) == b"x"


def test_tail_follow_prints_records_appended_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    with mmwal.open(path) as wal:
        wal.append_and_sync(b"before")

        def write_later() -> None:
            time.sleep(0.2)
            for number in range(3):
                wal.append_and_sync(b"later %d" % number)

        writer = threading.Thread(target=write_later)
        writer.start()
        status = main(["tail", "-f", "--timeout", "2", "--json", str(path)])
        writer.join()
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    data = [base64.b64decode(json.loads(line)["data"]) for line in lines]
    assert data == [b"before", b"later 0", b"later 1", b"later 2"]


def test_verify_names_the_first_damage_and_what_follows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"record %d" % n for n in range(5)])
    with path.open("r+b") as file:
        file.seek(16 + 16 + 8)  # a payload byte of the third record (LSN 32)
        file.write(b"X")
    before = path.read_bytes()
    assert main(["verify", str(path)]) == 3
    captured = capsys.readouterr()
    assert "first damage at LSN 32, 2 intact records after it" in captured.out
    assert "damaged record at LSN 32 below the recovery point" in captured.err
    assert path.read_bytes() == before


def test_verify_of_a_torn_tail_says_nothing_follows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"first", b"second"])
    Path(f"{path}.recovery").unlink()  # a crash before the point was written
    with path.open("r+b") as file:
        file.seek(13 + 8)
        file.write(b"X")
    assert main(["verify", str(path)]) == 2
    assert "no intact record follows them" in capsys.readouterr().out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_verify_shows_progress_on_a_terminal_only_unless_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    _log(path, [bytes(1000)] * 10_000)
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["verify", str(path)]) == 0
    assert "verify" in terminal.getvalue()
    assert "10.1M" in terminal.getvalue()  # the bar's total: the log's bytes
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["verify", "--quiet", str(path)]) == 0
    assert quiet.getvalue() == ""


def test_repair_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.wal"
    _log(path, [b"first", b"second"])
    Path(f"{path}.recovery").unlink()  # a crash before the point was written
    with path.open("r+b") as file:
        file.seek(13 + 8)
        file.write(b"X")
    before = sorted(tmp_path.iterdir())
    content = path.read_bytes()
    assert main(["repair", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "would keep 14 bytes from LSN 13" in out
    assert "nothing was changed" in out
    assert path.read_bytes() == content
    assert sorted(tmp_path.iterdir()) == before
    assert main(["repair", str(path)]) == 0
    assert path.read_bytes() != content


def test_repair_says_how_many_intact_records_leave_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bit rot in the second of five records: repair cuts there, and the three
    # intact records after it go to the quarantine file with the damage. It said
    # the bytes lay "past the last intact record", as if nothing intact was lost.
    path = tmp_path / "a.wal"
    _log(path, [b"first", b"second", b"third", b"fourth", b"fifth"])
    with path.open("r+b") as file:
        file.seek(13 + 8)
        file.write(b"X")
    assert main(["verify", str(path)]) == 3
    capsys.readouterr()
    assert main(["repair", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "past the last intact record" not in out
    assert "3 intact records after it" in out
    assert main(["repair", str(path)]) == 0
    out = capsys.readouterr().out
    assert "past the last intact record" not in out
    assert "3 intact records after it" in out
    with mmwal.open(path) as wal:
        assert [r.data for r in wal] == [b"first"]


def test_repair_dry_run_of_a_segment_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log"
    _segmented(path, [bytes(1000)] * 20)
    (path / "00000000000000000002.wal").unlink()
    names = sorted(entry.name for entry in path.iterdir())
    assert main(["repair", "--dry-run", str(path)]) == 0
    assert "would rename 00000000000000000003.wal" in capsys.readouterr().out
    assert sorted(entry.name for entry in path.iterdir()) == names


def test_repair_refuses_what_is_not_a_log_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    content = json.dumps({"a": list(range(100))}).encode()
    path.write_bytes(content)
    assert main(["repair", str(path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert path.read_bytes() == content
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["config.json"]
    assert main(["repair", "--force", str(path)]) == 0


def test_repair_of_a_missing_path_creates_nothing(tmp_path: Path) -> None:
    assert main(["repair", str(tmp_path / "missing.wal")]) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_has_its_own_exit_status(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["info", "--no-such-option", str(tmp_path)])
    assert exited.value.code == 64


@pytest.mark.parametrize("command", [[], ["info"], ["dump"], ["tail"], ["verify"], ["repair"]])
def test_help_has_no_raw_markup(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    assert "``" not in text


def test_the_mmwal_console_script_is_installed() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [script.value for script in scripts if script.name == "mmwal"] == ["mmwal.__main__:main"]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("mmwal")), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.startswith("usage: mmwal")


def test_verify_reports_progress_up_to_the_whole_log(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    _log(path, [bytes(1000)] * 10_000)
    calls: list[tuple[int, int]] = []
    assert mmwal.verify(path, progress=lambda done, total: calls.append((done, total))).ok
    assert calls[-1] == (10_080_000, 10_080_000)
    assert len(calls) >= 3  # a step every 4 MiB, then the end
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_info_on_a_live_log_skips_a_segment_removed_meanwhile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer's truncate_before may remove a segment between info's listing of
    # the directory and its look at each file: info reported ENOENT and failed.
    path = tmp_path / "log"
    _segmented(path, [bytes(1000)] * 10)
    removed = path / f"{0:020d}.wal"
    real_getsize = os.path.getsize

    def getsize(name: str | os.PathLike[str]) -> int:
        if os.fspath(name) == os.fspath(removed):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(name))
        return real_getsize(name)

    monkeypatch.setattr(os.path, "getsize", getsize)
    assert main(["info", "--json", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [file["name"] for file in described["files"]] == [
        f"{1:020d}.wal",
        f"{2:020d}.wal",
    ]


def _damaged_log(path: Path) -> int:
    """Write 20 records, flip a payload byte of the 6th; return the 6th's LSN."""
    _log(path, [b"r%02d" % n for n in range(20)])
    lsn = 5 * (8 + 3)
    with path.open("r+b") as file:
        file.seek(lsn + 8 + 1)
        byte = file.read(1)
        file.seek(lsn + 8 + 1)
        file.write(bytes([byte[0] ^ 1]))
    return lsn


def test_info_on_a_damaged_log_prints_what_it_found_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Catches: info failing with status 1 and no description (as if the log could
    # not be read) where the open succeeded and the count met damage.
    path = tmp_path / "a.wal"
    lsn = _damaged_log(path)
    assert main(["info", str(path)]) == 3
    captured = capsys.readouterr()
    assert "records:         5 before the damage" in captured.out
    assert f"damage:          at LSN {lsn}: checksum mismatch" in captured.out
    assert f"mmwal verify {path}" in captured.err
    assert main(["info", "--json", str(path)]) == 3
    described = json.loads(capsys.readouterr().out)
    assert described["records"] == 5
    assert described["damage"]["lsn"] == lsn
    assert "checksum" in described["damage"]["reason"]


def test_dump_and_tail_stop_at_damage_with_status_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wal"
    lsn = _damaged_log(path)
    for command in (["dump"], ["tail", "-n", "3"]):
        assert main([*command, str(path)]) == 3
        captured = capsys.readouterr()
        assert f"at log offset {lsn}" in captured.err
        assert "mmwal verify" in captured.err
    assert main(["dump", str(path)]) == 3
    assert len(capsys.readouterr().out.splitlines()) == 5  # every record before the damage


def test_a_refused_open_is_status_1_not_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Catches: any CorruptionError reported as damage inside the log (3), where the
    # open itself refused the path (here a segment set whose head names a missing file).
    path = tmp_path / "log"
    _segmented(path, [bytes(1000)] * 10)
    (path / "00000000000000000001.wal").unlink()
    status = main(["info", str(path)])
    capsys.readouterr()
    assert status == 1


def test_info_counts_the_segment_made_ahead_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Catches: a live writer's spare (made ahead of need, wholly past the end)
    # counted as a segment of the log.
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=4096) as wal:
        wal.append_many([bytes(1000)] * 10)
        wal.sync()
        (path / "00000000000000000003.wal").write_bytes(bytes(4096))  # as the pipeline makes it
        assert main(["info", "--json", str(path)]) == 0
        described = json.loads(capsys.readouterr().out)
        assert (described["segments"], described["segments_made_ahead"]) == (3, 1)
        assert [file["made_ahead"] for file in described["files"]] == [False] * 3 + [True]
        assert main(["info", str(path)]) == 0
        assert "segments:        3 (+1 made ahead of need, empty)" in capsys.readouterr().out
