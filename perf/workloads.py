"""Run one workload against one engine and return its measured numbers."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from perf import cache
from perf.engines import Engine, create
from perf.plan import RAW_REFERENCE, Case
from perf.reference import memcpy_gb_per_s, raw_pwrite_commits

Metrics = dict[str, float]

#: Distinct random payloads cycled through (random bytes defeat compression).
POOL = 1024
#: Records per ``append_many`` call in ``bulk_many`` and fixture preparation.
BATCH = 1024
#: Bytes appended between two RSS samples.
RSS_SAMPLE_BYTES = 1 << 20


def payloads(size: int, count: int) -> list[bytes]:
    """Return ``count`` records of ``size`` random bytes, cycling through :data:`POOL`."""
    pool = [os.urandom(size) for _ in range(min(POOL, count))]
    return [pool[i % len(pool)] for i in range(count)]


def disk_bytes(directory: Path) -> int:
    """Return the allocated size of every file under ``directory``."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


@contextmanager
def opened(case: Case, directory: Path | None = None) -> Iterator[Engine]:
    """Open the case's engine in ``directory`` (default: the case's) and close it after."""
    engine = create(case.engine)
    engine.open(directory or Path(case.directory))
    try:
        yield engine
    finally:
        engine.close()


def _serialised(commit: Callable[[bytes], object]) -> Callable[[bytes], None]:
    lock = threading.Lock()

    def locked(data: bytes) -> None:
        with lock:
            commit(data)

    return locked


def _concurrent_commit(engine: Engine) -> Callable[[bytes], None]:
    """Return ``append_and_sync``, behind one lock when the engine is not thread-safe."""
    return engine.append_and_sync if engine.thread_safe else _serialised(engine.append_and_sync)


