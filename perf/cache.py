"""Evict a log's files from the page cache for cold-cache measurements."""

from __future__ import annotations

import os
from pathlib import Path

#: How cold-cache runs evict data; recorded in the JSON and the docs.
METHOD = "fsync + posix_fadvise(POSIX_FADV_DONTNEED) on every file of the log"


def cached_bytes() -> int:
    """Return the kernel's page-cache size (``Cached`` in /proc/meminfo), in bytes."""
    with Path("/proc/meminfo").open(encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def evict(directory: Path) -> int:
    """Write back and drop the cached pages of every file under ``directory``.

    Return the number of file bytes whose pages were asked to be dropped.
    """
    total = 0
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total
