"""Recovery at open: find the end, refuse what is not a log, keep and zero the rest.

Rules kept here:

- Nothing on disk changes before the log is accepted: the refusal comes first.
- Never destroy silently: the nonzero bytes past the end are copied to a
  quarantine file (durably) before they are zeroed, and a warning is logged.
- The zeroing is durable before recovery returns, so no later append can join an
  old intact frame lying past a torn one (a ghost) to the log.
- A read-only store is only scanned.
- With a recovery point that agrees with the log, the scan starts at the record
  that ends at the point: open time does not grow with the log. Bytes below the
  point were durable, so a bad frame there is damage, never a torn tail: a
  writable open refuses (nothing changes), a read-only one and
  ``SKIP_BAD_RECORDS`` leave it in place and find the true end past the point.
  Only bytes past the point can be a torn tail.
"""

from __future__ import annotations

import dataclasses
import logging

from ._config import RecoveryPolicy, WalConfig
from ._errors import CorruptionError
from ._format import HEADER, HEADER_SIZE, RECOVERY_FILE_NAME, RecoveryPoint, Stop
from ._reading import RecoveryReport, frame_at, scan_end
from ._recovery_point import load_point
from ._store import Store

__all__ = ["recover"]

_log = logging.getLogger("mmwal")

# The unit a disk writes whole: a crash loses or keeps sectors, not single bytes.
_SECTOR = 512
_SCAN_BLOCK = 64 * 1024


def recover(store: Store, config: WalConfig, *, refuse_foreign: bool = True) -> RecoveryReport:
    """Recover the log in ``store``: its end, and a clean, durable tail past it.

    With ``refuse_foreign`` (every open), a store with no valid frame at its head
    but nonzero bytes beyond the first frame's claimed extent raises
    ``CorruptionError`` and is left untouched, and so does a writable open that
    meets damage below the recovery point. ``repair`` passes False: it scans from
    the head, takes the first bad frame as the end, and drops the point.
    """
    point = load_point(store) if refuse_foreign else None
    if point is None:
        found = scan_end(store, config)
        scan_start = found.head
    else:
        found = _scan_from_point(store, config, point)
        scan_start = point.last_lsn
    head, end = found.head, found.end
    if end == head and refuse_foreign:
        _refuse_foreign_bytes(store, head, found.stop, config.max_record_size)
    # Before the scan past the end reads it: a reader must not build large folios
    # where the writer will append (see ``Store.prepare_end``).
    store.prepare_end(end)
    extent = store.nonzero_extent(end)
    discarded = 0 if extent is None else extent[1] - end
    quarantine_path = None
    if store.writable:
        if extent is not None:
            quarantine_path = store.quarantine(end, extent[1])
            _log.warning(
                "recovered %s to LSN %d; discarded %d bytes past it (%s), kept in %s",
                store.location,
                end,
                discarded,
                found.stop.value if found.stop else "end of store",
                quarantine_path or "no quarantine (the store has no place for it)",
            )
        store.discard_after(end)
        if point is None:
            # A point this open did not trust (or repair's) must not come to
            # agree with bytes appended later.
            store.remove_side_file(RECOVERY_FILE_NAME)
        # Below the point everything was durable already.
        store.flush(scan_start, end)
    return RecoveryReport(
        head=head,
        end=end,
        discarded_bytes=discarded,
        stop=found.stop,
        skipped=found.skipped,
        quarantine_path=quarantine_path,
        recovery_point=None if point is None else point.end,
    )


def _scan_from_point(store: Store, config: WalConfig, point: RecoveryPoint) -> RecoveryReport:
    """Scan from the record that ends at ``point``; a bad frame below the point is damage.

    Open checks two frames below the point: the one at the head (so a log whose
    start was overwritten is not taken for a log) and the one the point names,
    where the scan starts. When either is bad, a writable open under the default
    policy raises; otherwise the scan goes on from the point (whose extent is
    known), and under ``SKIP_BAD_RECORDS`` the record is listed as skipped.
    """
    head = store.head_lsn
    skip = config.recovery_policy is RecoveryPolicy.SKIP_BAD_RECORDS
    damaged: list[CorruptionError] = []
    if head < point.last_lsn:
        first = frame_at(store, head, point.end, config.max_record_size, collect=False)
        if first.stop is not None:
            damaged.append(_damage_below(store, head, point, first.stop))
    found = scan_end(store, config, point.last_lsn)
    if found.end < point.end:
        # No stop: a SKIP_BAD_RECORDS scan stepped over the whole record (its
        # checksum failed) to the store's end and found no intact frame after it.
        stop = found.stop if found.stop is not None else Stop.BAD_CRC
        damaged.append(_damage_below(store, point.last_lsn, point, stop))
        found = dataclasses.replace(scan_end(store, config, point.end), skipped=found.skipped)
    if damaged and store.writable and not skip:
        raise damaged[0]
    if not skip:
        return found
    return dataclasses.replace(found, skipped=[*damaged, *found.skipped])


