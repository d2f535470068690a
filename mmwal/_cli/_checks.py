"""``verify`` (read-only) and ``repair`` (writes): check a log, and the way forward."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import mmwal

from ._common import ExitStatus, add_command, config_of

__all__ = ["register"]


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
def _progress(*, shown: bool) -> Iterator[Callable[[int, int], None] | None]:
    """Yield ``progress(done, total)`` drawing a bar; None off a terminal, if quiet, or no tqdm."""
    if not shown:
        yield None
        return
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(unit="B", unit_scale=True, desc="verify", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _verify(arguments: argparse.Namespace) -> int:
    shown = not arguments.quiet and sys.stderr.isatty()
    try:
        with _progress(shown=shown) as progress:
            report = mmwal.verify(
                arguments.path,
                segment_size=arguments.segment_size,
                config=config_of(arguments),
                progress=progress,
            )
    except mmwal.CorruptionError as error:
        print(f"FAIL: the log cannot be read: {error}", file=sys.stderr)
        return ExitStatus.ERROR
    # What the library found, as it reports it: the damage, then the tail.
    for damage in report.damage:
        durable = " below the recovery point (it was durable)" if damage.durable else ""
        follows = (
            f"{damage.intact_after} intact records follow it"
            if damage.intact_after
            else "no intact record follows it"
        )
        print(
            f"FAIL: damaged record at LSN {damage.lsn}{durable}: {damage.reason}; {follows}",
            file=sys.stderr,
        )
    if report.damage:
        first = report.damage[0]
        print(
            f"DAMAGED: {report.records} intact records; first damage at LSN {first.lsn}, "
            f"{first.intact_after} intact records after it (keep a copy of the log before "
            f"any repair; repair --dry-run shows what it would do)"
        )
        return ExitStatus.DAMAGED
    if report.tail_bytes:
        reason = report.tail_stop.value if report.tail_stop else "end of store"
        print(
            f"WARN: {report.records} intact records up to LSN {report.end}; "
            f"{report.tail_bytes} bytes past the end ({reason}), and no intact record "
            f"follows them: a torn tail, as a crash leaves (a writable open quarantines "
            f"and zeroes it)"
        )
        return ExitStatus.TORN_TAIL
    print(f"OK: {report.records} intact records, LSN {report.head} to {report.end}")
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
