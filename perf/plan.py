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
)

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
            f"{self.rss_sync_bytes / mib:g} MiB"
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
    return groups
