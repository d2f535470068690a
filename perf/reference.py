"""Measure the physical references: raw pwrite+fdatasync and memcpy."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Size the raw reference file is preallocated to (mmwal's default segment).
RAW_PREALLOCATION = 64 << 20
#: Header bytes framed in front of each raw record, as in mmwal's format.
HEADER_SIZE = 8


def raw_pwrite_commits(directory: Path, size: int, budget_s: float) -> dict[str, float]:
    """Commit ``size``-byte records with ``os.pwrite`` + ``os.fdatasync`` for ``budget_s``.

    The file is preallocated with ``posix_fallocate`` and the offset wraps at the
    end, so every commit is one positioned write into allocated space plus one
    ``fdatasync``: the floor any durable per-record commit pays on this disk.
    """
    record = os.urandom(HEADER_SIZE + size)
    fd = os.open(directory / "raw.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, RAW_PREALLOCATION)
        os.fsync(fd)
        commits = 0
        offset = 0
        start = time.perf_counter()
        deadline = start + budget_s
        now = start
        while now < deadline:
            os.pwrite(fd, record, offset)
            os.fdatasync(fd)
            commits += 1
            offset += len(record)
            if offset + len(record) > RAW_PREALLOCATION:
                offset = 0
            now = time.perf_counter()
    finally:
        os.close(fd)
    return {"commits_per_s": commits / (now - start), "commits": float(commits)}


def memcpy_gb_per_s(nbytes: int, repeats: int = 3) -> float:
    """Return the best GB/s (1e9 B/s) of copying ``nbytes`` between resident buffers.

    Both buffers are written once before timing, so the copy pays no page faults:
    the number is the machine's plain ``memcpy`` bandwidth for that many bytes.
    The copy is a ``memoryview`` slice assignment, which is one ``memcpy``
    (``bytearray`` slice assignment is several times slower on large buffers).
    """
    source = b"\x5a" * nbytes
    target = bytearray(nbytes)
    best = float("inf")
    with memoryview(target) as view:
        view[:] = source
        for _ in range(repeats):
            start = time.perf_counter_ns()
            view[:] = source
            best = min(best, time.perf_counter_ns() - start)
    return nbytes / max(best, 1.0)
