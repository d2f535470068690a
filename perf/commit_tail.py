"""Split commit latency by whether the commit opens a new 4 KiB page.

``python -m perf.commit_tail [--commits N] [--grown MIB] [--dir PATH]``

A segmented log (the default store, ``sync_method="fdatasync"``) grown to
``--grown`` MiB and a raw file (``pwrite`` + ``fdatasync`` of 264-byte frames
into a preallocated 64 MiB file, the commit-state benchmarks' reference) take
commits in blocks of 5 that alternate in one process. Each commit is put in one
of two classes: it writes the first byte of a 4 KiB page (one in about 16 at
256 B), or it does not. The p99 of a run of commits falls among the first class
for both: this prints each class's median and p99 for each side, so the gap a
p99 ratio shows can be read as the cost of a new page (for mmwal a fault on a
page-cache page the mapping never touched; for ``pwrite`` its write path) on
top of the gap every commit shows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mmwal import Wal

PAGE = 4096
FRAME = 264  # a 256-byte record and its 8-byte header
RAW_SIZE = 64 << 20
BLOCK = 5


def _opens_page(start: int) -> bool:
    """Whether a frame at ``start`` writes the first byte of a page."""
    return (start + FRAME - 1) // PAGE != (start - 1) // PAGE


def _summary(latencies: list[tuple[float, bool]]) -> str:
    new = sorted(seconds for seconds, opens in latencies if opens)
    old = sorted(seconds for seconds, opens in latencies if not opens)

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, int(len(values) * 0.99))] * 1e6

    every = sorted(seconds for seconds, _ in latencies)
    return (
        f"{statistics.median(every) * 1e6:.1f} | {p99(every):.1f} | "
        f"{len(new)} | {statistics.median(new) * 1e6:.1f} | "
        f"{statistics.median(old) * 1e6:.1f} | {p99(old):.1f}"
    )


def run(directory: Path, commits: int, grown_mib: int) -> tuple[str, str]:
    """Return the table rows of mmwal and raw after ``commits`` each."""
    payload = os.urandom(FRAME - 8)
    frame = os.urandom(FRAME)
    mmwal: list[tuple[float, bool]] = []
    raw: list[tuple[float, bool]] = []
    fd = os.open(directory / "raw", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, RAW_SIZE)
        os.fsync(fd)
        with Wal.open_segmented(directory / "log") as wal:
            wal.append_many([payload] * (grown_mib * (1 << 20) // FRAME))
            wal.sync()
            offset = 0
            clock = time.perf_counter
            while len(mmwal) < commits:
                for _ in range(BLOCK):
                    start = wal.next_lsn
                    began = clock()
                    wal.append_and_sync(payload)
                    mmwal.append((clock() - began, _opens_page(start)))
                for _ in range(BLOCK):
                    began = clock()
                    os.pwrite(fd, frame, offset)
                    os.fdatasync(fd)
                    raw.append((clock() - began, _opens_page(offset)))
                    offset = (offset + FRAME) % (RAW_SIZE - FRAME)
    finally:
        os.close(fd)
    return _summary(mmwal), _summary(raw)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both sides, alternating, and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--grown", type=int, default=32, help="MiB in the log first")
    parser.add_argument("--dir", default=None)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=arguments.dir) as scratch:
        mmwal_row, raw_row = run(Path(scratch), arguments.commits, arguments.grown)
    print(
        "| side | p50 µs | p99 µs | commits opening a page | their median µs "
        "| others' median µs | others' p99 µs |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    print(f"| mmwal-seg | {mmwal_row} |")
    print(f"| raw | {raw_row} |")


if __name__ == "__main__":
    main()
