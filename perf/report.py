"""Summarise repetitions, compute ratios against mmwal, check targets, format tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from perf.plan import (
    BASELINE,
    COMMIT_STATE_WORKLOADS,
    PLAINFILE,
    RAW_REFERENCE,
    SEGMENTED,
    WORKLOADS,
)
from perf.runner import Collected

Key = tuple[str, str, int, int]

_COMMIT_STATE_DISPLAY = (
    ("p50_us", "µs p50 commit"),
    ("p99_us", "µs p99"),
    ("raw_p50_us", "µs raw p50"),
    ("raw_p99_us", "µs raw p99"),
    ("x_raw_p50", "x raw p50"),
    ("x_raw_p99", "x raw p99"),
    ("kib_per_commit", "KiB written/commit"),
    ("raw_kib_per_commit", "KiB raw"),
    ("device_kib_per_commit", "KiB device/commit"),
    ("raw_device_kib_per_commit", "KiB raw device"),
)

#: Per workload: (metric, unit) of the table's main column, then secondary ones.
DISPLAY: dict[str, tuple[tuple[str, str], ...]] = {
    "bulk": (("records_per_s", "rec/s"), ("appends_per_s", "append/s before the sync")),
    "bulk_many": (("records_per_s", "rec/s"),),
    "sync_each": (("commits_per_s", "commit/s"),),
    "group_commit": (("commits_per_s", "commit/s"), ("commits_per_flush", "commits/flush")),
    "append_threads": (("appends_per_s", "append/s"),),
    "replay_warm": (
        ("records_per_s", "rec/s"),
        ("gb_per_s", "GB/s"),
        ("memcpy_gb_per_s", "GB/s memcpy"),
    ),
    "replay_cold": (("records_per_s", "rec/s"), ("gb_per_s", "GB/s"), ("open_s", "s open")),
    "reopen": (("open_s", "s"), ("log_mib", "MiB on disk")),
    "rss": (
        ("peak_rss_mib", "MiB peak RSS"),
        ("peak_anon_mib", "MiB peak anonymous RSS"),
        ("baseline_rss_mib", "MiB at start"),
    ),
    **dict.fromkeys(COMMIT_STATE_WORKLOADS, _COMMIT_STATE_DISPLAY),
    "disk_bytes": (
        ("device_written_per_appended", "device bytes / appended"),
        ("written_per_appended", "process write_bytes / appended"),
    ),
    "roll_latency": (
        ("max_us", "µs worst append"),
        ("roll_max_us", "µs worst append that rolled"),
        ("p50_us", "µs p50"),
        ("p99_us", "µs p99"),
        ("p999_us", "µs p99.9"),
        ("p9999_us", "µs p99.99"),
        ("over_1ms", "appends over 1 ms"),
        ("max_less_wait_us", "µs worst append less its window's run-queue wait"),
        ("run_queue_ms", "ms runnable, waiting for a CPU"),
        ("involuntary_switches", "preemptions"),
        ("segments_created", "segments"),
    ),
    "resources": (
        ("fds_many", "fds, writer, at the larger segment count"),
        ("segments", "segments"),
        ("maps_many", "maps"),
        ("reader_fds_many", "reader fds"),
        ("reader_maps_many", "reader maps"),
        ("open_s_many", "s open"),
        ("fds_few", "fds at 16 segments"),
        ("maps_few", "maps at 16"),
    ),
    "rss_reader": (("peak_rss_mib", "MiB peak RSS, read-only replay"),),
}


@dataclass(frozen=True)
class Stat:
    """Median and range of one metric over the repetitions."""

    median: float
    low: float
    high: float
    samples: tuple[float, ...]


@dataclass(frozen=True)
class Target:
    """One performance target evaluated on this run's medians."""

    name: str
    value: float | None
    threshold: float
    #: The value must stay at or below the threshold (bytes, latencies, memory).
    at_most: bool = False

    @property
    def met(self) -> bool | None:
        """Return whether the target is met, ``None`` when it was not measured."""
        if self.value is None:
            return None
        return self.value <= self.threshold if self.at_most else self.value >= self.threshold


def summarise(collected: Collected) -> dict[Key, dict[str, Stat]]:
    """Reduce each measurement's repetitions to a :class:`Stat` per metric."""
    summary: dict[Key, dict[str, Stat]] = {}
    for key, runs in collected.samples.items():
        names = sorted({name for metrics in runs for name in metrics})
        summary[key] = {}
        for name in names:
            values = tuple(metrics[name] for metrics in runs if name in metrics)
            summary[key][name] = Stat(statistics.median(values), min(values), max(values), values)
    return summary


