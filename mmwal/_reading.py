"""Reading frames out of a store: the recovery scan and the record walk.

These functions know records (through ``_format``) and stores (through the
``Store`` protocol) and nothing about appending; the log calls them.

Rules kept here:

- A length is checked against ``max_record_size`` before any payload byte is read.
  A longer frame that fits the log is checked in place, a block at a time, and
  is a record when its CRC checks: a smaller limit today never makes records
  written under a larger one read as damage.
- A frame that crosses a piece boundary is read through ``Store.read`` and checked
  with the same ``scan_frames`` as every other frame.
- Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from ._config import RecoveryPolicy, WalConfig
from ._crc import crc32c
from ._errors import CorruptionError, WalClosedError
from ._format import (
    HEADER,
    HEADER_SIZE,
    LENGTH,
    Record,
    Scan,
    Stop,
    decode_batch,
    diagnose,
    scan_frames,
)
from ._lifetime import Lifetime, Watch
from ._store import Buffer, Store

__all__ = [
    "Lifetime",
    "RecoveryReport",
    "Watch",
    "frame_at",
    "last_record_start",
    "read_records",
    "scan_end",
]

# What one step of a walk decodes: enough records to amortise the step, few
# enough bytes that the payloads a step allocates are reused by the allocator
# instead of being returned to the kernel and faulted in again at every step.
_BATCH_RECORDS = 256
_BATCH_BYTES = 128 * 1024

_SHORT = (Stop.SHORT_HEADER, Stop.SHORT_PAYLOAD)

# How much of a frame longer than ``max_record_size`` one read copies while its
# CRC is checked: the check never allocates what its length field says.
_CHECK_BLOCK = 64 * 1024

# How many frames one step of ``last_record_start`` checks before it looks again.
_WALK_BATCH = 256


@dataclass(frozen=True)
class RecoveryReport:
    """What opening a log found.

    ``end`` is the recovered end of the log; ``discarded_bytes`` the length of the
    range from ``end`` to the last nonzero byte that recovery zeroed (0 when the
    tail was clean); ``stop`` why the scan ended (``None``: it reached the end of
    the store); ``skipped`` the damaged records kept in place under
    ``RecoveryPolicy.SKIP_BAD_RECORDS``; ``quarantine_path`` where the discarded
    bytes were kept, if anywhere; ``recovery_point`` the end the log's recovery
    point vouched for (every byte below it durable), when one agreed with the log
    and the scan started there, else None (the scan started at the head).
    """

    head: int
    end: int
    discarded_bytes: int = 0
    stop: Stop | None = None
    skipped: list[CorruptionError] = field(default_factory=list)
    quarantine_path: str | None = None
    recovery_point: int | None = None


def _crc_checks_in_place(store: Store, position: int, crc: int, length: int) -> bool:
    """Say whether the frame at ``position`` checks, reading it a block at a time."""
    value = crc32c(LENGTH.pack(length))
    at = position + HEADER_SIZE
    end = at + length
    while at < end:
        block = store.read(at, min(end - at, _CHECK_BLOCK))
        if not block:
            return False
        value = crc32c(block, value)
        at += len(block)
    return value == crc


def frame_at(
    store: Store, position: int, limit: int, max_record_size: int, *, collect: bool = True
) -> Scan:
    """Check the one frame at ``position``, which must end at or before ``limit``.

    A frame longer than ``max_record_size`` is checked in place before any of it is
    kept; it is a record when its CRC checks. ``collect`` false keeps no payload.
    """
    if position + HEADER_SIZE > limit:
        return Scan([], position, Stop.SHORT_HEADER, 0)
    crc, length = HEADER.unpack(store.read(position, HEADER_SIZE))
    end = position + HEADER_SIZE + length
    if length > max_record_size:
        if end > limit or not _crc_checks_in_place(store, position, crc, length):
            return Scan([], position, Stop.BAD_LENGTH, length)
        if not collect:
            return Scan([], end, None, 0)
        return Scan([Record(position, store.read(position + HEADER_SIZE, length))], end, None, 0)
    if end > limit:
        return Scan([], position, Stop.SHORT_PAYLOAD, length)
    frame = store.read(position, HEADER_SIZE + length)
    return scan_frames(
        frame,
        0,
        len(frame),
        base=position,
        max_record_size=max_record_size,
        max_records=1,
        collect=collect,
    )


def _scan_step(
    store: Store, position: int, limit: int, max_record_size: int, max_records: int = -1
) -> Scan:
    """Check frames from ``position`` within one piece; a crossing or long frame alone."""
    buffer, base, piece_limit = store.piece(position)
    stop_at = min(piece_limit, limit)
    scan = scan_frames(
        buffer,
        position - base,
        stop_at - base,
        base=base,
        max_record_size=max_record_size,
        collect=False,
        max_records=max_records,
    )
    if scan.stop is Stop.BAD_LENGTH or (scan.stop in _SHORT and stop_at < limit):
        if scan.end == position:
            return frame_at(store, position, limit, max_record_size, collect=False)
        # The frames before it are good; the next step checks this one alone.
        return scan._replace(stop=None)
    return scan


def last_record_start(store: Store, start: int, end: int, max_record_size: int) -> int | None:
    """Return the LSN of the record that ends at ``end``, walking from the record at ``start``.

    Every frame walked is checked. None when the frames from ``start`` are not
    good up to ``end`` or do not end exactly there.
    """
    position = start
    batch_start = start
    while position < end:
        scan = _scan_step(store, position, end, max_record_size, _WALK_BATCH)
        if scan.end == position or (scan.stop is not None and scan.end < end):
            return None
        batch_start, position = position, scan.end
    if position != end or batch_start >= end:
        return None
    # The last batch holds at most ``_WALK_BATCH`` frames: step through its headers.
    lsn = batch_start
    while True:
        _, length = HEADER.unpack(store.read(lsn, HEADER_SIZE))
        following = lsn + HEADER_SIZE + length
        if following >= end:
            return lsn if following == end else None
        lsn = following


def _damage(scan: Scan, store: Store) -> CorruptionError:
    assert scan.stop is not None
    reason = scan.stop.value
    if scan.stop is Stop.BAD_LENGTH:
        reason = f"implausible length {scan.length}"
    elif scan.stop is Stop.BAD_CRC:
        reason = f"checksum mismatch in a record of length {scan.length}"
    return CorruptionError(scan.end, reason, path=store.location)


def _skippable(scan: Scan, limit: int) -> bool:
    return scan.stop is Stop.BAD_CRC and scan.end + HEADER_SIZE + scan.length <= limit


def scan_end(store: Store, config: WalConfig, start: int | None = None) -> RecoveryReport:
    """Find the end of the log in ``store``: where the first bad frame from ``start`` starts.

    ``start`` (the head by default) must be a record start. Under
    ``SKIP_BAD_RECORDS`` a checksum failure with a plausible length is stepped over
    and reported; the end is then just past the last intact frame.
    """
    head = store.head_lsn
    limit = store.capacity
    skip = config.recovery_policy is RecoveryPolicy.SKIP_BAD_RECORDS
    position = good_end = head if start is None else start
    skipped: list[CorruptionError] = []
    pending: list[CorruptionError] = []
    stop: Stop | None = None
    while position < limit:
        scan = _scan_step(store, position, limit, config.max_record_size)
        if scan.end > position:
            good_end = scan.end
            skipped.extend(pending)
            pending.clear()
        position = scan.end
        if scan.stop is None:
            continue
        if skip and _skippable(scan, limit):
            pending.append(_damage(scan, store))
            position = scan.end + HEADER_SIZE + scan.length
            continue
        stop = scan.stop
        break
    return RecoveryReport(head=head, end=good_end, stop=stop, skipped=skipped)


def _decode_piece(  # noqa: PLR0917 - one call per piece, all of it state
    buffer: Buffer,
    base: int,
    position: int,
    stop_at: int,
    max_record_size: int,
    watch: Watch,
) -> Generator[Record, None, int]:
    """Yield the good records of one piece from ``position``; return where they stop."""
    lifetime = watch.lifetime
    while True:
        batch_start = position
        try:
            records, position = decode_batch(
                buffer,
                position - base,
                stop_at - base,
                base=base,
                max_record_size=max_record_size,
                max_records=_BATCH_RECORDS,
                max_bytes=_BATCH_BYTES,
            )
        except ValueError:
            # A mapping closed under the walk, by close or truncate_before.
            watch.check(batch_start)
            raise
        epoch = watch.epoch
        high = watch.high
        remote = lifetime.remote
        if remote is None:
            for record in records:
                if lifetime.epoch != epoch or record[0] >= high:
                    watch.check(record[0])
                    epoch = watch.epoch
                    high = watch.high
                yield record
        else:
            # A read-only handle: the writer may truncate from another process.
            for record in records:
                if lifetime.epoch != epoch or record[0] >= high or remote[0] != lifetime.seen:
                    watch.check(record[0])
                    epoch = watch.epoch
                    high = watch.high
                yield record
        bounded = len(records) == _BATCH_RECORDS or position - batch_start >= _BATCH_BYTES
        if position >= stop_at or not bounded:
            return position


def read_records(
    store: Store,
    *,
    start: int,
    end: int,
    config: WalConfig,
    skipped: list[CorruptionError],
    watch: Watch,
) -> Iterator[Record]:
    """Yield the records of ``[start, end)``; damage raises or is skipped per the policy.

    Records are decoded in batches, but ``watch`` is asked before each one is
    yielded: after a close the walk raises ``WalClosedError``; a record removed by
    a truncation made since the walk began raises ``WalTruncatedError`` instead
    of being yielded, and so does one appended after it in the removed range.
    """
    skip = config.recovery_policy is RecoveryPolicy.SKIP_BAD_RECORDS
    max_record_size = config.max_record_size
    position = start
    while position < end:
        watch.check(position)
        try:
            buffer, base, piece_limit = store.piece(position)
        except (ValueError, OSError, WalClosedError):
            # A mapping closed, or a segment removed, under the walk.
            watch.check(position, look=True)
            raise
        stop_at = min(piece_limit, end)
        position = yield from _decode_piece(buffer, base, position, stop_at, max_record_size, watch)
        if position >= stop_at:
            continue
        try:
            stop, length = diagnose(buffer, position - base, stop_at - base, max_record_size)
        except ValueError:
            watch.check(position)
            raise
        scan = Scan([], position, stop, length)
        if stop is Stop.BAD_LENGTH or (stop in _SHORT and stop_at < end):
            # The frame crosses into the next piece, or is longer than today's
            # limit: check it alone (a long one in place, before it is read).
            try:
                scan = frame_at(store, position, end, max_record_size)
            except (ValueError, OSError, WalClosedError):
                watch.check(position, look=True)
                raise
            if scan.stop is None:
                watch.check(position)
                yield from scan.records
                position = scan.end
                continue
        # Bytes a truncation is changing under the walk are not damage.
        watch.check(position)
        error = _damage(scan, store)
        if not skip:
            raise error
        skipped.append(error)
        if not _skippable(scan, end):
            return
        position = scan.end + HEADER_SIZE + scan.length
