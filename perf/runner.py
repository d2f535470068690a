"""Execute a benchmark plan, one fresh worker process per measurement."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perf.plan import Case, Group

Metrics = dict[str, float]

#: Repository root, holding the ``mmwal`` and ``perf`` packages.
ROOT = Path(__file__).resolve().parent.parent
#: Packages a worker imports, copied once per run by :func:`snapshot`.
PACKAGES = ("mmwal", "perf")


class WorkerError(Exception):
    """Report a worker that failed, timed out or printed no metrics."""


@dataclass
class Collected:
    """Metrics of every repetition by measurement key, and every failure."""

    samples: dict[tuple[str, str, int, int], list[Metrics]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def fail(self, case: Case, message: str) -> None:
        """Record that ``case`` failed with ``message``."""
        self.errors.append({"case": case.to_json(), "error": message})


def snapshot(target: Path) -> Path:
    """Copy the packages a worker imports to ``target``; return it.

    Workers run from the copy, so edits to the tree during a long run cannot mix
    two versions of mmwal (or of the harness) in one set of results.
    """
    for name in PACKAGES:
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def run_worker(case: Case, timeout_s: float, source: Path = ROOT) -> Metrics:
    """Run ``case`` in a fresh interpreter importing from ``source``; return its metrics."""
    command = [sys.executable, "-m", "perf._worker", case.to_json()]
    try:
        done = subprocess.run(
            command, cwd=source, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise WorkerError(f"timed out after {timeout_s:.0f} s") from error
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise WorkerError(f"exit status {done.returncode}: {tail}")
    metrics: Metrics = json.loads(lines[-1])["metrics"]
    return metrics


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def _describe(case: Case) -> str:
    threads = f" x{case.threads}" if case.threads > 1 else ""
    return f"{case.workload} {case.engine} {case.size} B{threads}"


@dataclass
class _Run:
    """State of one benchmark run: where it works and what it collected."""

    scratch: Path
    source: Path
    timeout_s: float
    log: Callable[[str], None]
    total: int
    done: int = 0
    collected: Collected = field(default_factory=Collected)

    def prepare(self, group: Group) -> dict[str, Path]:
        """Write the group's fixture logs; return their directories by engine."""
        fixtures: dict[str, Path] = {}
        for prep in group.fixtures:
            directory = _fresh(self.scratch / f"fixture-{prep.engine}")
            self.log(f"preparing {prep.engine}: {prep.count} x {prep.size} B")
            try:
                run_worker(
                    dataclasses.replace(prep, directory=str(directory)), self.timeout_s, self.source
                )
                fixtures[prep.engine] = directory
            except WorkerError as error:
                self.collected.fail(prep, str(error))
                self.log(f"  FAILED: {error}")
        return fixtures

    def measure(self, case: Case, directory: Path, rep: int, reps: int) -> None:
        """Run one repetition of ``case`` in ``directory`` and collect its metrics."""
        self.done += 1
        label = f"[{self.done}/{self.total}] {_describe(case)} rep {rep + 1}/{reps}"
        try:
            metrics = run_worker(
                dataclasses.replace(case, directory=str(directory)), self.timeout_s, self.source
            )
        except WorkerError as error:
            self.collected.fail(case, str(error))
            self.log(f"{label}: FAILED: {error}")
            return
        self.collected.samples.setdefault(case.key, []).append(metrics)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:2])
        self.log(f"{label}: {shown}")


def execute(
    groups: list[Group], scratch: Path, timeout_s: float, log: Callable[[str], None]
) -> Collected:
    """Run every group under ``scratch``; keep going past failing measurements."""
    total = sum(len(stage.cases) * stage.reps for group in groups for stage in group.stages)
    run = _Run(scratch, snapshot(scratch / "src"), timeout_s, log, total)
    for group in groups:
        fixtures = run.prepare(group)
        for stage in group.stages:
            for rep in range(stage.reps):
                for case in stage.cases:
                    if not group.fixtures:
                        run.measure(case, _fresh(scratch / "run"), rep, stage.reps)
                    elif case.engine in fixtures:
                        run.measure(case, fixtures[case.engine], rep, stage.reps)
                    else:
                        run.done += 1
        for directory in fixtures.values():
            shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(scratch / "run", ignore_errors=True)
    return run.collected
