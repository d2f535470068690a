"""``verify``: check every record of a log without changing it, and say what is wrong.

A bad frame with intact records after it is damage, whatever a writable open
would make of it; one below the recovery point certainly is (those bytes were
durable). Only nonzero bytes with no intact record after them are a torn tail.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ._config import RecoveryPolicy, WalConfig
from ._format import Stop
from ._wal import Wal

__all__ = ["Damage", "VerifyReport", "verify"]

# How often ``verify`` reports progress, in bytes of the log read.
_PROGRESS_STEP = 4 << 20


@dataclass(frozen=True)
class Damage:
    """A damaged record inside the log: where, why, and how many intact records follow it.

    ``durable`` says it lies below the recovery point, so it is not a torn write.
    """

    lsn: int
    reason: str
    intact_after: int
    durable: bool


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: the records, the damage among them, and any torn tail.

    ``end`` is just past the last intact record; ``tail_bytes`` the nonzero bytes
    past it that a writable open would quarantine (``tail_stop`` why the scan
    stopped there); ``recovery_point`` the end the log's recovery point vouched
    for, if it had one that agrees with it.
    """

    path: str
    head: int
    end: int
    records: int
    damage: list[Damage] = field(default_factory=list)
    tail_bytes: int = 0
    tail_stop: Stop | None = None
    recovery_point: int | None = None

    @property
    def ok(self) -> bool:
        """Whether every byte of the log is an intact record or the zero tail."""
        return not self.damage and not self.tail_bytes


def verify(
    path: str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    config: WalConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Read every record of the log at ``path`` (a directory: segmented) and report damage.

    Changes nothing on disk and takes no lock. Damaged records are stepped over
    (as under ``RecoveryPolicy.SKIP_BAD_RECORDS``) so the intact records after them
    are counted. Raises ``CorruptionError`` when the log cannot be opened at all.
    ``progress(done, total)``, if given, hears how many of the log's bytes were
    read, every ``_PROGRESS_STEP`` bytes and at the end (for a progress bar).
    """
    config = dataclasses.replace(
        config if config is not None else WalConfig(),
        recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS,
    )
    location = os.fspath(path)
    if segment_size is not None or os.path.isdir(location):
        wal = Wal.open_segmented(location, segment_size, config, readonly=True)
    else:
        wal = Wal.open(location, config, readonly=True)
    with wal:
        walk = wal.iter()
        skipped = walk.skipped
        # Records counted when each damaged record was stepped over.
        count_at: dict[int, int] = {}
        count = 0
        head, total = wal.head_lsn, wal.next_lsn - wal.head_lsn
        report_at = head + _PROGRESS_STEP if progress is not None else wal.next_lsn + 1
        for record in walk:
            count += 1
            if record.lsn >= report_at and progress is not None:
                progress(record.lsn - head, total)
                report_at = record.lsn + _PROGRESS_STEP
            if len(skipped) > len(count_at):
                for error in skipped[len(count_at) :]:
                    count_at[error.offset] = count - 1
        for error in skipped[len(count_at) :]:
            count_at[error.offset] = count
        if progress is not None:
            progress(total, total)
        report = wal.recovery
        reasons: dict[int, str] = {error.offset: error.reason for error in skipped}
        for error in report.skipped:
            reasons.setdefault(error.offset, error.reason)
            count_at.setdefault(error.offset, count)
        point = report.recovery_point
        damage = [
            Damage(
                lsn=lsn,
                reason=reason,
                intact_after=count - count_at[lsn],
                durable=point is not None and lsn < point,
            )
            for lsn, reason in sorted(reasons.items())
        ]
        return VerifyReport(
            path=location,
            head=wal.head_lsn,
            end=wal.next_lsn,
            records=count,
            damage=damage,
            tail_bytes=report.discarded_bytes,
            tail_stop=report.stop,
            recovery_point=point,
        )
