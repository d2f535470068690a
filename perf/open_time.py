"""Open time against log size: a 64 MiB and a 2 GiB log, after a clean close and after a crash.

``python -m perf.open_time [--sizes 64,2048] [--layout segmented,file] [--reps N] [--dir D]``

For each layout and size, a writer process appends 1 KiB records (``append_many``
in batches of about 1 MiB, ``sync`` every 8 MiB and after the last batch, then
4 MiB more without a sync) and is killed with SIGKILL: the page cache keeps its
bytes, its recovery point is whatever its last flushes left. Then, in this process:

- *after a crash*: the recovery point the killed writer left is put back before
  each open (opening and closing moves it), and a writable ``mmwal.open`` is
  timed. The first open also writes back the pages the writer never synced; the
  median over ``--reps`` is reported, the first one too.
- *after a clean close*: ``open`` then ``close`` (which leaves the point at the end),
  and the next open is timed.
- *no recovery point* (reference): the point is removed and a read-only open is
  timed once: the full scan every open paid before the point existed.

The target: a 2 GiB log opens in at most 3x the time of a 64 MiB one, after a
close and after a crash. Times are from one run on whatever machine runs it;
compare the ratios, which share the run's conditions.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mmwal

_RECORD = 1024
_BATCH = 1024  # records per append_many: about 1 MiB
_SYNC_EVERY = 8  # batches between syncs
_UNSYNCED_BATCHES = 4
_MIB = 1024 * 1024


def _point_file(path: Path) -> Path:
    return path / "recovery" if path.is_dir() else Path(f"{path}.recovery")


def _write(path: str, mib: int, segmented: bool) -> None:
    """Append ``mib`` MiB (syncing every 8 MiB), then 4 MiB unsynced; say so; wait to die."""
    payload = bytes(range(256)) * (_RECORD // 256)
    batch = [payload] * _BATCH
    wal = mmwal.open(path, segment_size=64 * _MIB if segmented else None)
    batches = mib * _MIB // (_BATCH * (_RECORD + 8))
    for number in range(batches):
        wal.append_many(batch)
        if number % _SYNC_EVERY == _SYNC_EVERY - 1 or number == batches - 1:
            wal.sync()
    for _ in range(_UNSYNCED_BATCHES):
        wal.append_many(batch)
    print("ready", wal.next_lsn, flush=True)
    time.sleep(3600)


def _crashed_log(directory: Path, mib: int, segmented: bool) -> tuple[Path, int]:
    """Run a writer until it has appended ``mib`` MiB, then SIGKILL it; return (path, end)."""
    path = directory / ("log" if segmented else "log.wal")
    writer = subprocess.Popen(
        [sys.executable, "-m", "perf.open_time", "--writer", str(path), str(mib), str(segmented)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    with writer.stdout:
        line = writer.stdout.readline().split()
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    if not line or line[0] != "ready":
        raise RuntimeError(f"the writer died before it was ready: {line}")
    return path, int(line[1])


def _timed_open(path: Path, *, readonly: bool = False) -> tuple[float, mmwal.Wal]:
    began = time.perf_counter()
    wal = mmwal.open(path, readonly=readonly)
    return time.perf_counter() - began, wal


def _measure(directory: Path, mib: int, segmented: bool, reps: int) -> dict[str, float]:
    path, end = _crashed_log(directory, mib, segmented)
    crash_point = _point_file(path).read_bytes()
    after_crash: list[float] = []
    for _ in range(reps):
        _point_file(path).write_bytes(crash_point)
        elapsed, wal = _timed_open(path)
        assert wal.next_lsn == end, (wal.next_lsn, end)
        assert wal.recovery.recovery_point is not None
        scanned = end - wal.recovery.recovery_point
        wal.close()
        after_crash.append(elapsed)
    after_close: list[float] = []
    for _ in range(reps):
        elapsed, wal = _timed_open(path)
        assert wal.recovery.recovery_point == end
        wal.close()
        after_close.append(elapsed)
    _point_file(path).unlink()
    full_scan, wal = _timed_open(path, readonly=True)
    assert wal.next_lsn == end
    wal.close()
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
        _point_file(path).unlink(missing_ok=True)
    return {
        "crash_first": after_crash[0],
        "crash": statistics.median(after_crash),
        "crash_scanned_mib": scanned / _MIB,
        "close": statistics.median(after_close),
        "full_scan": full_scan,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; return 1 if a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m perf.open_time", description=__doc__)
    parser.add_argument("--sizes", default="64,2048", help="log sizes in MiB (default 64,2048)")
    parser.add_argument("--layout", default="segmented,file")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    parser.add_argument("--writer", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.writer:
        path, mib, segmented = arguments.writer
        _write(path, int(mib), segmented == "True")
        return 0
    sizes = [int(size) for size in arguments.sizes.split(",")]
    missed = False
    with tempfile.TemporaryDirectory(prefix="mmwal-open-", dir=arguments.dir) as scratch:
        for layout in arguments.layout.split(","):
            results = {
                size: _measure(Path(scratch), size, layout == "segmented", arguments.reps)
                for size in sizes
            }
            print(f"\n{layout}: open time, ms (median of {arguments.reps}; crash: first open too)")
            print(
                f"{'log':>8} {'after close':>12} {'after crash':>12} {'first':>8} "
                f"{'scanned':>9} {'no point':>9}"
            )
            for size, result in results.items():
                print(
                    f"{size:>5} MiB {result['close'] * 1e3:>12.1f} {result['crash'] * 1e3:>12.1f} "
                    f"{result['crash_first'] * 1e3:>8.1f} {result['crash_scanned_mib']:>5.1f} MiB "
                    f"{result['full_scan'] * 1e3:>9.1f}"
                )
            small, large = results[min(sizes)], results[max(sizes)]
            for case in ("close", "crash"):
                ratio = large[case] / small[case]
                verdict = "ok" if ratio <= 3 else "MISSED"
                missed = missed or ratio > 3
                print(
                    f"  {max(sizes)} MiB / {min(sizes)} MiB after {case}: {ratio:.2f}x "
                    f"(target <= 3x) {verdict}"
                )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