# The ways forward from damage below the recovery point, and what each costs.
_SKIP_OR_REPAIR_HINT = (
    "nothing was changed; open with WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS) "
    "to read on past the damage, which skips the damaged record (its data is lost; it is "
    "listed in Wal.recovery.skipped), or run mmwal.repair() to cut the log at the damage, "
    "keeping what follows in a quarantine file"
)


def _damage_below(store: Store, lsn: int, point: RecoveryPoint, stop: Stop) -> CorruptionError:
    return CorruptionError(
        lsn,
        f"the record at LSN {lsn} is damaged ({stop.value}), below the recovery point "
        f"{point.end}: it was durable, so this is not a torn tail",
        path=store.location,
        hint=_SKIP_OR_REPAIR_HINT,
    )


def _refuse_foreign_bytes(store: Store, head: int, stop: Stop | None, max_record_size: int) -> None:
    """Refuse a log with no valid frame at its head, unless a crash explains the bytes.

    A crash before the first sync leaves the appended bytes with any of their
    pages (or 512-byte sectors) lost, that is zero. What that can look like:

    - a partial first frame, then zeros: every nonzero byte lies within the extent
      the first header claims;
    - a lost first sector: the header at the head is all zero, and later pages of
      the same appends may have reached the disk;
    - a lost sector inside the first frame: a run of at least 512 zero bytes that
      starts within the extent the first header claims, whatever lies after it;
    - a lost sector inside the first header: a sector boundary (or a segment
      boundary) splits the header at the head and its bytes on one side are all
      zero (a head a few bytes before a boundary, as ``truncate_before`` leaves).

    Anything else is not ours to wipe: the open is refused and nothing changes.
    Bit rot in the first record of a synced log, with intact records after it, is
    refused (it needs ``repair`` or ``SKIP_BAD_RECORDS``), unless that record
    itself held 512 zero bytes in a row, in which case its bytes are quarantined.
    """
    header = store.read(head, HEADER_SIZE)
    if len(header) < HEADER_SIZE or header == bytes(HEADER_SIZE):
        return
    if _header_split_by_a_lost_sector(store, head, header):
        return
    _, length = HEADER.unpack(header)
    claimed_end = head + HEADER_SIZE
    if length <= max_record_size:
        claimed_end += length
        if _lost_sector_before(store, head + HEADER_SIZE, claimed_end):
            return
    extent = store.nonzero_extent(claimed_end)
    if extent is None:
        return
    # No stop with a header at the head: a SKIP_BAD_RECORDS scan stepped over
    # every frame (each failed its checksum) to the store's end and kept none.
    reason = (stop if stop is not None else Stop.BAD_CRC).value
    raise CorruptionError(
        head,
        f"no valid record starts at the head ({reason}), yet nonzero bytes lie at "
        f"offset {extent[0]}: this is not an mmwal/wal-db log, or its start is damaged",
        path=store.location,
        hint="nothing was changed; check the path and max_record_size, or run "
        "mmwal.repair(path, force=True) (or: mmwal repair --force PATH) to quarantine "
        "the unreadable bytes and start afresh",
    )


def _header_split_by_a_lost_sector(store: Store, head: int, header: bytes) -> bool:
    """Say whether a sector boundary splits ``header`` (at ``head``) with zeros on one side.

    Sectors count from the start of the file that holds the byte (a store's piece
    is one file or one window of it, starting on a sector boundary).
    """
    for split in range(1, len(header)):
        _buffer, base, _limit = store.piece(head + split)
        if (head + split - base) % _SECTOR == 0 and (
            not any(header[:split]) or not any(header[split:])
        ):
            return True
    return False


def _lost_sector_before(store: Store, start: int, end: int) -> bool:
    """Say whether a run of ``_SECTOR`` zero bytes starts in ``[start, end)``.

    Reads a block at a time (each overlapping the next by a sector less a byte),
    so a hostile length never drives a large read.
    """
    zero_sector = bytes(_SECTOR)
    position = start
    while position < end:
        span = min(end - position, _SCAN_BLOCK)
        found = store.read(position, span + _SECTOR - 1).find(zero_sector)
        if 0 <= found < span:
            return True
        position += span
    return False
