"""Followers and zero-copy replay, each against a reference measured in the same run.

``python -m perf.follow [--scale F] [--dir D] [--only NAME,...]``

- ``latency``: append-to-follower latency at 1,000 records/s, in-process (a
  follower thread on the writer's handle) and cross-process (a read-only handle
  in this process following a writer process). Targets: in-process p50 < 50 us;
  cross-process p50 < 1 ms, p99 < 5 ms.
- ``keepup``: a writer process appends 256 B records at up to 1 M records/s
  (``append_many`` of 1,000) for 10 s while this process follows; the lag (now
  minus the write time stamped in the last record read) must stay bounded.
- ``idle``: the CPU a follower process spends on an idle log, per wall second
  (target < 1% of a core).
- ``replay``: ``iter(copy=False)`` of 4 KiB records against a memcpy of the same
  bytes (target >= 0.8x), of 256 B records against sqlite3's warm cursor over the
  same payloads (target >= 2x); ``batches()`` of 256 B records against memcpy
  (target >= 0.5x) and of 64 B records in records/s (target >= 20 M/s).
- ``writer``: the writer's commit latency (``append_and_sync`` of 256 B) and the
  bytes the block device wrote per commit, without and with a follower process
  attached, measured as pairs in one run.

The machine may be shared: every ratio compares two measurements of one run,
alternated, and the report gives the spread of the repetitions.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mmwal
from mmwal import Wal

_STAMP = 8  # every timed record starts with its write time, perf_counter_ns, 8 bytes


def _stamp() -> bytes:
    return time.perf_counter_ns().to_bytes(8, "little")


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return (
        f"p50 {at(0.5) * 1e6:8.1f} us   p99 {at(0.99) * 1e6:8.1f} us   "
        f"max {ordered[-1] * 1e6:8.1f} us   n={len(ordered)}"
    )


def _spawn(source: str, *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# -- latency ------------------------------------------------------------------------------


def _paced_appends(wal: Wal, count: int, rate: float) -> None:
    interval = 1 / rate
    start = time.perf_counter()
    for index in range(count):
        delay = start + index * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        wal.append(_stamp() + bytes(56))


def latency(directory: Path, scale: float) -> None:
    """Print append-to-follower latency, in-process and cross-process, at 1,000/s."""
    count = max(200, int(2000 * scale))
    path = directory / "latency-in"
    with Wal.open_segmented(path, 1 << 20) as wal:
        delays: list[float] = []

        def follow() -> None:
            for record in wal.follow(timeout=2):
                now = time.perf_counter_ns()
                delays.append((now - int.from_bytes(record.data[:_STAMP], "little")) / 1e9)
                if len(delays) == count:
                    return

        follower = threading.Thread(target=follow)
        follower.start()
        _paced_appends(wal, count, 1000.0)
        follower.join()
    print(f"  in-process    {_percentiles(delays)}   (target p50 < 50 us)")

    path = directory / "latency-cross"
    path.mkdir()
    writer = _spawn(
        """
        import sys, time
        from mmwal import Wal
        count = int(sys.argv[2])
        with Wal.open_segmented(sys.argv[1], 1 << 20) as wal:
            time.sleep(0.5)
            start = time.perf_counter()
            for index in range(count):
                delay = start + index / 1000 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                wal.append(time.perf_counter_ns().to_bytes(8, "little") + bytes(56))
        """,
        path,
        count,
    )
    delays = []
    with Wal.open_segmented(path, 1 << 20, readonly=True) as reader:
        for record in reader.follow(timeout=5):
            now = time.perf_counter_ns()
            delays.append((now - int.from_bytes(record.data[:_STAMP], "little")) / 1e9)
            if len(delays) == count:
                break
    writer.communicate(timeout=60)
    print(f"  cross-process {_percentiles(delays)}   (target p50 < 1 ms, p99 < 5 ms)")


# -- keeping up ---------------------------------------------------------------------------


def keepup(directory: Path, scale: float) -> None:
    """Print how far a cross-process follower lags a writer at up to 1 M records/s."""
    seconds = max(2.0, 10.0 * scale)
    path = directory / "keepup"
    path.mkdir()
    writer = _spawn(
        """
        import sys, time
        from mmwal import Wal
        seconds = float(sys.argv[2])
        padding = bytes(256 - 8)
        with Wal.open_segmented(sys.argv[1], 64 << 20) as wal:
            time.sleep(0.5)
            start = time.perf_counter()
            written = 0
            while (elapsed := time.perf_counter() - start) < seconds:
                ahead = written - elapsed * 1_000_000
                if ahead > 0:
                    time.sleep(ahead / 1_000_000)
                stamp = time.perf_counter_ns().to_bytes(8, "little")
                wal.append_many([stamp + padding] * 1000)
                written += 1000
            print(written, time.perf_counter() - start)
        """,
        path,
        seconds,
    )
    lags: list[tuple[float, float]] = []
    received = 0
    began = time.perf_counter()
    with Wal.open_segmented(path, 64 << 20, readonly=True) as reader:
        last_sample = 0.0
        for batch_record in reader.follow(timeout=3, copy=False):
            received += 1
            now = time.perf_counter()
            if now - last_sample >= 0.1:
                stamp = int.from_bytes(batch_record.data[:_STAMP], "little")
                lags.append((now - began, now - stamp / 1e9))
                last_sample = now
    out, _ = writer.communicate(timeout=60)
    written, elapsed = out.decode().split()
    first = [lag for at, lag in lags if at < seconds / 2]
    second = [lag for at, lag in lags if at >= seconds / 2]
    print(
        f"  writer {int(written) / float(elapsed) / 1e6:.2f} M rec/s of 256 B for "
        f"{float(elapsed):.1f} s; follower read {received} of {written}"
    )
    print(
        f"  lag: first half max {max(first, default=0) * 1e3:.1f} ms, second half max "
        f"{max(second, default=0) * 1e3:.1f} ms, last {lags[-1][1] * 1e3 if lags else 0:.1f} ms"
        f"   (target: bounded, not growing)"
    )


# -- idle ---------------------------------------------------------------------------------------


def idle(directory: Path, scale: float) -> None:
    """Print the CPU an idle cross-process follower uses."""
    seconds = max(3.0, 10.0 * scale)
    path = directory / "idle"
    with Wal.open_segmented(path, 1 << 20) as wal:
        wal.append(b"only")
        wal.sync()
        follower = _spawn(
            """
            import resource, sys, time
            from mmwal import Wal
            with Wal.open_segmented(sys.argv[1], readonly=True) as reader:
                records = reader.follow(timeout=float(sys.argv[2]))
                next(records)
                before = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                for _ in records:
                    pass
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                print(cpu / (time.perf_counter() - start))
            """,
            path,
            seconds,
        )
        out, _ = follower.communicate(timeout=seconds + 30)
    print(f"  idle follower: {float(out) * 100:.3f}% of a core   (target < 1%)")


# -- replay ------------------------------------------------------------------------------------


def _best(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def _alternate(
    a: Callable[[], object], b: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately; return both lists of seconds."""
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(repeats):
        for function, times in ((a, times_a), (b, times_b)):
            began = time.perf_counter()
            function()
            times.append(time.perf_counter() - began)
    return times_a, times_b


def _ratio_line(name: str, ours: list[float], reference: list[float], target: str) -> str:
    ratio = min(reference) / min(ours)
    spread = max(ours) / min(ours) - 1
    return (
        f"  {name:<42} {ratio:6.2f}x   (ours best {min(ours) * 1e3:7.2f} ms, ref best "
        f"{min(reference) * 1e3:7.2f} ms, our spread {spread * 100:.0f}%)   target {target}"
    )


def _log_of(directory: Path, name: str, size: int, total: int) -> tuple[Wal, int]:
    wal = Wal.open_segmented(directory / name, 64 << 20)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    count = total // (size + 8)
    for start in range(0, count, 1000):
        wal.append_many([payload] * min(1000, count - start))
    wal.sync()
    return wal, count


def replay(directory: Path, scale: float) -> None:
    """Print zero-copy and batch replay against memcpy and sqlite3."""
    total = max(8 << 20, int((64 << 20) * scale))
    repeats = 5

    def memcpy_of(wal: Wal) -> Callable[[], object]:
        # The same bytes, copied out of the same mapping into a buffer allocated
        # (and faulted in) beforehand: one memcpy per mapped piece.
        end = wal.next_lsn
        target = memoryview(bytearray(64 << 20))

        def copy() -> None:
            position = 0
            while position < end:
                chunk, base, limit = wal.store.piece(position)
                stop = min(limit, end)
                with memoryview(chunk) as source:
                    target[: stop - position] = source[position - base : stop - base]
                position = stop

        return copy

    def views(wal: Wal) -> Callable[[], object]:
        def walk() -> None:
            for record in wal.iter(copy=False):
                record.data  # noqa: B018 - touch the view, as a consumer would

        return walk

    def batches(wal: Wal) -> Callable[[], object]:
        def walk() -> None:
            for batch in wal.batches():
                len(batch)

        return walk

    wal, _ = _log_of(directory, "replay-4k", 4096, total)
    with wal:
        ours, reference = _alternate(views(wal), memcpy_of(wal), repeats)
        print(_ratio_line("iter(copy=False) 4 KiB vs memcpy", ours, reference, ">= 0.8x"))

    wal, count = _log_of(directory, "replay-256", 256, total)
    with wal:
        database = sqlite3.connect(directory / "replay.sqlite")
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE log (lsn INTEGER PRIMARY KEY, data BLOB)")
        database.executemany(
            "INSERT INTO log (data) VALUES (?)", ((bytes(256),) for _ in range(count))
        )
        database.commit()

        def cursor() -> None:
            for (data,) in database.execute("SELECT data FROM log"):
                data  # noqa: B018

        cursor()  # warm
        ours, reference = _alternate(views(wal), cursor, repeats)
        print(_ratio_line("iter(copy=False) 256 B vs sqlite3 cursor", ours, reference, ">= 2x"))
        ours, reference = _alternate(batches(wal), memcpy_of(wal), repeats)
        print(_ratio_line("batches() 256 B vs memcpy", ours, reference, ">= 0.5x"))
        copies, cursor_times = _alternate(lambda: list(wal.iter()), cursor, 2)
        print(
            f"  (for comparison: iter() copying 256 B, "
            f"{min(cursor_times) / min(copies):.2f}x sqlite3's cursor)"
        )
        database.close()

    wal, count = _log_of(directory, "replay-64", 64, total)
    with wal:
        best = _best(batches(wal), repeats)
        print(
            f"  {'batches() 64 B':<42} {count / best / 1e6:6.1f} M rec/s   "
            f"({count} records, best of {repeats})   target >= 20 M rec/s"
        )


# -- the writer with a follower attached -----------------------------------------------------


def _device_sectors_written(path: Path) -> int | None:
    device = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat")
    if not stat.exists():
        return None
    return int(stat.read_text().split()[6])


def writer(directory: Path, scale: float) -> None:
    """Print commit latency and device bytes per commit, with and without a follower."""
    commits = max(200, int(1000 * scale))

    def run(name: str, with_follower: bool) -> tuple[list[float], float | None]:
        path = directory / name
        with Wal.open_segmented(path, 64 << 20) as wal:
            wal.append(b"start")
            wal.sync()
            follower = None
            if with_follower:
                follower = _spawn(
                    """
                    import sys
                    from mmwal import Wal
                    with Wal.open_segmented(sys.argv[1], readonly=True) as reader:
                        for record in reader.follow(timeout=2):
                            pass
                    """,
                    path,
                )
                time.sleep(0.5)
            payload = bytes(256)
            before = _device_sectors_written(path)
            latencies = []
            for _ in range(commits):
                began = time.perf_counter()
                wal.append_and_sync(payload)
                latencies.append(time.perf_counter() - began)
            after = _device_sectors_written(path)
        if follower is not None:
            follower.communicate(timeout=30)
        per_commit = None if before is None or after is None else (after - before) * 512 / commits
        return latencies, per_commit

    for round_ in range(2):
        for name, attached in (("alone", False), ("followed", True)):
            latencies, per_commit = run(f"writer-{name}-{round_}", attached)
            written = f"{per_commit / 1024:7.1f} KiB/commit" if per_commit else "n/a"
            print(f"  writer {name:<9} {_percentiles(latencies)}   device {written}")


BENCHMARKS: dict[str, Callable[[Path, float], None]] = {
    "latency": latency,
    "keepup": keepup,
    "idle": idle,
    "replay": replay,
    "writer": writer,
}


def main(argv: list[str] | None = None) -> None:
    """Run the follower benchmarks and print their figures and targets."""
    parser = argparse.ArgumentParser(prog="python -m perf.follow", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply counts and durations")
    parser.add_argument("--dir", type=Path, help="parent of the scratch directory")
    parser.add_argument("--only", help=f"comma list from {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    print(f"mmwal {mmwal.__version__}, C walk: {mmwal._format.SPEEDUPS}, cores: {os.cpu_count()}")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for name in chosen:
            print(f"{name}:")
            BENCHMARKS[name](Path(scratch), args.scale)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
