"""A full disk is an ``OSError`` at segment creation, never a SIGBUS, and the log goes on.

Runs as root only: each test mounts a 1 MiB tmpfs (``mount -t tmpfs -o size=1m``),
puts a filler file and a log on it, and runs a writer in a subprocess that
appends until the disk is full. The writer must get ``OSError(ENOSPC)`` from the
append that needs a new segment (or window), keep every earlier record readable,
and, once the parent deleted the filler, append and sync again. The parent checks
the writer's exit status (a SIGBUS would show as ``-SIGBUS``) and reads the log
back. Where mounting is not permitted the tests skip, saying why.

A mutation check proves the SIGBUS check can fail: a writer that maps a sparse
file instead of reserving it with ``posix_fallocate`` dies of SIGBUS on the same
full tmpfs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmwal import Wal

FS_SIZE = 1 << 20
FILLER_SIZE = 256 * 1024
UNIT = 64 * 1024
RECORD = 1000

WRITER = (
    textwrap.dedent(
        r"""
    import errno, os, sys
    from mmwal import Wal

    path, layout = sys.argv[1], sys.argv[2]

    def say(line):
        os.write(1, (line + "\n").encode())

    def open_log():
        if layout == "single":
            from mmwal import FileStore
            return Wal(FileStore(os.path.join(path, "wal.log"), window_size=UNIT))
        return Wal.open_segmented(path, segment_size=UNIT)

    wal = open_log()
    count = 0
    while True:
        try:
            wal.append(count.to_bytes(4, "little") * (RECORD // 4))
        except OSError as error:
            say(f"FULL {error.errno} {count} {error}")
            break
        count += 1
        if count % 50 == 0:
            wal.sync()
    wal.sync()
    records = [r.data for r in wal]
    ok = all(d == i.to_bytes(4, "little") * (RECORD // 4) for i, d in enumerate(records))
    say(f"READ {len(records)} {ok}")
    sys.stdin.readline()  # the parent frees space
    for _ in range(20):
        wal.append(count.to_bytes(4, "little") * (RECORD // 4))
        count += 1
    wal.sync()
    say(f"RESUMED {count}")
    wal.close()
    """
    )
    .replace("UNIT", str(UNIT))
    .replace("RECORD", str(RECORD))
)

SPARSE_WRITER = textwrap.dedent(
    r"""
    import mmap, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 4 << 20)  # sparse: no block reserved
    view = mmap.mmap(fd, 4 << 20)
    for offset in range(0, 4 << 20, 4096):
        view[offset] = 1  # the page fault that finds no space raises SIGBUS
    print("no SIGBUS")
    """
)


def mount_small_tmpfs(target: Path) -> str | None:
    """Mount a 1 MiB tmpfs on ``target``; return why not, or None when mounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run mount: {error}"
    if result.returncode != 0:
        return f"mount -t tmpfs is not permitted here: {result.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "small"
    target.mkdir()
    reason = mount_small_tmpfs(target)
    if reason is not None:
        pytest.skip(reason)
    try:
        yield target
    finally:
        unmounted = subprocess.run(["umount", str(target)], capture_output=True, check=False)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def fill_and_resume(disk: Path, layout: str) -> tuple[list[str], int]:
    filler = disk / "filler"
    filler.write_bytes(b"\xff" * FILLER_SIZE)
    log = disk / "log"
    log.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(log), layout],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    lines = [writer.stdout.readline().strip(), writer.stdout.readline().strip()]
    filler.unlink()  # free space, then let the writer go on
    writer.stdin.write("go\n")
    writer.stdin.flush()
    try:
        rest, stderr = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    lines += rest.splitlines()
    assert writer.returncode != -signal.SIGBUS, "the writer died of SIGBUS on a full disk"
    assert writer.returncode == 0, f"the writer failed ({writer.returncode}):\n{stderr}"
    return lines, writer.returncode


@pytest.mark.parametrize("layout", ["segmented", "single"])
def test_a_full_disk_is_enospc_then_writing_resumes(small_disk: Path, layout: str) -> None:
    lines, _ = fill_and_resume(small_disk, layout)
    full, read, resumed = lines[0].split(), lines[1].split(), lines[2].split()
    assert full[0] == "FULL", lines
    assert int(full[1]) == 28, f"expected ENOSPC (28), got {lines[0]}"
    assert "No space left on device" in lines[0]
    written = int(full[2])
    assert written > 100, "the disk filled before anything was written"
    assert read == ["READ", str(written), "True"], "records written before ENOSPC were lost"
    assert resumed == ["RESUMED", str(written + 20)]
    # The log on disk holds every record, before and after the full disk.
    path = small_disk / "log"
    if layout == "single":
        wal = Wal.open(path / "wal.log", readonly=True)
    else:
        wal = Wal.open_segmented(path, readonly=True)
    try:
        records = [record.data for record in wal]
    finally:
        wal.close()
    assert len(records) == written + 20
    assert all(data == n.to_bytes(4, "little") * (RECORD // 4) for n, data in enumerate(records))
    if layout == "segmented":
        # no half-made segment was left behind by the failed creation
        sizes = {p.stat().st_size for p in path.iterdir() if p.suffix == ".wal"}
        assert sizes == {UNIT}


def test_the_sigbus_check_can_fail(small_disk: Path) -> None:
    """Mutation check: mapping a sparse file on a full disk does die of SIGBUS."""
    result = subprocess.run(
        [sys.executable, "-c", SPARSE_WRITER, str(small_disk / "sparse")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGBUS
