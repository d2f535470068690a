"""``verify`` (read-only) and ``repair`` (writes): check a log, and the way forward."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import mmwal

from ._common import ExitStatus, add_command, config_of, open_readonly

__all__ = ["register"]

# Progress is reported in steps of this many bytes: a bar update per record
# would cost more than checking the record.
_PROGRESS_STEP = 4 << 20


def register(commands: Any) -> None:
    """Add ``verify`` and ``repair``."""
    verify = add_command(
        commands,
        "verify",
        help="check every record (read-only); the exit status says what was found",
    )
    verify.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (it shows only on a terminal)"
    )
    verify.set_defaults(run=_verify)

    repair = add_command(
        commands, "repair", help="quarantine what cannot be read and keep every record (writes)"
    )
    repair.add_argument(
        "--dry-run", action="store_true", help="print what repair would do; change nothing"
    )
    repair.add_argument(
        "--force",
        action="store_true",
        help="repair even what holds no record at all (every byte goes to quarantine)",
    )
    repair.set_defaults(run=_repair)


@contextlib.contextmanager
def _progress(total: int, *, shown: bool) -> Iterator[Any]:
    """Yield a bar with ``update(bytes)``, or None: off a terminal, quiet, or no tqdm."""
    if not shown:
        yield None
        return
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", file=sys.stderr, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _count(wal: mmwal.Wal, bar: Any) -> int:
    """Read every record (each CRC checked); return how many there are."""
    count = 0
    if bar is None:
        for _ in wal:
            count += 1
        return count
    reported = wal.head_lsn
    for record in wal:
        count += 1
        if record.lsn - reported >= _PROGRESS_STEP:
            bar.update(record.lsn - reported)
            reported = record.lsn
    bar.update(wal.next_lsn - reported)
    return count


def _intact_after(arguments: argparse.Namespace, lsn: int) -> int:
    """Return how many intact records the library finds past the damage at ``lsn``.

    Asked of the library's own ``SKIP_BAD_RECORDS`` reading, on a read-only open.
    """
    config = mmwal.WalConfig(
        max_record_size=arguments.max_record_size,
        recovery_policy=mmwal.RecoveryPolicy.SKIP_BAD_RECORDS,
    )
    try:
        with open_readonly(arguments, config) as wal:
            return sum(1 for record in wal if record.lsn > lsn)
    except mmwal.WalError:
        return 0


def _damage(arguments: argparse.Namespace, lsn: int, reason: str) -> str:
    intact = _intact_after(arguments, lsn)
    if intact:
        follows = (
            f"{intact} intact records follow it: this is damage, not a crash's torn tail "
            f"(keep a copy of the log before any repair)"
        )
    else:
        follows = "no intact record follows it"
    return f"first damage at LSN {lsn} ({reason}); {follows}"


def _verify(arguments: argparse.Namespace) -> int:
    shown = not arguments.quiet and sys.stderr.isatty()
    opened = False
    try:
        with open_readonly(arguments) as wal:
            opened = True
            report = wal.recovery
            with _progress(wal.next_lsn - wal.head_lsn, shown=shown) as bar:
                count = _count(wal, bar)
    except mmwal.CorruptionError as error:
        print(f"FAIL: {_damage(arguments, error.offset, error.reason)}")
        print(f"  {error}", file=sys.stderr)
        # Damage met while reading the records lies inside a log that opens;
        # damage that stops the open leaves nothing readable as asked.
        return ExitStatus.DAMAGED if opened else ExitStatus.ERROR
    if report.discarded_bytes:
        reason = report.stop.value if report.stop else "end of store"
        print(
            f"WARN: {count} intact records up to LSN {report.end}; "
            f"{_damage(arguments, report.end, reason)}; {report.discarded_bytes} bytes past "
            f"the end (a writable open would quarantine and zero them)"
        )
        return ExitStatus.TORN_TAIL
    print(f"OK: {count} intact records, LSN {report.head} to {report.end}")
    return ExitStatus.OK


def _repair(arguments: argparse.Namespace) -> int:
    report = mmwal.repair(
        arguments.path,
        segment_size=arguments.segment_size,
        config=config_of(arguments),
        dry_run=arguments.dry_run,
        force=arguments.force,
    )
    for action in report.actions:
        print(action)
    if report.dry_run:
        print("dry run: nothing was changed")
    else:
        print(f"the log now runs from LSN {report.head} to {report.end}")
    return ExitStatus.OK
