"""``python -m mmwal``: look into a log, check it, repair it. Uses only the public API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import mmwal

__all__ = ["main"]


def _open_readonly(arguments: argparse.Namespace) -> mmwal.Wal:
    config = mmwal.WalConfig(max_record_size=arguments.max_record_size)
    return mmwal.open(arguments.path, config=config, readonly=True)


def _info(arguments: argparse.Namespace) -> int:
    with _open_readonly(arguments) as wal:
        count = sum(1 for _ in wal)
        report = wal.recovery
        print(f"path:            {arguments.path}")
        print(f"head LSN:        {wal.head_lsn}")
        print(f"end LSN:         {wal.next_lsn}")
        print(f"records:         {count}")
        print(f"scan stopped by: {report.stop.value if report.stop else 'end of store'}")
        print(f"bytes past end:  {report.discarded_bytes} (a writable open would quarantine them)")
    return 0


def _dump(arguments: argparse.Namespace) -> int:
    with _open_readonly(arguments) as wal:
        records = wal.iter(arguments.start)
        for shown, record in enumerate(records):
            if arguments.limit is not None and shown >= arguments.limit:
                break
            data = record.data.hex() if arguments.hex else repr(record.data)
            print(f"{record.lsn}\t{len(record.data)}\t{data}")
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    config = mmwal.WalConfig(max_record_size=arguments.max_record_size)
    try:
        report = mmwal.verify(arguments.path, config=config)
    except mmwal.CorruptionError as error:
        print(f"FAIL: {error}", file=sys.stderr)
        return 1
    for damage in report.damage:
        durable = " below the recovery point (it was durable)" if damage.durable else ""
        print(
            f"FAIL: damaged record at LSN {damage.lsn}{durable}: {damage.reason}; "
            f"{damage.intact_after} intact records follow it",
            file=sys.stderr,
        )
    if report.damage:
        return 1
    if report.tail_bytes:
        print(
            f"WARN: {report.records} intact records up to LSN {report.end}; "
            f"{report.tail_bytes} bytes past the end "
            f"({report.tail_stop.value if report.tail_stop else 'end of store'})"
        )
        return 2
    print(f"OK: {report.records} intact records, LSN {report.head} to {report.end}")
    return 0


def _repair(arguments: argparse.Namespace) -> int:
    config = mmwal.WalConfig(max_record_size=arguments.max_record_size)
    report = mmwal.repair(arguments.path, config=config)
    for action in report.actions:
        print(action)
    print(f"the log now runs from LSN {report.head} to {report.end}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmwal", description=__doc__)
    parser.add_argument(
        "--max-record-size",
        type=int,
        default=mmwal.WalConfig().max_record_size,
        help="the largest record length to accept (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="show the head, end and record count (read-only)")
    info.add_argument("path")
    info.set_defaults(run=_info)
    dump = commands.add_parser("dump", help="print records: LSN, length, payload (read-only)")
    dump.add_argument("path")
    dump.add_argument("--start", type=int, default=None, help="the LSN to start at")
    dump.add_argument("--limit", type=int, default=None, help="print at most this many")
    dump.add_argument("--hex", action="store_true", help="print payloads as hex")
    dump.set_defaults(run=_dump)
    verify = commands.add_parser(
        "verify",
        help="check every record (read-only); exit 1 if refused or damaged, 2 if a tail is torn",
    )
    verify.add_argument("path")
    verify.set_defaults(run=_verify)
    repair = commands.add_parser(
        "repair", help="quarantine what cannot be read and keep the rest (writes)"
    )
    repair.add_argument("path")
    repair.set_defaults(run=_repair)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = _parser().parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except (mmwal.WalError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
