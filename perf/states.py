"""Workloads for a log that has run a while: commits by state, bytes written, rolls, resources.

Each commit-state workload grows the log to a state through the public API, then
times commits in blocks that alternate with raw ``pwrite`` + ``fdatasync``
commits at the same state, in the same process, so both meet the same machine.
Bytes written are read from two counters: this process's ``write_bytes`` in
``/proc/self/io`` (what the kernel charged it for dirtying; other processes do
not count) and the block device's sectors written (``/proc/diskstats``: the
ground truth, but every process on the machine counts).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from perf.engines import SEGMENT_SIZE, MmwalEngine, create
from perf.plan import Case
from perf.workloads import POOL, Metrics, opened, payloads

#: Commit states: (workload, bytes in the log before the commits, growth record size).
_MIB = 1 << 20
COMMIT_STATES: dict[str, int] = {
    "commit_fresh": 0,
    "commit_early": 4 * _MIB,
    "commit_middle": 32 * _MIB,
    "commit_late": 60 * _MIB,
    "commit_many_segments": 4 * SEGMENT_SIZE + 32 * _MIB,
    "commit_after_roll": SEGMENT_SIZE - 64 * 1024,
}
#: Growth record: large, so growing is quick, and written through the mapping in order.
_GROWTH_RECORD = 64 * 1024
#: Commits per block; mmwal and raw blocks alternate, short so that bursts of
#: other processes' I/O on a shared disk hit both sides alike.
_BLOCK = 5
_HEADER = 8


def _device() -> str:
    """Return the block device holding the working directory (``vda`` style)."""
    stat = os.stat(".")
    major, minor = os.major(stat.st_dev), os.minor(stat.st_dev)
    with open("/proc/diskstats", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if int(fields[0]) == major and int(fields[1]) == minor:
                return fields[2]
    return ""


def device_written_bytes(device: str) -> int:
    """Return the bytes the block device ``device`` has written since boot (all processes)."""
    with open("/proc/diskstats", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if fields[2] == device:
                return int(fields[9]) * 512
    return 0


def process_written_bytes() -> int:
    """Return the bytes this process caused to be written (``/proc/self/io`` write_bytes)."""
    with open("/proc/self/io", encoding="ascii") as counters:
        for line in counters:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


class _Meter:
    """Latencies and written bytes of one side of a paired measurement."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.latencies: list[int] = []
        self.process_bytes = 0
        self.device_bytes = 0

    def run(self, commit: Callable[[], object], count: int) -> None:
        latencies = self.latencies
        process = process_written_bytes()
        device = device_written_bytes(self.device)
        for _ in range(count):
            began = time.perf_counter_ns()
            commit()
            latencies.append(time.perf_counter_ns() - began)
        self.process_bytes += process_written_bytes() - process
        self.device_bytes += device_written_bytes(self.device) - device


def quantile(ordered: list[int], fraction: float) -> float:
    """Return the ``fraction`` quantile of sorted ``ordered`` (nearest rank)."""
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


