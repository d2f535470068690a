"""Compare the ways one commit can reach the disk, with no log around them.

``python -m perf.commit_syscalls [--commits N] [--dir PATH]``

Each method appends a 264-byte frame to its own preallocated 64 MiB file and
makes it durable, in blocks of 5 commits that alternate between the methods in
one process, so every method meets the same disk. For each: p50 and p99
latency, and CPU per commit (user and system, from ``getrusage``):

- ``raw``: ``pwrite`` + ``fdatasync`` on a file nobody maps (the reference);
- ``mmap-msync``: a copy into a ``MADV_RANDOM`` mapping + ``msync`` of the
  dirty pages (mmwal's commit): after ``msync`` writes a page back the kernel
  write-protects it, so the next copy into that page takes a write fault;
- ``mmap-fdatasync``: the same copy, then ``fdatasync`` of the file;
- ``pwrite-tail-msync``: the bytes that fall in the page the last ``msync``
  left write-protected go through ``pwrite`` on the mapped file (no fault),
  the rest are copied into the mapping; then ``msync``;
- ``pwrite-msync``: every frame through ``pwrite`` on the mapped file, ``msync``;
- ``pwrite-fdatasync``: every frame through ``pwrite`` on the mapped file,
  ``fdatasync``.

With ``--wal``, two more: ``Wal.append_and_sync`` of a 256-byte record on a
segmented log with each ``sync_method`` (``wal-msync``, ``wal-fdatasync``), so
what the log adds to its syscalls is measured against the same raw commits.

What it showed is in docs/DESIGN.md ("Costs that remain").
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import tempfile
import time
from collections.abc import Callable

from mmwal import Syscalls, Wal, WalConfig
from mmwal._syscalls import PAGE_SIZE, mapping_address

_FILE_SIZE = 64 << 20
_FRAME = 264
_BLOCK = 5


class _Target:
    """One preallocated file, mapped or not, and how a commit reaches its disk."""

    def __init__(self, path: str, method: str) -> None:
        self.method = method
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.posix_fallocate(self.fd, 0, _FILE_SIZE)
        os.fsync(self.fd)
        self.mapping = mmap.mmap(self.fd, _FILE_SIZE) if method != "raw" else None
        if self.mapping is not None:
            self.mapping.madvise(mmap.MADV_RANDOM)
        self.address = mapping_address(self.mapping) if self.mapping is not None else 0
        self.end = 0
        self.durable = 0
        self.syscalls = Syscalls()

    def commit(self, frame: bytes) -> None:
        start, end = self.end, self.end + len(frame)
        if self.mapping is None or self.method in ("pwrite-msync", "pwrite-fdatasync"):
            os.pwrite(self.fd, frame, start)
        elif self.method == "pwrite-tail-msync":
            protected = -(-self.durable // PAGE_SIZE) * PAGE_SIZE
            cut = min(end, max(start, protected))
            if cut > start:
                os.pwrite(self.fd, frame[: cut - start], start)
            if cut < end:
                self.mapping[cut:end] = frame[cut - start :]
        else:
            self.mapping[start:end] = frame
        self.end = end
        if self.mapping is None or self.method.endswith("fdatasync"):
            os.fdatasync(self.fd)
        else:
            aligned = self.durable - self.durable % PAGE_SIZE
            self.syscalls.msync(self.address + aligned, end - aligned)
        self.durable = end

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
        os.close(self.fd)


METHODS = (
    "raw",
    "mmap-msync",
    "mmap-fdatasync",
    "pwrite-tail-msync",
    "pwrite-msync",
    "pwrite-fdatasync",
)


class _WalTarget:
    """A segmented log committing one record per ``append_and_sync``."""

    def __init__(self, path: str, method: str) -> None:
        self.wal = Wal.open_segmented(path, config=WalConfig(sync_method=method))

    def commit(self, frame: bytes) -> None:
        self.wal.append_and_sync(frame[8:])

    def close(self) -> None:
        self.wal.close()


WAL_METHODS = ("wal-msync", "wal-fdatasync")


def measure(directory: str, commits: int, *, wal: bool = False) -> dict[str, dict[str, float]]:
    """Run ``commits`` commits per method, alternating blocks; return figures per method."""
    targets: dict[str, _Target | _WalTarget] = {
        name: _Target(os.path.join(directory, name), name) for name in METHODS
    }
    if wal:
        for name in WAL_METHODS:
            targets[name] = _WalTarget(os.path.join(directory, name), name.split("-")[1])
    latencies: dict[str, list[int]] = {name: [] for name in targets}
    cpu = {name: [0.0, 0.0] for name in targets}
    frame = os.urandom(_FRAME)
    clock = time.perf_counter_ns
    try:
        for _ in range(max(1, commits // _BLOCK)):
            for name, target in targets.items():
                commit: Callable[[bytes], None] = target.commit
                samples = latencies[name]
                before = resource.getrusage(resource.RUSAGE_SELF)
                for _ in range(_BLOCK):
                    began = clock()
                    commit(frame)
                    samples.append(clock() - began)
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu[name][0] += after.ru_utime - before.ru_utime
                cpu[name][1] += after.ru_stime - before.ru_stime
    finally:
        for target in targets.values():
            target.close()
    result: dict[str, dict[str, float]] = {}
    for name, samples in latencies.items():
        ordered = sorted(samples)
        count = len(ordered)
        result[name] = {
            "p50_us": ordered[count // 2] / 1e3,
            "p99_us": ordered[min(count - 1, count * 99 // 100)] / 1e3,
            "user_us": cpu[name][0] / count * 1e6,
            "sys_us": cpu[name][1] / count * 1e6,
        }
    return result


def main(argv: list[str] | None = None) -> None:
    """Print the comparison as a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m perf.commit_syscalls")
    parser.add_argument("--commits", type=int, default=3000, help="commits per method")
    parser.add_argument("--dir", help="where the files go (default: system temp)")
    parser.add_argument("--wal", action="store_true", help="also commit through mmwal")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        result = measure(directory, args.commits, wal=args.wal)
    raw = result["raw"]
    print("| method | p50 µs | p99 µs | raw/method p50 | user µs/commit | sys µs/commit |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, figures in result.items():
        print(
            f"| {name} | {figures['p50_us']:.1f} | {figures['p99_us']:.1f} | "
            f"{raw['p50_us'] / figures['p50_us']:.2f} | {figures['user_us']:.1f} | "
            f"{figures['sys_us']:.1f} |"
        )


if __name__ == "__main__":
    main()
