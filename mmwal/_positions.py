"""Checking the LSNs callers pass: record starts, caller mistakes, the nearest valid LSNs.

A caller's LSN that names no record is a mistake, reported as ``InvalidLSNError``
(a ``ValueError``) with the nearest LSNs the call would take; damage at a real
record start stays a ``CorruptionError``. Telling the two apart takes a walk over
intact frames from a known record start up to the LSN: a walk that lands on it
proves it a record start (so a bad frame there is damage), one that steps over
it proves it is not, and names the record starts on either side.

Rules kept here:

- The walk is bounded: it starts at the nearest record start this log knows at
  or below the LSN (the head, or a point an earlier walk passed) and stops after
  ``WALK_LIMIT`` bytes. Past the limit an LSN with no intact frame is reported as
  a mistake, with the last record start reached as ``before``.
- A walk reads; nothing here writes. Known record starts at or past a truncation
  point are forgotten by the log (``forget_from``) before new bytes can land there.
- Damage met on the way to the LSN is a ``CorruptionError`` at the damage: whether
  a record starts past it cannot be told.
"""

from __future__ import annotations

import bisect
import threading

from ._errors import CorruptionError, InvalidLSNError
from ._format import HEADER_SIZE, Scan, Stop
from ._reading import _scan_step, _skippable, frame_at
from ._store import Store

__all__ = ["WALK_LIMIT", "RecordStarts"]

#: How far (in log bytes) one walk for the nearest record starts goes.
WALK_LIMIT = 256 * 1024 * 1024

# A walk remembers one record start per this many bytes it passes, so a later
# walk near the same place starts close to it.
_LANDMARK_SPACING = 16 * 1024 * 1024
# How many record starts are remembered; past it every other one is forgotten.
_MAX_LANDMARKS = 4096