class _RawLog:
    """Raw ``pwrite`` + ``fdatasync`` into preallocated files: the physical reference."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        self.offset = 0
        self.files = 0

    def roll(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        path = self.directory / f"raw-{self.files}.log"
        self.files += 1
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(self.fd, 0, SEGMENT_SIZE)
        os.fsync(self.fd)
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.fd < 0 or self.offset + len(data) > SEGMENT_SIZE:
            self.roll()
        os.pwrite(self.fd, data, self.offset)
        self.offset += len(data)

    def commit(self, data: bytes) -> None:
        self.write(data)
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def commit_state(case: Case) -> Metrics:
    """Grow a segmented log (and the raw reference) to the case's state, then commit."""
    depth = int(COMMIT_STATES[case.workload] * case.depth_scale)
    directory = Path(case.directory)
    device = _device()
    pool = payloads(case.size, POOL)
    growth = os.urandom(_GROWTH_RECORD - _HEADER)
    raw = _RawLog(directory)
    mmwal_meter, raw_meter = _Meter(device), _Meter(device)
    with opened(case) as engine:
        # Grow as a running log does: appends through the mapping, a sync per MiB.
        written = 0
        while written + _GROWTH_RECORD <= depth:
            engine.append(growth)
            raw.write(growth + bytes(_HEADER))
            written += _GROWTH_RECORD
            if written % _MIB == 0:
                engine.sync()
                os.fdatasync(raw.fd)
        if case.workload == "commit_after_roll":
            # Leave the end just short of the segment's: the first commit rolls.
            # The raw log's equivalent of a roll is its next preallocated file.
            assert isinstance(engine, MmwalEngine)
            end = engine.next_lsn() % SEGMENT_SIZE
            engine.append(bytes(SEGMENT_SIZE - end - 2 * _HEADER - 100))
            engine.sync()
            raw.roll()
        engine.sync()
        if raw.fd >= 0:
            os.fdatasync(raw.fd)
        record = [0]

        def mmwal_commit() -> None:
            engine.append_and_sync(pool[record[0] % POOL])
            record[0] += 1

        def raw_commit() -> None:
            raw.commit(bytes(_HEADER) + pool[record[0] % POOL])
            record[0] += 1

        blocks = max(1, case.count // _BLOCK)
        for _ in range(blocks):
            mmwal_meter.run(mmwal_commit, _BLOCK)
            raw_meter.run(raw_commit, _BLOCK)
        counters = engine.counters()
    raw.close()
    metrics: Metrics = {}
    for name, meter in (("", mmwal_meter), ("raw_", raw_meter)):
        ordered = sorted(meter.latencies)
        count = len(ordered)
        metrics |= {
            f"{name}p50_us": quantile(ordered, 0.5) / 1e3,
            f"{name}p99_us": quantile(ordered, 0.99) / 1e3,
            f"{name}kib_per_commit": meter.process_bytes / count / 1024,
            f"{name}device_kib_per_commit": meter.device_bytes / count / 1024,
        }
    metrics["x_raw_p50"] = metrics["raw_p50_us"] / metrics["p50_us"]
    metrics["x_raw_p99"] = metrics["raw_p99_us"] / metrics["p99_us"]
    metrics["segments_created"] = counters.get("segments_created", 0.0)
    return metrics


def disk_bytes_written(case: Case) -> Metrics:
    """Append ``count`` records, syncing every ``sync_every``; count bytes written."""
    device = _device()
    pool = payloads(case.size, POOL)
    process = process_written_bytes()
    start_device = device_written_bytes(device)
    began = time.perf_counter()
    with opened(case) as engine:
        append = engine.append
        for i in range(case.count):
            append(pool[i % POOL])
            if (i + 1) % case.sync_every == 0:
                engine.sync()
        engine.sync()
    elapsed = time.perf_counter() - began
    appended = case.count * (case.size + _HEADER)
    return {
        "written_per_appended": (process_written_bytes() - process) / appended,
        "device_written_per_appended": (device_written_bytes(device) - start_device) / appended,
        "records_per_s": case.count / elapsed,
    }


def run_queue_wait_ns() -> int | None:
    """Return the time the calling thread has waited runnable for a CPU, or None.

    The second field of ``/proc/thread-self/schedstat`` (Linux): time spent on a
    run queue, ready to run, while another task had the CPU (preemption).
    """
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as stats:
            return int(stats.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _involuntary_switches() -> int:
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)).ru_nivcsw


def roll_latency(case: Case) -> Metrics:
    """Time every single append over ``count`` appends (several rolls), syncing as a log does.

    The run-queue wait of the appending thread is read at every sync: an append
    that took milliseconds in a window whose thread waited as long for a CPU was
    preempted, which no log can prevent (``max_less_wait_us``; docs/BENCHMARKS.md).
    """
    pool = payloads(case.size, POOL)
    latencies = [0] * case.count
    clock = time.perf_counter_ns
    sync_every = case.sync_every
    # Run-queue wait at the start of each window of ``sync_every`` appends (and its sync).
    waits: list[int | None] = [run_queue_wait_ns()]
    switches = _involuntary_switches()
    with opened(case) as engine:
        append = engine.append
        for i in range(case.count):
            data = pool[i % POOL]
            began = clock()
            append(data)
            latencies[i] = clock() - began
            if (i + 1) % sync_every == 0:
                engine.sync()
                waits.append(run_queue_wait_ns())
        engine.sync()
        waits.append(run_queue_wait_ns())
        counters = engine.counters()
    switches = _involuntary_switches() - switches
    ordered = sorted(latencies)
    # The appends whose frame crossed into a new 64 MiB segment or window (a fresh
    # log, so append i starts at i * frame); for a log that does not roll, the
    # same positions, as a reference.
    frame = case.size + _HEADER
    rolls = [
        i
        for i in range(case.count)
        if (i * frame) // SEGMENT_SIZE != ((i + 1) * frame - 1) // SEGMENT_SIZE or i == 0
    ]
    return {
        "max_us": ordered[-1] / 1e3,
        "roll_max_us": max(latencies[i] for i in rolls) / 1e3,
        "p50_us": quantile(ordered, 0.5) / 1e3,
        "p99_us": quantile(ordered, 0.99) / 1e3,
        "p999_us": quantile(ordered, 0.999) / 1e3,
        "p9999_us": quantile(ordered, 0.9999) / 1e3,
        "over_1ms": float(sum(1 for value in ordered if value > 1_000_000)),
        "segments_created": counters.get("segments_created", 0.0),
        "involuntary_switches": float(switches),
        **_less_run_queue_wait(latencies, waits, sync_every),
    }


