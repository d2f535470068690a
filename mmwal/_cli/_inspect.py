"""``info``, ``dump`` and ``tail``: read a log and print what it holds (read-only)."""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import mmwal

from ._common import DAMAGE_HINT, ExitStatus, add_command, open_readonly

__all__ = ["register"]

# Segment files are named by their 20-digit index (the wal-db 1.x format).
_SEGMENT_NAME = re.compile(r"^\d{20}\.wal$")


def register(commands: Any) -> None:
    """Add ``info``, ``dump`` and ``tail``."""
    info = add_command(commands, "info", help="show the head, end, durable end, files, records")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)

    dump = add_command(commands, "dump", help="print records: LSN, length, payload")
    dump.add_argument("--start", "--from", type=int, default=None, help="the LSN to start at")
    dump.add_argument("--limit", type=int, default=None, help="print at most this many")
    _add_format_options(dump)
    dump.set_defaults(run=_dump)

    tail = add_command(commands, "tail", help="print the last records, or follow new ones")
    tail.add_argument(
        "-n", "--lines", type=int, default=10, help="how many of the last records (default: 10)"
    )
    tail.add_argument(
        "--from", dest="start", type=int, default=None, help="print every record from this LSN"
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="then wait for new records (Ctrl-C stops)"
    )
    tail.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="with -f, stop after this many seconds without a new record",
    )
    tail.add_argument(
        "--durable", action="store_true", help="with -f, print only records a sync made durable"
    )
    _add_format_options(tail)
    tail.set_defaults(run=_tail)


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    style = parser.add_mutually_exclusive_group()
    style.add_argument(
        "--json",
        action="store_true",
        help='one JSON object a line: {"lsn": ..., "size": ..., "data": base64}',
    )
    style.add_argument("--hex", action="store_true", help="print payloads as hex")


def _files(path: str) -> list[dict[str, Any]]:
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if _SEGMENT_NAME.match(name))
        files = []
        for name in names:
            try:
                size = os.path.getsize(os.path.join(path, name))
            except FileNotFoundError:
                continue  # a live writer's truncate_before removed it since the listing
            files.append({"name": name, "bytes": size})
        return files
    return [{"name": os.path.basename(path), "bytes": os.path.getsize(path)}]


def _count_records(wal: mmwal.Wal) -> tuple[int, mmwal.CorruptionError | None]:
    """Count the records up to the end, or up to damage met on the way (then also return it)."""
    count = 0
    try:
        for _ in wal.iter(copy=False):
            count += 1
    except mmwal.CorruptionError as error:
        return count, error
    return count, None


def _describe(wal: mmwal.Wal, path: str) -> tuple[dict[str, Any], mmwal.CorruptionError | None]:
    report = wal.recovery
    files = _files(path)
    store = wal.store
    segment_size = store.segment_size if isinstance(store, mmwal.SegmentStore) else None
    if segment_size is not None:
        # A live writer makes the next segment ahead of need: a zero file wholly past
        # the end (an LSN is its offset in the segment sequence), holding no record.
        last_in_use = wal.next_lsn // segment_size
        for file in files:
            file["made_ahead"] = int(file["name"].split(".")[0]) > last_in_use
    records, damage = _count_records(wal)
    described: dict[str, Any] = {
        "path": path,
        "layout": "single-file" if segment_size is None else "segmented",
        "head_lsn": wal.head_lsn,
        "next_lsn": wal.next_lsn,
        "durable_lsn": wal.durable_lsn,
        "records": records,
        "segment_size": segment_size,
        "segments": None
        if segment_size is None
        else sum(1 for file in files if not file["made_ahead"]),
        "segments_made_ahead": None
        if segment_size is None
        else sum(1 for file in files if file["made_ahead"]),
        "files": files,
        "file_bytes": sum(file["bytes"] for file in files),
        "recovery": {
            "stop": report.stop.value if report.stop else None,
            "bytes_past_end": report.discarded_bytes,
        },
    }
    # The recovery point, on logs that keep one (a file beside the log) that agrees
    # with the log: the end it vouches for as durable.
    if report.recovery_point is not None:
        described["recovery_point"] = report.recovery_point
    if damage is not None:
        described["damage"] = {"lsn": damage.offset, "reason": damage.reason}
    return described, damage


def _info(arguments: argparse.Namespace) -> int:
    with open_readonly(arguments) as wal:
        described, damage = _describe(wal, arguments.path)
    status = ExitStatus.OK if damage is None else ExitStatus.DAMAGED
    if arguments.json:
        print(json.dumps(described, default=str))
        return status
    records = described["records"]
    rows = [
        ("path", described["path"]),
        ("layout", described["layout"]),
        ("head LSN", described["head_lsn"]),
        ("end LSN", described["next_lsn"]),
        ("durable LSN", described["durable_lsn"]),
        ("records", records if damage is None else f"{records} before the damage"),
    ]
    if described["segment_size"] is not None:
        rows.append(("segment size", f"{described['segment_size']} bytes"))
        ahead = described["segments_made_ahead"]
        made_ahead = f" (+{ahead} made ahead of need, empty)" if ahead else ""
        rows.append(("segments", f"{described['segments']}{made_ahead}"))
    rows.append(("file bytes", f"{described['file_bytes']} (preallocated past the end)"))
    if "recovery_point" in described:
        rows.append(("recovery point", described["recovery_point"]))
    recovery = described["recovery"]
    rows.append(("scan stopped by", recovery["stop"] or "end of store"))
    rows.append(
        ("bytes past end", f"{recovery['bytes_past_end']} (a writable open would quarantine them)")
    )
    if damage is not None:
        rows.append(("damage", f"at LSN {damage.offset}: {damage.reason}"))
    for name, value in rows:
        print(f"{name + ':':<16} {value}")
    if damage is not None:
        print(DAMAGE_HINT.format(path=arguments.path), file=sys.stderr)
    return status


def _print_records(records: Iterable[mmwal.Record], arguments: argparse.Namespace) -> None:
    flush = bool(getattr(arguments, "follow", False))
    for record in records:
        data = bytes(record.data)
        if arguments.json:
            line = json.dumps(
                {"lsn": record.lsn, "size": len(data), "data": base64.b64encode(data).decode()}
            )
        else:
            shown = data.hex() if arguments.hex else repr(data)
            line = f"{record.lsn}\t{len(data)}\t{shown}"
        print(line, flush=flush)


def _dump(arguments: argparse.Namespace) -> int:
    with open_readonly(arguments) as wal:
        records: Iterable[mmwal.Record] = wal.iter(arguments.start)
        if arguments.limit is not None:
            records = (record for _, record in zip(range(arguments.limit), records, strict=False))
        _print_records(records, arguments)
    return ExitStatus.OK


def _tail(arguments: argparse.Namespace) -> int:
    with open_readonly(arguments) as wal:
        end = wal.next_lsn
        if arguments.start is not None:
            _print_records(wal.iter(arguments.start), arguments)
        else:
            _print_records(collections.deque(wal, maxlen=max(arguments.lines, 0)), arguments)
        if arguments.follow:
            sys.stdout.flush()
            records = wal.follow(
                max(end, arguments.start or 0),
                timeout=arguments.timeout,
                durable=arguments.durable,
            )
            _print_records(records, arguments)
    return ExitStatus.OK
