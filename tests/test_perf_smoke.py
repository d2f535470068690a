"""Smoke test of the benchmark harness: the quick mode runs and reports sane numbers.

No timing is asserted: the machine may be slow or busy.  The run is shrunk with
``--scale`` so it takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mmwal
from perf import bench, commit_syscalls, commit_tail, open_time, staged_floor
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


@pytest.mark.parametrize("workload", staged_floor.WORKLOADS)
@pytest.mark.parametrize("case", [c for c in staged_floor.CASES if c != "plainfile"])
def test_staged_floor_cases_keep_every_record(tmp_path: Path, case: str, workload: str) -> None:
    """Each ``perf.staged_floor`` log reopens with every record it timed, in order.

    Catches a prototype that drops or garbles bytes (a write-out that skips a range,
    a write-behind that leaves the file behind the memory): its figures would time
    less work than a log does. 5 MiB of records: past the write-behind's 4 MiB step.
    """
    records = [bytes([n % 251 + 1]) * 256 for n in range(20_000)]
    staged_floor._run_case(case, workload, records, tmp_path)
    with mmwal.Wal.open_segmented(tmp_path / "wal", readonly=True) as wal:
        assert [record.data for record in wal.iter()] == records


def test_staged_floor_verifying_flush_rewrites_what_changed(tmp_path: Path) -> None:
    """A flush rewrites bytes that changed after a write-behind wrote them (``verify``).

    Catches a verifying flush that trusts the write-behind: a copy still in flight
    when the write-behind ran would reach the file as zeros.
    """
    store = staged_floor._PrototypeStagedStore(tmp_path / "wal", verify=True)
    try:
        store.ensure_capacity(3 << 20)
        store.write(0, b"a" * (1 << 20))
        stage = store._stages[0]
        store.write_ahead(stage, 2 << 20)  # the second MiB is still zero in memory
        store.write(1 << 20, b"b" * (1 << 20))
        store.flush(0, 2 << 20)
        with open(store.segment_path(0), "rb") as segment:
            assert segment.read(2 << 20) == b"a" * (1 << 20) + b"b" * (1 << 20)
    finally:
        store.close()


def test_staged_floor_runs_every_case_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``perf.staged_floor`` on a few records: a row per case and mode, no scratch left."""
    staged_floor.main(["--records", "3000", "--reps", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    for workload in staged_floor.WORKLOADS:
        for case in staged_floor.CASES:
            assert out.count(f"| {workload} | {case} |") == 2, (workload, case)
    assert "first touch" in out
    assert not any(tmp_path.iterdir()), "scratch files left behind"