def _less_run_queue_wait(latencies: list[int], waits: list[int | None], window: int) -> Metrics:
    """Return the worst append less the run-queue wait of its window, and the total wait.

    A window's wait may have fallen outside its appends (in the loop or the sync),
    so this can understate an append's own cost, never overstate it; the run that
    wants the whole truth is traced (docs/BENCHMARKS.md, "Roll latency").
    """
    if any(wait is None for wait in waits):
        return {}
    known = [wait for wait in waits if wait is not None]
    worst = 0
    for start in range(0, len(latencies), window):
        index = start // window
        waited = known[min(index + 1, len(known) - 1)] - known[index]
        worst = max(worst, max(latencies[start : start + window]) - waited)
    return {"max_less_wait_us": worst / 1e3, "run_queue_ms": (known[-1] - known[0]) / 1e6}


def _count_open() -> tuple[int, int]:
    descriptors = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps", encoding="ascii") as maps:
        mappings = sum(1 for _ in maps)
    return descriptors, mappings


_TINY_SEGMENT = 4096
_FEW_SEGMENTS = 16


def resources(case: Case) -> Metrics:
    """Count descriptors and mappings of a writer and a reader: 16 segments, then ``count``."""
    import mmwal

    metrics: Metrics = {"segments": float(case.count)}
    base_fds, base_maps = _count_open()
    record = os.urandom(case.size)
    for segments, label in ((_FEW_SEGMENTS, "few"), (case.count, "many")):
        directory = Path(case.directory) / f"log-{segments}"
        per_segment = _TINY_SEGMENT // (case.size + _HEADER)
        with mmwal.Wal.open_segmented(directory, _TINY_SEGMENT) as wal:
            wal.append_many([record] * (per_segment * segments))
        began = time.perf_counter()
        with mmwal.Wal.open_segmented(directory) as wal:
            metrics[f"open_s_{label}"] = time.perf_counter() - began
            for _ in wal:
                pass
            wal.append(record)
            wal.sync()
            fds, maps = _count_open()
            metrics[f"fds_{label}"] = float(fds - base_fds)
            metrics[f"maps_{label}"] = float(maps - base_maps)
        with mmwal.Wal.open_segmented(directory, readonly=True) as reader:
            for _ in reader:
                pass
            fds, maps = _count_open()
            metrics[f"reader_fds_{label}"] = float(fds - base_fds)
            metrics[f"reader_maps_{label}"] = float(maps - base_maps)
    return metrics


def rss_reader(case: Case) -> Metrics:
    """Replay the fixture log read-only; sample resident memory as it goes."""
    import psutil  # type: ignore[import-untyped, unused-ignore]

    import mmwal

    process = psutil.Process()
    baseline = int(process.memory_info().rss)
    peak = baseline
    engine = create(case.engine)
    directory = Path(case.directory)
    wal = (
        mmwal.Wal.open_segmented(directory / "segments", readonly=True)
        if engine.name == "mmwal-seg"
        else mmwal.Wal.open(directory / "wal.log", readonly=True)
    )
    records = 0
    sample_every = max(1, (16 * _MIB) // case.size)
    with wal:
        for _ in wal:
            records += 1
            if records % sample_every == 0:
                peak = max(peak, int(process.memory_info().rss))
        peak = max(peak, int(process.memory_info().rss))
    return {
        "peak_rss_mib": peak / _MIB,
        "baseline_rss_mib": baseline / _MIB,
        "records": float(records),
    }


#: Workload name -> function, merged into ``perf.workloads.RUNNERS``.
RUNNERS: dict[str, Callable[[Case], Metrics]] = {
    **dict.fromkeys(COMMIT_STATES, commit_state),
    "disk_bytes": disk_bytes_written,
    "roll_latency": roll_latency,
    "resources": resources,
    "rss_reader": rss_reader,
}
