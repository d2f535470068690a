"""Every way of reading a log yields the same records, whatever limit it was opened with.

The oracle is the list of payloads the test appended (nothing of mmwal computes
it). A log is written with the default limits, then opened again, read-only and
writable, with a ``max_record_size`` drawn below, at or above its records'
lengths: a frame whose CRC checks is a record whatever its length, so a smaller
limit at open must change nothing a reader sees (issue 8: a configuration change
must not turn a healthy log into damage). Each walk (``iter`` copying or not, from
the head or from a record start, ``batches``, ``follow`` copying or not,
``verify``) must yield exactly the payloads, in order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import mmwal

_SEGMENT = 4096


def _walks(wal: mmwal.Wal, starts: list[int]) -> dict[str, list[bytes]]:
    """Read ``wal`` every way there is; each walk's payloads by name."""
    walks = {
        "iter": [bytes(record.data) for record in wal.iter()],
        "iter(copy=False)": [bytes(record.data) for record in wal.iter(copy=False)],
        "batches": [bytes(record.data) for batch in wal.batches() for record in batch],
        "follow": [bytes(record.data) for record in wal.follow(timeout=0)],
        "follow(copy=False)": [bytes(record.data) for record in wal.follow(timeout=0, copy=False)],
    }
    for start in starts:
        walks[f"iter({start})"] = [bytes(record.data) for record in wal.iter(start)]
        walks[f"iter({start}, copy=False)"] = [
            bytes(record.data) for record in wal.iter(start, copy=False)
        ]
    return walks


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6000), min_size=1, max_size=12),
    limit=st.integers(0, 7000),
    segmented=st.booleans(),
    readonly=st.booleans(),
    data=st.data(),
)
def test_every_walk_yields_the_appended_records_under_any_limit(
    lengths: list[int], limit: int, segmented: bool, readonly: bool, data: st.DataObject
) -> None:
    payloads = [bytes([index % 251]) * length for index, length in enumerate(lengths)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("log" if segmented else "a.wal")
        size = _SEGMENT if segmented else None
        with mmwal.open(path, segment_size=size) as wal:
            starts_by_index = [wal.append(payload) for payload in payloads]
        config = mmwal.WalConfig(max_record_size=limit)
        picked = data.draw(st.lists(st.integers(0, len(payloads) - 1), max_size=2))
        with mmwal.open(path, segment_size=size, config=config, readonly=readonly) as wal:
            walks = _walks(wal, [starts_by_index[index] for index in picked])
        for name, got in walks.items():
            if name.startswith("iter(") and name[5].isdigit():
                start = int(name[5:].split(",")[0].rstrip(")"))
                expected = payloads[starts_by_index.index(start) :]
            else:
                expected = payloads
            assert got == expected, name
        report = mmwal.verify(path, segment_size=size, config=config)
        assert report.ok, report
        assert report.records == len(payloads)
