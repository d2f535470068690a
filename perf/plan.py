"""Describe measurements and build the full and quick benchmark plans."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

#: Engine name of the raw ``os.pwrite`` + ``os.fdatasync`` reference.
RAW_REFERENCE = "raw-pwrite"
#: The engine every ratio is computed against.
BASELINE = "mmwal"

#: Workload names accepted by ``--workloads``, in run order.
WORKLOADS = (
    "bulk",
    "bulk_many",
    "sync_each",
    "group_commit",
    "append_threads",
    "replay_warm",
    "replay_cold",
    "reopen",
    "rss",
    "commit_fresh",
    "commit_early",
    "commit_middle",
    "commit_late",
    "commit_many_segments",
    "commit_after_roll",
    "disk_bytes",
    "roll_latency",
    "resources",
    "rss_reader",
)

#: The workloads that grow a log to a state, then time commits against raw ones.
COMMIT_STATE_WORKLOADS = WORKLOADS[WORKLOADS.index("commit_fresh") : WORKLOADS.index("disk_bytes")]
#: The engine the commit states, rolls and resources run on (segments are what roll).
SEGMENTED = "mmwal-seg"
#: The same with ``sync_method="fdatasync"`` (commit states only, when asked for).
SEGMENTED_FDATASYNC = "mmwal-seg-fdatasync"
#: The plain-file log every bytes-written figure is compared with.
PLAINFILE = "plainfile"

_MIB = 1 << 20


@dataclass(frozen=True)
class Case:
    """One measurement (or fixture preparation) run by one worker process."""

    workload: str
    engine: str
    size: int
    threads: int = 1
    count: int = 0
    budget_s: float = 0.0
    sync_every: int = 0
    directory: str = ""
    #: Shrinks the log a commit-state workload grows before it measures (smoke runs).
    depth_scale: float = 1.0

    @property
    def key(self) -> tuple[str, str, int, int]:
        """Identify the measurement across repetitions."""
        return (self.workload, self.engine, self.size, self.threads)

    def to_json(self) -> str:
        """Serialise for the worker's command line."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        """Parse what :meth:`to_json` produced."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Stage:
    """Cases repeated ``reps`` times, engines interleaved within each repetition."""

    cases: tuple[Case, ...]
    reps: int


