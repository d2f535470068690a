"""Real processes: a writer SIGKILLed mid-stream loses nothing it reported, and one
writer per log is enforced across processes.

Children run ``sys.executable -c`` with a small script; they report on stdout, one
line per event, flushed before the next step.

A SIGKILL keeps the page cache: these tests prove that a killed writer's log
reopens with everything it appended, and that the lock holds across processes,
not that a ``sync`` reached the disk (one that did nothing would pass here).
Durability against power loss is proved on the real stores by the simulator, in
``tests/test_power_loss.py``, which fails when a flush is a no-op.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmwal import FileStore, SegmentStore, Wal, WalLockedError

GRANULE = 4096
KINDS = ["file", "seg64", "default-file", "default-seg"]
TIMEOUT = 60  # seconds a child may take to report; a guard against hangs, not a measure

PRELUDE = r"""
import sys
from mmwal import FileStore, SegmentStore, Wal

def open_log(kind, path):
    if kind == "file":
        return Wal.with_store(FileStore(path, window_size=4096))
    if kind == "seg64":
        return Wal.with_store(SegmentStore(path, 64))
    if kind == "default-file":
        return Wal.open(path)
    return Wal.open_segmented(path)

def payload(i):
    return (f"rec-{i:06d};" * (1 + i % 7)).encode()
"""

WRITER = (
    PRELUDE
    + r"""
kind, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
wal = open_log(kind, path)
print("ready", flush=True)
i = 0
while True:
    if mode == "sync":
        lsn = wal.append(payload(i))
        wal.sync()
    elif mode == "append_and_sync":
        lsn = wal.append_and_sync(payload(i))
    else:
        lsn = wal.append(payload(i))
    print(i, lsn, flush=True)
    i += 1
"""
)

LOCK_PROBE = (
    PRELUDE
    + r"""
from mmwal import WalLockedError
kind, path = sys.argv[1], sys.argv[2]
try:
    wal = open_log(kind, path)
except WalLockedError as error:
    print("locked", str(error).replace("\n", " "), flush=True)
    sys.exit(0)
wal.append(b"from the child")
wal.close()
print("opened", flush=True)
"""
)

HOLDER = (
    PRELUDE
    + r"""
kind, path = sys.argv[1], sys.argv[2]
wal = open_log(kind, path)
wal.append(b"held by the child")
print("holding", flush=True)
sys.stdin.read()  # hold the log until the parent closes our stdin
wal.close()
"""
)


def payload(i: int) -> bytes:
    return (f"rec-{i:06d};" * (1 + i % 7)).encode()


def log_path(tmp_path: Path, kind: str) -> Path:
    return tmp_path / ("log.wal" if kind.endswith("file") else "log")


def open_log(kind: str, path: Path) -> Wal:
    if kind == "file":
        return Wal.with_store(FileStore(path, window_size=GRANULE))
    if kind == "seg64":
        return Wal.with_store(SegmentStore(path, 64))
    if kind == "default-file":
        return Wal.open(path)
    return Wal.open_segmented(path)


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(TIMEOUT)
        stderr = child.stderr.read() if child.stderr is not None else ""
        raise AssertionError(f"the child exited early ({child.returncode}): {stderr}")
    return line


def kill_writer_mid_stream(tmp_path: Path, kind: str, mode: str, count: int) -> list[int]:
    """Run a writer, SIGKILL it after ``count`` reports; return every reported LSN."""
    path = log_path(tmp_path, kind)
    with spawn(WRITER, kind, str(path), mode) as child:
        try:
            assert read_line(child) == "ready\n"
            reported: list[int] = []
            while len(reported) < count:
                index, lsn = read_line(child).split()
                assert int(index) == len(reported)
                reported.append(int(lsn))
            child.send_signal(signal.SIGKILL)
            assert child.stdout is not None
            rest = child.stdout.read()  # what it printed before it died
            child.wait(TIMEOUT)
        finally:
            stop(child)
    assert child.returncode == -signal.SIGKILL
    for line in rest.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut by the kill
        index, lsn = line.split()
        assert int(index) == len(reported)
        reported.append(int(lsn))
    return reported


def stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()


def check_survivors(tmp_path: Path, kind: str, reported: list[int]) -> None:
    path = log_path(tmp_path, kind)
    with open_log(kind, path) as wal:
        recovered = [(record.lsn, record.data) for record in wal.iter()]
        assert len(recovered) >= len(reported), (
            f"{len(reported)} records were reported, {len(recovered)} recovered"
        )
        # A prefix of the appended sequence, at the LSNs the child reported.
        for i, (lsn, data) in enumerate(recovered):
            assert data == payload(i), f"record {i} is not what was appended"
            if i < len(reported):
                assert lsn == reported[i]
        # And the log goes on.
        new = wal.append(b"after the kill")
    with open_log(kind, path) as wal:
        assert [record.lsn for record in wal.iter()][-1] == new


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "append_and_sync"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_writer_keeps_every_synced_record(tmp_path: Path, kind: str, mode: str) -> None:
    """Every synced record is back after a kill; that it reached the disk is not tested here."""
    count = 80 if kind == "seg64" else 150  # 64-byte segments: a file (and fsync) per record
    reported = kill_writer_mid_stream(tmp_path, kind, mode, count=count)
    check_survivors(tmp_path, kind, reported)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_writer_that_never_synced_loses_nothing(tmp_path: Path, kind: str) -> None:
    """The page cache survives the process: every append that returned is kept."""
    count = 600 if kind == "seg64" else 2000  # 64-byte segments: a file per ~64 bytes
    reported = kill_writer_mid_stream(tmp_path, kind, "append", count=count)
    check_survivors(tmp_path, kind, reported)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "seg64"])
def test_repeated_kills_keep_a_growing_prefix(tmp_path: Path, kind: str) -> None:
    """Each reopen after a kill recovers; the next writer continues the sequence."""
    path = log_path(tmp_path, kind)
    script = (
        PRELUDE
        + r"""
