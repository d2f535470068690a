"""Each example in examples/ runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mmwal

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


def test_basic_names_the_log_size_it_wrote(tmp_path: Path) -> None:
    assert "a 126-byte log over 64-byte segments spans 2 files" in _run("basic.py", tmp_path)


def test_kvstore_checkpoints_and_replays_only_the_log_after_its_snapshot(tmp_path: Path) -> None:
    out = _run("kvstore.py", tmp_path)
    assert "300 puts over 50 keys: the log holds 5 segments" in out
    assert "the log holds 1 segment(s)" in out
    assert "2 changes replayed from the log" in out
    assert "49 keys; user:0 = {'visits': -1}" in out
    assert "user:1 present: False" in out
    # The store's files are a log mmwal opens, holding only what follows the snapshot.
    with mmwal.open(tmp_path / "log") as wal:
        assert len(list(wal)) == 2
        assert wal.head_lsn > 0


def test_follower_process_prints_every_record_in_order(tmp_path: Path) -> None:
    out = _run("follower.py", tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("follower:")]
    assert [line.split(": ", 2)[2] for line in lines] == [f"event {n}" for n in range(20)]