@dataclass(frozen=True)
class Group:
    """Stages sharing fixtures: one prepared log per engine, kept until the group ends."""

    name: str
    fixtures: tuple[Case, ...]
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class Settings:
    """Sizes, counts and time budgets of one benchmark mode."""

    sizes: tuple[int, ...]
    reps: int
    heavy_reps: int
    bulk_records: int
    bulk_bytes: int
    replay_records: int
    replay_bytes: int
    sync_budget_s: float
    mmwal_threads: tuple[int, ...]
    peer_threads: int
    thread_append_records: int
    thread_append_threads: tuple[int, ...]
    reopen_bytes: int
    reopen_size: int
    rss_bytes: int
    rss_size: int
    rss_sync_bytes: int
    commit_state_commits: int = 2000
    disk_bytes: int = 256 * _MIB
    disk_sync_bytes: int = _MIB
    roll_appends: int = 1_150_000
    reader_rss_bytes: int = 1024 * _MIB
    resource_segments: int = 1024
    depth_scale: float = 1.0

    def describe(self) -> str:
        """Return the sizes of this run in one paragraph, for the printed report."""
        mib = _MIB
        return (
            f"record sizes {', '.join(f'{s} B' for s in self.sizes)}; {self.reps} repetitions "
            f"(rss: {self.heavy_reps}), each in a fresh process; bulk: min({self.bulk_records} "
            f"records, {self.bulk_bytes // mib} MiB); replay: min({self.replay_records} records, "
            f"{self.replay_bytes // mib} MiB); per-record sync workloads: {self.sync_budget_s:g} s "
            f"each; append_threads: {self.thread_append_records} records; reopen: "
            f"{self.reopen_bytes / mib:g} MiB log of {self.reopen_size} B records; rss: log grown "
            f"to {self.rss_bytes / mib:g} MiB of {self.rss_size} B records, sync every "
            f"{self.rss_sync_bytes / mib:g} MiB; commit states: {self.commit_state_commits} "
            f"commits each side; disk_bytes: {self.disk_bytes / mib:g} MiB of 256 B records, sync "
            f"every {self.disk_sync_bytes / mib:g} MiB; roll_latency: {self.roll_appends} appends "
            f"of 256 B, sync every MiB; rss_reader: {self.reader_rss_bytes / mib:g} MiB log; "
            f"resources: 16 and {self.resource_segments} segments of 4 KiB"
        )

    def scaled(self, factor: float) -> Settings:
        """Shrink (or grow) every count, byte total and time budget by ``factor``."""

        def count(value: int, floor: int) -> int:
            return max(floor, int(value * factor))

        return dataclasses.replace(
            self,
            bulk_records=count(self.bulk_records, 1000),
            bulk_bytes=count(self.bulk_bytes, _MIB),
            replay_records=count(self.replay_records, 1000),
            replay_bytes=count(self.replay_bytes, _MIB),
            sync_budget_s=max(0.02, self.sync_budget_s * factor),
            thread_append_records=count(self.thread_append_records, 1000),
            reopen_bytes=count(self.reopen_bytes, _MIB),
            rss_bytes=count(self.rss_bytes, 2 * _MIB),
            rss_sync_bytes=count(self.rss_sync_bytes, _MIB // 4),
            commit_state_commits=count(self.commit_state_commits, 50),
            disk_bytes=count(self.disk_bytes, 2 * _MIB),
            roll_appends=count(self.roll_appends, 1000),
            reader_rss_bytes=count(self.reader_rss_bytes, 2 * _MIB),
            resource_segments=count(self.resource_segments, 32),
            depth_scale=min(1.0, self.depth_scale * factor),
        )


FULL = Settings(
    sizes=(64, 256, 4096),
    reps=5,
    heavy_reps=3,
    bulk_records=1_000_000,
    bulk_bytes=256 * _MIB,
    replay_records=1_000_000,
    replay_bytes=512 * _MIB,
    sync_budget_s=1.5,
    mmwal_threads=(1, 2, 4, 8, 16),
    peer_threads=8,
    thread_append_records=1_000_000,
    thread_append_threads=(1, 4, 8),
    reopen_bytes=1024 * _MIB,
    reopen_size=256,
    rss_bytes=2048 * _MIB,
    rss_size=4096,
    rss_sync_bytes=16 * _MIB,
)

QUICK = dataclasses.replace(
    FULL,
    sizes=(256,),
    reps=2,
    heavy_reps=1,
    bulk_records=100_000,
    replay_records=100_000,
    sync_budget_s=0.25,
    thread_append_records=100_000,
    reopen_bytes=64 * _MIB,
    rss_bytes=128 * _MIB,
    commit_state_commits=400,
    disk_bytes=64 * _MIB,
    roll_appends=300_000,
    reader_rss_bytes=128 * _MIB,
)

#: Engines ``--quick`` runs unless ``--engines`` says otherwise.
QUICK_ENGINES = ("mmwal", "plainfile", "sqlite3")


def _records(size: int, cap_records: int, cap_bytes: int) -> int:
    return max(1, min(cap_records, cap_bytes // size))


def _stage(cases: list[Case], reps: int) -> tuple[Stage, ...]:
    return (Stage(tuple(cases), reps),) if cases else ()


def build(settings: Settings, engines: tuple[str, ...], workloads: tuple[str, ...]) -> list[Group]:
    """Return the groups measuring ``workloads`` for ``engines`` under ``settings``."""
    groups: list[Group] = []
    mmwal = BASELINE in engines
    s = settings

    def simple(name: str, cases: list[Case], reps: int = s.reps) -> None:
        if name in workloads and cases:
            groups.append(Group(name, (), _stage(cases, reps)))

    for size in s.sizes:
        count = _records(size, s.bulk_records, s.bulk_bytes)
        simple("bulk", [Case("bulk", e, size, count=count) for e in engines])
    for size in s.sizes:
        count = _records(size, s.bulk_records, s.bulk_bytes)
        simple("bulk_many", [Case("bulk_many", e, size, count=count) for e in engines])
    for size in s.sizes:
        peers = [*engines, RAW_REFERENCE] if mmwal else list(engines)
        simple("sync_each", [Case("sync_each", e, size, budget_s=s.sync_budget_s) for e in peers])
    for size in s.sizes:
        cases = [
            Case("group_commit", e, size, threads=threads, budget_s=s.sync_budget_s)
            for e in engines
            for threads in (s.mmwal_threads if e == BASELINE else (s.peer_threads,))
        ]
        simple("group_commit", cases)
    thread_size = 256 if 256 in s.sizes else s.sizes[0]
    if mmwal:
        cases = [
            Case("append_threads", BASELINE, thread_size, threads=t, count=s.thread_append_records)
            for t in s.thread_append_threads
        ]
        simple("append_threads", cases)
    for size in s.sizes:
        count = _records(size, s.replay_records, s.replay_bytes)
        stages = tuple(
            Stage(tuple(Case(workload, e, size, count=count) for e in engines), s.reps)
            for workload in ("replay_warm", "replay_cold")
            if workload in workloads
        )
        if stages:
            fixtures = tuple(Case("prepare", e, size, count=count) for e in engines)
            groups.append(Group(f"replay {size} B", fixtures, stages))
    if "reopen" in workloads:
        count = s.reopen_bytes // s.reopen_size
        fixtures = tuple(Case("prepare", e, s.reopen_size, count=count) for e in engines)
        reopens = tuple(Case("reopen", e, s.reopen_size, count=count) for e in engines)
        groups.append(Group("reopen", fixtures, (Stage(reopens, s.reps),)))
    rss_count = s.rss_bytes // s.rss_size
    sync_every = max(1, s.rss_sync_bytes // s.rss_size)
    rss = [Case("rss", e, s.rss_size, count=rss_count, sync_every=sync_every) for e in engines]
    simple("rss", rss, s.heavy_reps)
    if mmwal or SEGMENTED in engines:
        # The long-running states measure mmwal-seg, whichever mmwal engine is asked for.
        _long_running(groups, settings, engines, workloads)
    return groups


def _long_running(
    groups: list[Group], s: Settings, engines: tuple[str, ...], workloads: tuple[str, ...]
) -> None:
    """Add the measurements of a log that ran a while (issue 9): states, bytes, rolls."""
    # The segmented log with its default sync method, and with fdatasync when asked.
    committers = [SEGMENTED, *(e for e in engines if e == SEGMENTED_FDATASYNC)]
    for workload in COMMIT_STATE_WORKLOADS:
        if workload in workloads:
            cases = tuple(
                Case(workload, e, 256, count=s.commit_state_commits, depth_scale=s.depth_scale)
                for e in committers
            )
            groups.append(Group(workload, (), (Stage(cases, s.reps),)))
    peers = [e for e in (BASELINE, SEGMENTED, PLAINFILE) if e == SEGMENTED or e in engines]
    records = s.disk_bytes // 264
    sync_every = max(1, s.disk_sync_bytes // 264)
    if "disk_bytes" in workloads:
        cases = tuple(
            Case("disk_bytes", e, 256, count=records, sync_every=sync_every) for e in peers
        )
        groups.append(Group("disk_bytes", (), (Stage(cases, s.reps),)))
    if "roll_latency" in workloads:
        cases = tuple(
            Case("roll_latency", e, 256, count=s.roll_appends, sync_every=_MIB // 264)
            for e in peers
        )
        groups.append(Group("roll_latency", (), (Stage(cases, s.heavy_reps),)))
    if "resources" in workloads:
        case = Case("resources", SEGMENTED, 256, count=s.resource_segments)
        groups.append(Group("resources", (), (Stage((case,), 1),)))
    if "rss_reader" in workloads:
        count = s.reader_rss_bytes // 4096
        readers = (BASELINE, SEGMENTED)
        fixtures = tuple(Case("prepare", e, 4096, count=count) for e in readers)
        cases = tuple(Case("rss_reader", e, 4096, count=count) for e in readers)
        groups.append(Group("rss_reader", fixtures, (Stage(cases, s.heavy_reps),)))