class RecordStarts:
    """The record starts one log knows, and the checks of LSNs against them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: list[int] = []
        # Moves at every cut: a walk that began before a cut remembers nothing,
        # since the bytes it read may be gone.
        self._generation = 0

    def forget_from(self, end: int) -> None:
        """Forget the record starts at or past ``end`` (the log was cut there)."""
        with self._lock:
            self._generation += 1
            del self._known[bisect.bisect_left(self._known, end) :]

    def _nearest_known(self, lsn: int, head: int) -> int:
        with self._lock:
            index = bisect.bisect_right(self._known, lsn)
            return max(head, self._known[index - 1]) if index else head

    def _remember(self, lsn: int, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            index = bisect.bisect_left(self._known, lsn)
            if index < len(self._known) and self._known[index] == lsn:
                return
            self._known.insert(index, lsn)
            if len(self._known) > _MAX_LANDMARKS:
                del self._known[::2]

    def check_bounds(
        self, store: Store, lsn: int, end: int, *, end_allowed: bool, max_record_size: int
    ) -> None:
        """Refuse an LSN that is no int, below the head or past ``end``.

        ``end_allowed`` says whether ``end`` itself is a valid answer, so the
        nearest valid LSN below a past-the-end one is ``end`` or the last record's
        start.
        """
        if isinstance(lsn, bool) or not isinstance(lsn, int):
            raise TypeError(f"an LSN is an int, not {type(lsn).__name__}")
        head = store.head_lsn
        if lsn < head:
            raise InvalidLSNError(
                lsn,
                f"lies below the head {head}: the records before the head were dropped "
                f"by truncate_before",
                after=head if end > head or end_allowed else None,
            )
        if lsn > end:
            before: int | None = end
            if not end_allowed:
                before = self.last_start(store, end, max_record_size) if end > head else None
            raise InvalidLSNError(lsn, f"lies past the end of the log ({end})", before=before)

    def check(
        self,
        store: Store,
        lsn: int,
        *,
        end: int,
        end_allowed: bool,
        max_record_size: int,
        damaged_allowed: bool = False,
    ) -> int:
        """Return the end of the intact record at ``lsn`` (``lsn`` itself for ``end``).

        ``lsn`` must lie in ``[head, end]``; ``end`` is a valid answer only when
        ``end_allowed``. Raises ``InvalidLSNError`` when no record starts at
        ``lsn``, ``CorruptionError`` when one does and its frame is damaged (or
        damage before it hides whether one does). ``damaged_allowed`` (a walk
        under ``SKIP_BAD_RECORDS``) accepts a proven record start whose frame
        fails its checksum with a length that fits before ``end``: the walk steps
        over it, so the end of that damaged frame is returned.
        """
        head = store.head_lsn
        if lsn == end:
            if end_allowed:
                return lsn
            before = self.last_start(store, end, max_record_size) if end > head else None
            raise InvalidLSNError(
                lsn, "is the end of the log, where no record starts yet", before=before
            )
        frame = frame_at(store, lsn, end, max_record_size)
        if frame.stop is None:
            return frame.end
        start = self._nearest_known(lsn, head)
        reached, crossing = self._walk(store, start, lsn, end, max_record_size)
        if reached == lsn:
            steppable = _skippable(frame, end)
            if damaged_allowed and steppable:
                return lsn + HEADER_SIZE + frame.length
            raise _damage_at(store, frame, lsn, steppable=steppable)
        if crossing is None:
            raise InvalidLSNError(
                lsn,
                f"is not the start of an intact record as far as a walk of "
                f"{WALK_LIMIT >> 20} MiB from LSN {start} could tell",
                before=reached,
            )
        if crossing.stop is not None:
            raise CorruptionError(
                reached,
                f"the record at LSN {reached} before LSN {lsn} is damaged "
                f"({_describe(crossing)}), so whether a record starts at LSN {lsn} "
                f"cannot be told",
                path=store.location,
                hint="iterate from the head to see the damage; repair() sets it aside",
            )
        after = crossing.end if crossing.end < end or end_allowed else None
        raise InvalidLSNError(
            lsn,
            f"lies inside the record at LSN {reached}: no record starts there",
            before=reached,
            after=after,
        )

    def last_start(self, store: Store, end: int, max_record_size: int) -> int | None:
        """Return the start of the last intact record before ``end``, if a walk finds it."""
        start = self._nearest_known(end - 1, store.head_lsn)
        reached, crossing = self._walk(store, start, end - 1, end, max_record_size)
        if crossing is not None and crossing.stop is None and crossing.end == end:
            return reached
        return None

    def _walk(
        self, store: Store, start: int, target: int, end: int, max_record_size: int
    ) -> tuple[int, Scan | None]:
        """Walk intact frames from record start ``start`` toward ``target``.

        Returns ``(position, crossing)``: ``position`` is ``target`` when a frame
        ends there; else the start of the frame that crosses ``target`` (or is
        damaged), with ``crossing`` the check of that frame. ``crossing`` is None
        when the walk ran out of its bound at ``position``.
        """
        with self._lock:
            generation = self._generation
        position = start
        limit = min(target, start + WALK_LIMIT)
        landmark = start + _LANDMARK_SPACING
        while position < limit:
            if position >= landmark:
                self._remember(position, generation)
                landmark = position + _LANDMARK_SPACING
            # The reading layer's step: a frame crossing a piece, or one longer
            # than max_record_size whose CRC checks, is a record here as there.
            scan = _scan_step(store, position, limit, max_record_size)
            position = scan.end
            if scan.stop is None:
                continue
            # Stopped at ``limit`` or at damage: the frame checked against the
            # log's end tells a frame crossing ``target`` from a damaged one.
            frame = frame_at(store, position, end, max_record_size)
            if frame.stop is not None or frame.end > target:
                return position, frame
            position = frame.end
        return position, None


def _describe(scan: Scan) -> str:
    if scan.stop is Stop.BAD_LENGTH:
        return f"implausible length {scan.length}"
    if scan.stop is Stop.BAD_CRC:
        return f"checksum mismatch in a record of length {scan.length}"
    return scan.stop.value if scan.stop is not None else "intact"


def _damage_at(store: Store, frame: Scan, lsn: int, *, steppable: bool) -> CorruptionError:
    if steppable:
        hint = (
            "nothing was changed; iterate from it with "
            "WalConfig(recovery_policy=RecoveryPolicy.SKIP_BAD_RECORDS), which steps over the "
            "damaged record (its data is lost), or run mmwal.repair() to cut the log at the damage"
        )
    else:
        # A length that cannot be trusted (or runs past the end) tells no policy
        # where the next record starts.
        hint = (
            "nothing was changed; no policy can step over a record whose length cannot be "
            "trusted: run mmwal.repair() to cut the log at the damage"
        )
    return CorruptionError(
        lsn,
        f"the record at LSN {lsn} is damaged ({_describe(frame)})",
        path=store.location,
        hint=hint,
    )