#: Row order of engines in tables and charts.
ENGINE_ORDER = (
    "mmwal",
    "mmwal-seg",
    "plainfile",
    "sqlite3",
    "lmdb",
    "plyvel",
    "rocksdict",
    RAW_REFERENCE,
)


def engine_rank(engine: str) -> int:
    """Return the engine's position in :data:`ENGINE_ORDER` (unknown engines last)."""
    return ENGINE_ORDER.index(engine) if engine in ENGINE_ORDER else len(ENGINE_ORDER)


def _order(key: Key) -> tuple[int, int, int, int, str]:
    workload, engine, size, threads = key
    return (WORKLOADS.index(workload), size, threads, engine_rank(engine), engine)


def human(value: float) -> str:
    """Format a number compactly (``1.23M``, ``45.6k``, ``0.0123``)."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def results_table(summary: dict[Key, dict[str, Stat]]) -> str:
    """Return the Markdown results table, with ratios against mmwal's median."""
    lines = [
        "| workload | size | threads | engine | median | min-max | unit | x mmwal | also |",
        "|---|---|--:|---|--:|--:|---|--:|---|",
    ]
    for key in sorted(summary, key=_order):
        workload, engine, size, threads = key
        stats = summary[key]
        (metric, unit), *extra = DISPLAY[workload]
        if metric not in stats:
            continue
        stat = stats[metric]
        base = summary.get((workload, BASELINE, size, threads), {}).get(metric)
        ratio = f"{stat.median / base.median:.2f}" if base and base.median else "-"
        notes = [f"{human(stats[m].median)} {u}" for m, u in extra if m in stats]
        if "harness_lock" in stats and stats["harness_lock"].median:
            notes.append("not thread-safe: one harness lock")
        also = "; ".join(notes)
        lines.append(
            f"| {workload} | {_size(size)} | {threads} | {engine} | {human(stat.median)} "
            f"| {human(stat.low)}-{human(stat.high)} | {unit} | {ratio} | {also} |"
        )
    return "\n".join(lines)


def targets(summary: dict[Key, dict[str, Stat]]) -> list[Target]:
    """Evaluate the project's performance targets on this run's medians."""

    def median(
        workload: str, engine: str, size: int, metric: str, threads: int = 1
    ) -> float | None:
        stat = summary.get((workload, engine, size, threads), {}).get(metric)
        return None if stat is None else stat.median

    def ratio(top: float | None, bottom: float | None) -> float | None:
        return None if top is None or bottom is None or bottom == 0 else top / bottom

    mm = BASELINE
    found: list[Target] = [
        Target(
            "bulk append 256 B: mmwal / plainfile (rec/s)",
            ratio(
                median("bulk", mm, 256, "records_per_s"),
                median("bulk", "plainfile", 256, "records_per_s"),
            ),
            1.2,
        ),
        Target(
            "bulk append 256 B: mmwal / sqlite3 (rec/s)",
            ratio(
                median("bulk", mm, 256, "records_per_s"),
                median("bulk", "sqlite3", 256, "records_per_s"),
            ),
            2.5,
        ),
        Target(
            "replay warm 256 B: mmwal / sqlite3 cursor (rec/s)",
            ratio(
                median("replay_warm", mm, 256, "records_per_s"),
                median("replay_warm", "sqlite3", 256, "records_per_s"),
            ),
            1.0,
        ),
        Target("replay warm 4 KiB: mmwal GB/s", median("replay_warm", mm, 4096, "gb_per_s"), 4.0),
        Target(
            "replay warm 4 KiB: mmwal GB/s / memcpy GB/s",
            median("replay_warm", mm, 4096, "vs_memcpy"),
            0.4,
        ),
    ]
    sizes = sorted({key[2] for key in summary if key[0] in ("sync_each", "group_commit")})
    per_size: list[tuple[str, Callable[[int], float | None], float]] = [
        (
            "append+sync {}: mmwal / plainfile (commit/s)",
            lambda s: ratio(
                median("sync_each", mm, s, "commits_per_s"),
                median("sync_each", "plainfile", s, "commits_per_s"),
            ),
            1.0,
        ),
        (
            "group commit {}: mmwal 8 threads / 1 thread (commit/s)",
            lambda s: ratio(
                median("group_commit", mm, s, "commits_per_s", 8),
                median("group_commit", mm, s, "commits_per_s", 1),
            ),
            4.0,
        ),
        (
            "append+sync {}: mmwal / raw pwrite+fdatasync (commit/s)",
            lambda s: ratio(
                median("sync_each", mm, s, "commits_per_s"),
                median("sync_each", RAW_REFERENCE, s, "commits_per_s"),
            ),
            0.9,
        ),
    ]
    for template, compute, threshold in per_size:
        found.extend(
            Target(template.format(_size(size)), compute(size), threshold) for size in sizes
        )
    found.append(
        Target("mmwal appends/s 256 B, no sync", median("bulk", mm, 256, "appends_per_s"), 1.2e6)
    )
    found.append(
        Target(
            "mmwal replayed rec/s 256 B, warm",
            median("replay_warm", mm, 256, "records_per_s"),
            2.5e6,
        )
    )
    found.extend(_long_running_targets(summary))
    return found


