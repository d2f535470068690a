"""Smoke test of the benchmark harness: the quick mode runs and reports sane numbers.

No timing is asserted: the machine may be slow or busy.  The run is shrunk with
``--scale`` so it takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf import bench, commit_syscalls, commit_tail, open_time
from perf.plan import COMMIT_STATE_WORKLOADS, WORKLOADS
from perf.report import DISPLAY


@pytest.mark.slow
def test_quick_bench_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--reps", "1", "--scale", "0.02", "--dir", str(tmp_path), "--json", str(out)]
    assert bench.main(argv) == 0

    document = json.loads(out.read_text())
    assert set(document) == {"meta", "results", "targets", "errors"}
    assert document["errors"] == []
    assert document["meta"]["engines"].keys() >= {"mmwal", "plainfile", "sqlite3"}

    measured = {(r["workload"], r["engine"]) for r in document["results"]}
    only: dict[str, set[str]] = {
        "append_threads": {"mmwal"},
        **{workload: {"mmwal-seg"} for workload in COMMIT_STATE_WORKLOADS},
        "disk_bytes": {"mmwal", "mmwal-seg", "plainfile"},
        "roll_latency": {"mmwal", "mmwal-seg", "plainfile"},
        "resources": {"mmwal-seg"},
        "rss_reader": {"mmwal", "mmwal-seg"},
    }
    for workload in WORKLOADS:
        engines = only.get(workload, {"mmwal", "plainfile", "sqlite3"})
        assert {(workload, engine) for engine in engines} <= measured
    assert ("sync_each", "raw-pwrite") in measured

    for result in document["results"]:
        metric = DISPLAY[result["workload"]][0][0]
        stat = result["metrics"][metric]
        assert stat["min"] > 0
        assert stat["min"] <= stat["median"] <= stat["max"]

    names = {target["name"] for target in document["targets"]}
    assert "mmwal appends/s 256 B, no sync" in names
    assert not any(Path(tmp_path).glob("mmwal-bench-*")), "scratch directory left behind"


def test_open_time_runs_and_reports_both_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``perf.open_time`` on tiny logs: it kills its writer, opens, and prints ratios."""
    open_time.main(["--sizes", "2,4", "--reps", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    for layout in ("segmented", "file"):
        assert f"{layout}: open time" in out
    assert out.count("after close:") == 2
    assert out.count("after crash:") == 2
    assert not any(tmp_path.iterdir()), "scratch logs left behind"


def test_commit_syscalls_runs_every_method_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``perf.commit_syscalls`` on a few commits: every method, one table row each."""
    commit_syscalls.main(["--commits", "10", "--dir", str(tmp_path), "--wal"])
    out = capsys.readouterr().out
    for method in commit_syscalls.METHODS + commit_syscalls.WAL_METHODS:
        assert f"| {method} |" in out
    assert not any(tmp_path.iterdir()), "scratch files left behind"


def test_commit_tail_splits_both_sides_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``perf.commit_tail`` on a few commits: both rows, and commits opening a page counted."""
    commit_tail.main(["--commits", "40", "--grown", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out.splitlines()[2:]}
    assert set(rows) == {"| mmwal-seg", "| raw"}
    # 40 commits of 264 bytes open a new page 2 or 3 times on each side.
    assert all(2 <= int(row[3]) <= 3 for row in rows.values()), out
    assert not any(tmp_path.iterdir()), "scratch files left behind"