kind, path = sys.argv[1], sys.argv[2]
wal = open_log(kind, path)
i = sum(1 for _ in wal.iter())
print("ready", i, flush=True)
while True:
    lsn = wal.append(payload(i))
    if i % 3 == 0:
        wal.sync()
    print(i, lsn, flush=True)
    i += 1
"""
    )
    reported_total = 0
    for round_number in range(4):
        with spawn(script, kind, str(path)) as child:
            try:
                ready, start = read_line(child).split()
                assert ready == "ready"
                assert int(start) >= reported_total, f"round {round_number} lost records"
                for _ in range((40 + 25 * round_number) // (2 if kind == "seg64" else 1)):
                    index, _lsn = read_line(child).split()
                    reported_total = int(index) + 1
                child.send_signal(signal.SIGKILL)
                child.wait(TIMEOUT)
            finally:
                stop(child)
    with open_log(kind, path) as wal:
        data = [record.data for record in wal.iter()]
    assert len(data) >= reported_total
    assert data == [payload(i) for i in range(len(data))]


# -- one writer per log -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_writer_in_another_process_is_locked_out(tmp_path: Path, kind: str) -> None:
    path = log_path(tmp_path, kind)
    wal = open_log(kind, path)
    wal.append(b"held by the parent")
    try:
        probe = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, kind, str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.startswith("locked "), probe.stdout
        assert str(path) in probe.stdout
        assert "hint" in probe.stdout
        # The refused child changed nothing: the parent's log goes on.
        wal.append(b"still ours")
    finally:
        wal.close()

    # After the parent closed it, a child can open it.
    probe = subprocess.run(
        [sys.executable, "-c", LOCK_PROBE, kind, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout == "opened\n"
    with open_log(kind, path) as again:
        assert [r.data for r in again.iter()] == [
            b"held by the parent",
            b"still ours",
            b"from the child",
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_the_parent_is_locked_out_while_a_child_holds_the_log(tmp_path: Path, kind: str) -> None:
    path = log_path(tmp_path, kind)
    with spawn(HOLDER, kind, str(path)) as child:
        try:
            assert read_line(child) == "holding\n"
            with pytest.raises(WalLockedError) as caught:
                open_log(kind, path)
            assert caught.value.path == str(path)
            assert child.stdin is not None
            child.stdin.close()
            child.wait(TIMEOUT)
        finally:
            stop(child)
    assert child.returncode == 0
    with open_log(kind, path) as wal:
        assert [r.data for r in wal.iter()] == [b"held by the child"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "seg64"])
def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path, kind: str) -> None:
    path = log_path(tmp_path, kind)
    with spawn(HOLDER, kind, str(path)) as child:
        try:
            assert read_line(child) == "holding\n"
            with pytest.raises(WalLockedError):
                open_log(kind, path)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(TIMEOUT)
        finally:
            stop(child)
    assert child.returncode == -signal.SIGKILL
    with open_log(kind, path) as wal:
        assert [r.data for r in wal.iter()] == [b"held by the child"]
