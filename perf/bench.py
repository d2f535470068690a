"""Benchmark mmwal against its peers: ``python -m perf.bench [--quick] [--json F] [--png F]``.

Every (engine, workload, size) repetition runs in a fresh ``python -m
perf._worker`` process.  The driver prints progress on stderr, then the results
table (median, min-max, ratio against mmwal) and the targets on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from perf import cache, chart, plan, report, runner
from perf.engines import ENGINES

DESCRIPTION = "Benchmark mmwal against its peers (see docs/BENCHMARKS.md)."


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m perf.bench", description=DESCRIPTION)
    parser.add_argument(
        "--quick", action="store_true", help="256 B only, small logs, mmwal/plainfile/sqlite3"
    )
    parser.add_argument("--json", type=Path, help="write every sample, summary and target here")
    parser.add_argument("--png", type=Path, help="write a bar chart here (needs matplotlib)")
    parser.add_argument("--engines", type=_csv, help=f"comma list from {','.join(ENGINES)}")
    parser.add_argument(
        "--workloads", type=_csv, help=f"comma list from {','.join(plan.WORKLOADS)}"
    )
    parser.add_argument(
        "--sizes", type=lambda t: tuple(int(s) for s in _csv(t)), help="record sizes in bytes"
    )
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 5, quick 2)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply counts, bytes and time budgets"
    )
    parser.add_argument(
        "--dir", type=Path, help="parent of the scratch directory (default: system temp, /tmp)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds allowed per worker process"
    )
    args = parser.parse_args(argv)
    unknown = set(args.engines or ()) - set(ENGINES) | set(args.workloads or ()) - set(
        plan.WORKLOADS
    )
    if unknown:
        parser.error(f"unknown engine or workload: {', '.join(sorted(unknown))}")
    return args


def settings_for(args: argparse.Namespace) -> plan.Settings:
    """Return the plan settings the command line asks for."""
    settings = plan.QUICK if args.quick else plan.FULL
    if args.sizes:
        settings = dataclasses.replace(settings, sizes=args.sizes)
    if args.reps:
        settings = dataclasses.replace(
            settings, reps=args.reps, heavy_reps=min(settings.heavy_reps, args.reps)
        )
    return settings.scaled(args.scale) if args.scale != 1.0 else settings


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "source tree"


def mmwal_revision() -> str:
    """Return the git commit of the tree benchmarked, marked when mmwal/ has local edits."""

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(runner.ROOT), *arguments], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    return (
        f"{commit} + uncommitted changes" if git("status", "--porcelain", "--", "mmwal") else commit
    )


def metadata(
    args: argparse.Namespace, settings: plan.Settings, engines: tuple[str, ...]
) -> dict[str, Any]:
    """Describe the machine, the software and the settings of this run."""
    versions = {name: _version(name) for name in ("mmwal", "crc32c", "lmdb", "plyvel", "rocksdict")}
    versions["sqlite"] = sqlite3.sqlite_version
    versions["python"] = platform.python_version()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": os.getloadavg(),
        },
        "quick": args.quick,
        "scale": args.scale,
        "settings": dataclasses.asdict(settings),
        "engines": {name: ENGINES[name].DURABILITY for name in engines},
        "skipped_engines": [name for name in ENGINES if not ENGINES[name].available()],
        "cold_cache": cache.METHOD,
        "versions": versions,
        "mmwal_revision": mmwal_revision(),
    }


def choose_engines(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the requested engines that can be imported here."""
    wanted = args.engines or (plan.QUICK_ENGINES if args.quick else tuple(ENGINES))
    return tuple(name for name in wanted if ENGINES[name].available())


def to_json(
    meta: dict[str, Any],
    summary: dict[report.Key, dict[str, report.Stat]],
    found: list[report.Target],
    collected: runner.Collected,
) -> dict[str, Any]:
    """Assemble the JSON document: metadata, per-measurement stats, targets, errors."""
    results = [
        {
            "workload": workload,
            "engine": engine,
            "size": size,
            "threads": threads,
            "metrics": {
                name: {
                    "median": stat.median,
                    "min": stat.low,
                    "max": stat.high,
                    "samples": list(stat.samples),
                }
                for name, stat in stats.items()
            },
        }
        for (workload, engine, size, threads), stats in summary.items()
    ]
    return {
        "meta": meta,
        "results": results,
        "targets": [
            {"name": t.name, "value": t.value, "threshold": t.threshold, "met": t.met}
            for t in found
        ],
        "errors": collected.errors,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 when any measurement failed."""
    args = parse_args(argv)
    settings = settings_for(args)
    engines = choose_engines(args)
    groups = plan.build(settings, engines, args.workloads or plan.WORKLOADS)
    meta = metadata(args, settings, engines)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    skipped = ", ".join(meta["skipped_engines"]) or "none"
    log(f"engines: {', '.join(engines)}; skipped (not importable): {skipped}")
    with tempfile.TemporaryDirectory(prefix="mmwal-bench-", dir=args.dir) as scratch:
        collected = runner.execute(groups, Path(scratch), args.timeout, log)
    meta["machine"]["loadavg_after"] = os.getloadavg()
    summary = report.summarise(collected)
    found = report.targets(summary)
    machine = meta["machine"]
    print(f"\nmmwal benchmark, {meta['date']}, {machine['cpus']} CPUs, {machine['platform']}")
    loads = (machine["loadavg_before"][0], machine["loadavg_after"][0])
    print(f"load average (1 min) before / after the run: {loads[0]:.2f} / {loads[1]:.2f}")
    print(f"mmwal: {meta['mmwal_revision']}; cold cache: {cache.METHOD}")
    print(f"settings: {settings.describe()}\n")
    print(report.results_table(summary))
    print()
    print(report.targets_table(found))
    for error in collected.errors:
        print(f"\nFAILED {error['case']}:\n{error['error']}")
    if args.json:
        args.json.write_text(json.dumps(to_json(meta, summary, found, collected), indent=1) + "\n")
    if args.png:
        if chart.available():
            chart.draw(summary, args.png)
        else:
            log("matplotlib not importable: no PNG written")
    return 1 if collected.errors else 0


if __name__ == "__main__":
    sys.exit(main())
