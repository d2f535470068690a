"""Open a log, append, sync, reopen and replay: the four-call core of mmwal."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mmwal


def main(directory: Path) -> None:
    """Write a few records durably, then reopen the log and replay them."""
    path = directory / "orders.wal"
    with mmwal.open(path) as wal:
        lsns = [wal.append(f"order {number}".encode()) for number in range(3)]
        wal.sync()
        print(f"appended {len(lsns)} records at LSNs {lsns}; durable up to {wal.durable_lsn}")

    with mmwal.open(path) as wal:
        print(f"reopened {path.name}: recovered end at LSN {wal.recovery.end}")
        for record in wal:
            print(f"  replay LSN {record.lsn:>3}: {record.data.decode()}")
        lsn = wal.append_and_sync(b"order 3")
        print(f"appended and synced one more at LSN {lsn}")

    segments = directory / "segments"
    with mmwal.open(segments, segment_size=64) as wal:
        wal.append_many([b"x" * 100, b"y" * 10])
        files = sorted(entry.name for entry in segments.glob("*.wal"))
        print(
            f"a {wal.next_lsn}-byte log over 64-byte segments spans {len(files)} files: "
            f"{files[0]}, ..."
        )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
