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

from ._common import ExitStatus, add_command, open_readonly

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


def _describe(wal: mmwal.Wal, path: str) -> dict[str, Any]:
    report = wal.recovery
    files = _files(path)
    store = wal.store
    segmented = isinstance(store, mmwal.SegmentStore)
    described: dict[str, Any] = {
        "path": path,
        "layout": "segmented" if segmented else "single-file",
        "head_lsn": wal.head_lsn,
        "next_lsn": wal.next_lsn,
        "durable_lsn": wal.durable_lsn,
        "records": sum(1 for _ in wal),
        "segment_size": store.segment_size if isinstance(store, mmwal.SegmentStore) else None,
        "segments": len(files) if segmented else None,
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
    return described


def _info(arguments: argparse.Namespace) -> int:
    with open_readonly(arguments) as wal:
        described = _describe(wal, arguments.path)
    if arguments.json:
        print(json.dumps(described, default=str))
        return ExitStatus.OK
    rows = [
        ("path", described["path"]),
        ("layout", described["layout"]),
        ("head LSN", described["head_lsn"]),
        ("end LSN", described["next_lsn"]),
        ("durable LSN", described["durable_lsn"]),
        ("records", described["records"]),
    ]
    if described["segment_size"] is not None:
        rows.append(("segment size", f"{described['segment_size']} bytes"))
        rows.append(("segments", described["segments"]))
    rows.append(("file bytes", f"{described['file_bytes']} (preallocated past the end)"))
    if "recovery_point" in described:
        rows.append(("recovery point", described["recovery_point"]))
    recovery = described["recovery"]
    rows.append(("scan stopped by", recovery["stop"] or "end of store"))
    rows.append(
        ("bytes past end", f"{recovery['bytes_past_end']} (a writable open would quarantine them)")
    )
    for name, value in rows:
        print(f"{name + ':':<16} {value}")
    return ExitStatus.OK


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
