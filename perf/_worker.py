"""Run one measurement in this (fresh) process and print its metrics as JSON.

Usage: ``python -m perf._worker '<case json>'``; the last stdout line is
``{"metrics": {...}}``.  The benchmark driver (perf.bench) starts one worker per
(engine, workload, size, repetition).
"""

from __future__ import annotations

import json
import sys

from perf.plan import Case
from perf.states import RUNNERS as STATE_RUNNERS
from perf.workloads import RUNNERS


def main(argv: list[str]) -> int:
    """Parse the case in ``argv[0]``, run it, print the metrics line."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    case = Case.from_json(argv[0])
    metrics = {**RUNNERS, **STATE_RUNNERS}[case.workload](case)
    print(json.dumps({"metrics": metrics}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