def _long_running_targets(summary: dict[Key, dict[str, Stat]]) -> list[Target]:
    """Targets of issue 9: commits at raw speed per state, bytes, rolls, resources."""

    def median(workload: str, engine: str, metric: str, size: int = 256) -> float | None:
        stat = summary.get((workload, engine, size, 1), {}).get(metric)
        return None if stat is None else stat.median

    found: list[Target] = [
        Target(
            f"commit 256 B, {workload.removeprefix('commit_').replace('_', ' ')}: "
            f"raw {quantile} / mmwal-seg {quantile} (latency)",
            median(workload, SEGMENTED, f"x_raw_{quantile}"),
            0.9,
        )
        for workload in COMMIT_STATE_WORKLOADS
        for quantile in ("p50", "p99")
    ]

    def least(engine: str, metric: str) -> float | None:
        # Other processes' writes only add to a device's counters: the least
        # repetition is the closest to what this one wrote.
        stat = summary.get(("disk_bytes", engine, 256, 1), {}).get(metric)
        return None if stat is None else stat.low

    for metric, counter in (
        ("device_written_per_appended", "block device, least of the repetitions"),
        ("written_per_appended", "process write_bytes"),
    ):
        plain = least(PLAINFILE, metric)
        for engine in (BASELINE, SEGMENTED):
            mine = least(engine, metric)
            found.append(
                Target(
                    f"disk bytes written, {engine} / plainfile ({counter})",
                    None if mine is None or not plain else mine / plain,
                    1.15,
                    at_most=True,
                )
            )
    for engine in (BASELINE, SEGMENTED):
        found.append(
            Target(
                f"worst single append over rolls, {engine} (µs)",
                median("roll_latency", engine, "max_us"),
                5000,
                at_most=True,
            )
        )
        found.append(
            Target(
                f"worst single append less run-queue wait, {engine} (µs)",
                median("roll_latency", engine, "max_less_wait_us"),
                5000,
                at_most=True,
            )
        )
        found.append(
            Target(
                f"worst append that rolled, {engine} (µs)",
                median("roll_latency", engine, "roll_max_us"),
                5000,
                at_most=True,
            )
        )
        found.append(
            Target(
                f"p99.9 append over rolls, {engine} (µs)",
                median("roll_latency", engine, "p999_us"),
                50,
                at_most=True,
            )
        )
    found.extend(
        Target(
            f"peak RSS of a read-only replay, {engine} (MiB)",
            median("rss_reader", engine, "peak_rss_mib", 4096),
            400,
            at_most=True,
        )
        for engine in (BASELINE, SEGMENTED)
    )
    for kind in ("fds", "maps", "reader_fds", "reader_maps"):
        many = median("resources", SEGMENTED, f"{kind}_many")
        few = median("resources", SEGMENTED, f"{kind}_few")
        found.append(
            Target(
                f"{kind.replace('_', ' ')} of a log of many segments less those of 16 segments",
                None if many is None or few is None else many - few,
                8,
                at_most=True,
            )
        )
    return found


def targets_table(found: list[Target]) -> str:
    """Return the Markdown table of targets: value, threshold, met or missed."""
    lines = ["| target | this run | needed | status |", "|---|--:|--:|---|"]
    for target in found:
        value = "n/a" if target.value is None else human(target.value)
        status = {None: "not measured", True: "met", False: "MISSED"}[target.met]
        bound = "≤" if target.at_most else "≥"
        lines.append(f"| {target.name} | {value} | {bound} {human(target.threshold)} | {status} |")
    return "\n".join(lines)
