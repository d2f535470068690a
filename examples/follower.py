"""A second process follows the log while this one writes it.

The writer (this process) creates a log, starts a follower process that opens it
``readonly=True`` and prints each record as it arrives (``Wal.follow``), then
appends and syncs records. The follower sees only what a sync made durable
(``durable=True``), so it never prints a record a crash could take back.

Run it: ``python examples/follower.py [DIRECTORY]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mmwal

RECORDS = 20


def follow(path: Path, count: int) -> None:
    """Print ``count`` records of the log at ``path`` as they become durable, then stop."""
    with mmwal.open(path, readonly=True) as wal:
        records = wal.follow(durable=True, timeout=10)
        for seen, record in enumerate(records, start=1):
            print(f"follower: LSN {record.lsn:>4}: {bytes(record.data).decode()}", flush=True)
            if seen == count:
                return
    print("follower: timed out", flush=True)


def main(directory: Path) -> None:
    """Write records while a follower process prints them."""
    path = directory / "events"
    with mmwal.open(path, segment_size=256) as wal:  # tiny segments: the follower crosses rolls
        wal.append_and_sync(b"event 0")
        follower = subprocess.Popen(
            [sys.executable, __file__, "--follow", str(path), str(RECORDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for number in range(1, RECORDS):
            wal.append_and_sync(f"event {number}".encode())
            time.sleep(0.01)
        output, _ = follower.communicate(timeout=60)
    print(f"writer: appended {RECORDS} records, ending at LSN {wal.next_lsn}")
    print(output, end="")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--follow"]:
        follow(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
