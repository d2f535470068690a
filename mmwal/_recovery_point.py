"""The recovery point: how far the log is known durable, kept in a side file.

Open scans from the recovery point instead of the head, so its time does not grow
with the log; and a bad frame below the point is damage, never a torn tail.

Rules kept here:

- A point is written only after the flush that covered it returned: it never
  claims a byte that is not durable.
- A point names the record that ends at it (LSN, CRC field, length) and the
  store's unit size. One that does not match the log (rewritten, restored from a
  backup, truncated, copied from another log) is ignored: open then scans from
  the head, exactly as for a log that never had one.
- Writing a point is optional work: a failure to write one is logged and leaves
  the previous one (still true) in place; it never breaks the log.
- Points are written by the one flush leader (or under the log's exclusive
  section), never on the append path.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ._format import (
    HEADER,
    HEADER_SIZE,
    RECOVERY_FILE_NAME,
    RECOVERY_POINT_SIZE,
    SPEEDUPS,
    RecoveryPoint,
    decode_recovery_point,
    encode_recovery_point,
)
from ._reading import last_record_start
from ._store import Store

__all__ = ["POINT_INTERVAL_BYTES", "POINT_INTERVAL_SECONDS", "PointKeeper", "load_point"]

_log = logging.getLogger("mmwal")

#: A flush writes a new point once this many bytes became durable since the last.
POINT_INTERVAL_BYTES = 16 * 1024 * 1024
#: ... or once this long passed since the last point, if anything new is durable.
POINT_INTERVAL_SECONDS = 5.0


def load_point(store: Store) -> RecoveryPoint | None:
    """Return the store's recovery point if it agrees with the log, else None.

    Agreeing means: a whole, checksummed file; the same unit size; the record it
    names lies at or above the head and below the store's capacity, and its header
    on disk carries the CRC and length the point recorded. The record's payload is
    checked by the scan that starts there.
    """
    data = store.load_side_file(RECOVERY_FILE_NAME)
    if data is None:
        return None
    point = decode_recovery_point(data[: RECOVERY_POINT_SIZE + 1])
    if point is None:
        _log.warning("ignored the unreadable recovery point of %s", store.location)
        return None
    if _agrees(store, point):
        return point
    _log.warning(
        "ignored the recovery point of %s (LSN %d): it does not match the log; scanning "
        "from the head",
        store.location,
        point.end,
    )
    return None


def _agrees(store: Store, point: RecoveryPoint) -> bool:
    if (
        point.unit_size != store.unit_size
        or point.last_lsn < store.head_lsn
        or point.end > store.capacity
    ):
        return False
    crc, length = HEADER.unpack(store.read(point.last_lsn, HEADER_SIZE))
    return (crc, length) == (point.last_crc, point.last_length)


class PythonPointKeeperBase:
    """The fields a flush reads and ``note_flushed``: the reference of the C ``PointKeeperBase``."""

    _flushed: tuple[int, int]
    saved_end: int | None
    _saved_at: float
    _quiet_until: float
    _interval_seconds: float
    _interval_bytes: int
    _unit: int
    _enabled: bool

    def note_flushed(self, start: int, end: int, now: float) -> bool:
        """Note that ``[start, end)`` is durable at ``now``; return whether a point is due.

        ``now`` is a ``time.perf_counter()`` reading. The caller then writes the
        point with ``save(start, end)``, still as the one flusher. Cheap: every
        commit's flush comes here.
        """
        if end <= start:
            return False
        self._flushed = (start, end)
        if not self._enabled or now < self._quiet_until:
            return False
        saved = self.saved_end
        unit = self._unit
        return bool(
            saved is None
            or saved > end
            or end - saved >= self._interval_bytes
            or (unit and end // unit != saved // unit)
            or now - self._saved_at >= self._interval_seconds
        )


if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import PointKeeperBase
else:
    PointKeeperBase = PythonPointKeeperBase


class PointKeeper(PointKeeperBase):
    """Decide when a flush writes a recovery point, and write it.

    The log calls ``flushed`` after every flush that returned, and ``save`` where it
    must (close, truncation). Both run with no other flush, truncation or close
    in progress. ``note_flushed`` (every flush's question) is the base's: in C
    with the extension.
    """

    def __init__(self, store: Store, max_record_size: int, recovered: tuple[int, int]) -> None:
        """Keep the points of ``store``; recovery made ``recovered`` durable, a record range."""
        self._store = store
        self._max_record_size = max_record_size
        # Fixed for the store's life; the intervals as the module says at open.
        self._unit = store.unit_size
        self._interval_bytes = POINT_INTERVAL_BYTES
        self._interval_seconds = POINT_INTERVAL_SECONDS
        # Whether the store keeps side files at all; a store that does not never
        # pays for the walk that finds a point's record.
        self._enabled = True
        # The end the point on disk vouches for (None: there is none we trust).
        self.saved_end: int | None = None
        self._saved_at = time.perf_counter()
        # The last durable range that held records: a record starts at its start.
        self._flushed = recovered
        # After a failed write, flushes try again only once the interval passed.
        self._quiet_until = 0.0

    def adopt(self, end: int) -> None:
        """Take the point recovery found (vouching for ``end``) as the one on disk."""
        self.saved_end = end

    def flushed(self, start: int, end: int) -> None:
        """Note that ``[start, end)`` (``start`` a record start) is durable; maybe save."""
        if self.note_flushed(start, end, time.perf_counter()):
            self.save(start, end)

    def save_durable_end(self, end: int) -> None:
        """Write a point at ``end``, the durable end, if the last durable range ends there."""
        start, flushed_end = self._flushed
        if not self._enabled or flushed_end != end:
            return
        if self._store.head_lsn >= end:
            # No record lies between the head and the end for a point to name, and
            # a saved one names a record a drop removed: the next open would
            # ignore it with a warning. An empty log needs none.
            if self.saved_end is not None:
                self._remove()
        elif self.saved_end != end:
            self.save(start, end)

    def _remove(self) -> None:
        try:
            self._store.remove_side_file(RECOVERY_FILE_NAME)
        except OSError as error:
            # Optional work, as a save: the point left behind is ignored at open.
            _log.warning(
                "could not remove the recovery point of %s: %s", self._store.location, error
            )
            return
        self.saved_end = None

    def truncating(self, lsn: int, new_end: int, *, durable: bool) -> None:
        """Before the log is cut to ``new_end`` (where the record at ``lsn`` ends).

        A point past the cut moves to it, or is removed, before a byte is zeroed:
        raises ``OSError`` (the cut must not go ahead) when neither can be done.
        """
        _, flushed_end = self._flushed
        if flushed_end > new_end:
            self._flushed = (lsn, new_end) if durable else (0, 0)
        if self.saved_end is None or self.saved_end <= new_end:
            return
        # The saved point was durable and lies past the cut, so the cut is durable.
        if not self.save(lsn, new_end, strict=True):
            self._store.remove_side_file(RECOVERY_FILE_NAME)
            self.saved_end = None

    def save(self, start: int, end: int, *, strict: bool = False) -> bool:
        """Write a point at ``end`` (durable), finding its record from the record at ``start``.

        Returns whether a point was written. A failure to write is logged, or
        raised with ``strict``.
        """
        store = self._store
        # A prefix dropped since: the head is a record start too.
        start = max(start, store.head_lsn)
        if start >= end:
            return False
        lsn = last_record_start(store, start, end, self._max_record_size)
        if lsn is None:
            # Not a walk of good frames: vouch for nothing rather than guess.
            _log.info("no recovery point written for %s at LSN %d", store.location, end)
            return False
        crc, length = HEADER.unpack(store.read(lsn, HEADER_SIZE))
        point = RecoveryPoint(end, lsn, crc, length, store.unit_size)
        try:
            saved = store.save_side_file(RECOVERY_FILE_NAME, encode_recovery_point(point))
        except OSError as error:
            if strict:
                raise
            # The previous point (or none) still holds: it vouches for less.
            _log.warning("could not write the recovery point of %s: %s", store.location, error)
            self._quiet_until = time.perf_counter() + POINT_INTERVAL_SECONDS
            return False
        if saved:
            self.saved_end = end
            self._saved_at = time.perf_counter()
        else:
            self._enabled = False
        return saved
