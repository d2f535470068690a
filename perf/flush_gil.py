"""Show that mmwal's flush lets other threads run, and CPython's ``mmap.flush`` does not.

``python -m perf.flush_gil [--rounds N] [--pages N]``

Each round dirties the same pages of a mapped file, then flushes them while a
second thread counts how many pure-Python steps it gets through during the flush.
``mmap.flush`` holds the GIL for the whole ``msync``, so the counter stalls;
``Syscalls.msync`` (what mmwal's ``sync`` uses) calls ``msync`` through ctypes,
which releases the GIL, so the counter keeps going. The reference is the same
count while the main thread sleeps as long as the flush took: 100% means the
flush took nothing from the other thread. (Even a flush that holds the GIL shows
some progress: the main thread first waits up to a switch interval for the GIL.)
"""

from __future__ import annotations

import argparse
import functools
import mmap
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

from mmwal import Syscalls
from mmwal._syscalls import mapping_address

_PAGE = mmap.PAGESIZE


def _progress_during(flush: Callable[[], None]) -> tuple[float, float]:
    """Run ``flush`` while another thread counts; return (seconds, steps per ms)."""
    counting = threading.Event()
    stop = threading.Event()
    steps = [0, 0]

    def count() -> None:
        local = 0
        counting.set()
        while not stop.is_set():
            local += 1
            if local % 64 == 0:
                steps[0] = local
        steps[1] = local

    counter = threading.Thread(target=count)
    counter.start()
    counting.wait()
    before = steps[0]
    began = time.perf_counter()
    flush()
    elapsed = time.perf_counter() - began
    during = steps[0] - before
    stop.set()
    counter.join()
    return elapsed, during / max(elapsed * 1000, 1e-9)


def measure(rounds: int, pages: int) -> dict[str, float]:
    """Return median steps/ms of a concurrent thread during each kind of flush."""
    results: dict[str, list[float]] = {"mmap.flush": [], "mmwal msync": [], "sleep": []}
    seconds: dict[str, list[float]] = {"mmap.flush": [], "mmwal msync": [], "sleep": []}
    syscalls = Syscalls()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "flush.bin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, pages * _PAGE)
            mapping = mmap.mmap(fd, pages * _PAGE)
            address = mapping_address(mapping)
            flushes: dict[str, Callable[[], None]] = {
                "mmap.flush": mapping.flush,
                "mmwal msync": lambda: syscalls.msync(address, pages * _PAGE),
            }
            for round_number in range(rounds):
                for name, flush in flushes.items():
                    stamp = bytes([round_number % 251 + 1]) * 64
                    for page in range(pages):
                        mapping[page * _PAGE : page * _PAGE + 64] = stamp
                    elapsed, rate = _progress_during(flush)
                    results[name].append(rate)
                    seconds[name].append(elapsed)
                    elapsed, rate = _progress_during(functools.partial(time.sleep, elapsed))
                    results["sleep"].append(rate)
                    seconds["sleep"].append(elapsed)
            mapping.close()
        finally:
            os.close(fd)
    summary = {name: statistics.median(rates) for name, rates in results.items()}
    summary.update({f"{name} ms": statistics.median(s) * 1000 for name, s in seconds.items()})
    return summary


def main() -> None:
    """Print the progress a second thread makes during each kind of flush."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pages", type=int, default=2048, help="dirty pages per flush")
    arguments = parser.parse_args()
    summary = measure(arguments.rounds, arguments.pages)
    held = summary["mmap.flush"]
    released = summary["mmwal msync"]
    free = max(summary["sleep"], 1e-9)
    print(f"dirty pages per flush: {arguments.pages} ({arguments.pages * _PAGE >> 10} KiB)")
    for name, rate in (("mmap.flush", held), ("mmwal msync", released)):
        print(
            f"{name:<12}: {summary[name + ' ms']:7.2f} ms per flush; the other thread ran "
            f"{rate:9.1f} steps/ms = {rate / free:4.0%} of its pace while the main thread sleeps"
        )
    print(f"ratio (mmwal / mmap.flush): {released / max(held, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