def _run_threads(count: int, body: Callable[[int], None]) -> float:
    """Start ``count`` threads running ``body(index)`` together; return wall seconds."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            body(index)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def prepare(case: Case) -> Metrics:
    """Write the fixture log: ``count`` records in batches, one sync at the end."""
    records = payloads(case.size, case.count)
    start = time.perf_counter()
    with opened(case) as engine:
        for i in range(0, len(records), BATCH):
            engine.append_many(records[i : i + BATCH])
        engine.sync()
    elapsed = time.perf_counter() - start
    return {
        "records_per_s": case.count / elapsed,
        "disk_mib": disk_bytes(Path(case.directory)) / 2**20,
    }


def bulk(case: Case) -> Metrics:
    """Append ``count`` records one call each, then sync once."""
    records = payloads(case.size, case.count)
    with opened(case) as engine:
        append = engine.append
        start = time.perf_counter_ns()
        for data in records:
            append(data)
        appended = time.perf_counter_ns()
        engine.sync()
        synced = time.perf_counter_ns()
        counters = engine.counters()
    return {
        "records_per_s": case.count * 1e9 / (synced - start),
        "appends_per_s": case.count * 1e9 / (appended - start),
        "ns_per_append": (appended - start) / case.count,
        "final_sync_s": (synced - appended) / 1e9,
        **counters,
    }


def bulk_many(case: Case) -> Metrics:
    """Append ``count`` records in ``append_many`` batches, then sync once."""
    records = payloads(case.size, case.count)
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    with opened(case) as engine:
        append_many = engine.append_many
        start = time.perf_counter_ns()
        for batch in batches:
            append_many(batch)
        engine.sync()
        synced = time.perf_counter_ns()
    return {"records_per_s": case.count * 1e9 / (synced - start)}


def sync_each(case: Case) -> Metrics:
    """Commit one record at a time (append + sync) for ``budget_s`` seconds."""
    if case.engine == RAW_REFERENCE:
        return raw_pwrite_commits(Path(case.directory), case.size, case.budget_s)
    pool = payloads(case.size, POOL)
    with opened(case) as engine:
        commit = engine.append_and_sync
        commits = 0
        start = time.perf_counter()
        deadline = start + case.budget_s
        now = start
        while now < deadline:
            commit(pool[commits % POOL])
            commits += 1
            now = time.perf_counter()
        counters = engine.counters()
    return {"commits_per_s": commits / (now - start), "commits": float(commits), **counters}


def group_commit(case: Case) -> Metrics:
    """Commit from ``threads`` threads, each append + sync per record, for ``budget_s``."""
    pool = payloads(case.size, POOL)
    counts = [0] * case.threads
    with opened(case) as engine:
        commit = _concurrent_commit(engine)

        def committer(index: int) -> None:
            commits = 0
            offset = index * (POOL // case.threads)
            deadline = time.perf_counter() + case.budget_s
            while time.perf_counter() < deadline:
                commit(pool[(offset + commits) % POOL])
                commits += 1
            counts[index] = commits

        elapsed = _run_threads(case.threads, committer)
        counters = engine.counters()
    total = sum(counts)
    if counters.get("flushes"):
        counters["commits_per_flush"] = total / counters["flushes"]
    return {
        "commits_per_s": total / elapsed,
        "commits": float(total),
        "harness_lock": 0.0 if engine.thread_safe else 1.0,
        **counters,
    }


def append_threads(case: Case) -> Metrics:
    """Append ``count`` records split over ``threads`` threads, no sync while timed."""
    pool = payloads(case.size, POOL)
    share = case.count // case.threads
    with opened(case) as engine:
        append = engine.append if engine.thread_safe else _serialised(engine.append)

        def appender(index: int) -> None:
            for i in range(share):
                append(pool[(index + i) % POOL])

        elapsed = _run_threads(case.threads, appender)
        engine.sync()
    return {"appends_per_s": share * case.threads / elapsed}


def _replay(case: Case, cold: bool) -> Metrics:
    directory = Path(case.directory)
    metrics: Metrics = {}
    if cold:
        before = cache.cached_bytes()
        metrics["evicted_mib"] = cache.evict(directory) / 2**20
        metrics["cache_drop_mib"] = (before - cache.cached_bytes()) / 2**20
    engine = create(case.engine)
    start = time.perf_counter_ns()
    engine.open(directory)
    try:
        opened_at = time.perf_counter_ns()
        replayed = engine.replay()
        done = time.perf_counter_ns()
    finally:
        engine.close()
    expected = (case.count, case.count * case.size)
    if tuple(replayed) != expected:
        raise AssertionError(f"replayed {tuple(replayed)} (records, bytes), expected {expected}")
    elapsed = done - opened_at
    metrics |= {
        "records_per_s": replayed.records * 1e9 / elapsed,
        "gb_per_s": replayed.payload_bytes / elapsed,
        "ns_per_record": elapsed / replayed.records,
        "open_s": (opened_at - start) / 1e9,
    }
    if not cold:
        memcpy = memcpy_gb_per_s(replayed.payload_bytes)
        metrics |= {"memcpy_gb_per_s": memcpy, "vs_memcpy": metrics["gb_per_s"] / memcpy}
    return metrics


def replay_warm(case: Case) -> Metrics:
    """Replay the fixture log with its pages in the page cache (just written)."""
    return _replay(case, cold=False)


def replay_cold(case: Case) -> Metrics:
    """Replay the fixture log after evicting its pages from the page cache."""
    return _replay(case, cold=True)


def reopen(case: Case) -> Metrics:
    """Time ``open()`` of the (warm-cache) fixture log until it is ready to append."""
    engine = create(case.engine)
    start = time.perf_counter_ns()
    engine.open(Path(case.directory))
    opened_at = time.perf_counter_ns()
    engine.close()
    return {
        "open_s": (opened_at - start) / 1e9,
        "log_mib": disk_bytes(Path(case.directory)) / 2**20,
    }


def rss(case: Case) -> Metrics:
    """Grow the log to ``count`` records, syncing every ``sync_every``; sample RSS."""
    import psutil  # type: ignore[import-untyped, unused-ignore]

    process = psutil.Process()
    pool = payloads(case.size, POOL)
    sample_every = max(1, RSS_SAMPLE_BYTES // case.size)
    baseline = int(process.memory_info().rss)
    peak = peak_anon = 0

    def sample() -> None:
        nonlocal peak, peak_anon
        memory = process.memory_info()
        peak = max(peak, int(memory.rss))
        # ``shared`` is the file-backed part of RSS: mapped page-cache pages.
        peak_anon = max(peak_anon, int(memory.rss - memory.shared))

    start = time.perf_counter()
    with opened(case) as engine:
        append = engine.append
        for i in range(case.count):
            append(pool[i % POOL])
            if (i + 1) % case.sync_every == 0:
                engine.sync()
            if i % sample_every == 0:
                sample()
        engine.sync()
        sample()
    elapsed = time.perf_counter() - start
    return {
        "peak_rss_mib": peak / 2**20,
        "peak_anon_mib": peak_anon / 2**20,
        "baseline_rss_mib": baseline / 2**20,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "records_per_s": case.count / elapsed,
    }


#: Workload name -> function, for the worker.
RUNNERS: dict[str, Callable[[Case], Metrics]] = {
    "prepare": prepare,
    "bulk": bulk,
    "bulk_many": bulk_many,
    "sync_each": sync_each,
    "group_commit": group_commit,
    "append_threads": append_threads,
    "replay_warm": replay_warm,
    "replay_cold": replay_cold,
    "reopen": reopen,
    "rss": rss,
}
