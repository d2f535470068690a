"""The append path in Python: what ``Wal.append`` and ``Wal.append_many`` do.

``append_record`` and ``append_records`` are the reference. With the C extension
a writer's handle is bound to ``_speedups.Appender`` instead (``fast_appender``),
which builds each frame straight into the store's piece, one copy of the payload
and no Python frame, and calls these functions with its argument untouched
whenever its fast path does not apply: so every error is raised here, the same
with or without the extension, and ``Reservations.place`` stays the one slow path.

Rules this module keeps (and ``_appendpath.c`` with it):

- The fast path moves the end only under the reservation lock and only while the
  frame ends at or below ``fast_limit`` (see ``_reservations``); anything else
  goes to ``Reservations.place``.
- A record is checked (type, ``max_record_size``) before anything is reserved; a
  batch is checked whole before any of it is: all or none.
- ``Appender`` refers to the reservations and the group commit (its
  ``append_and_sync`` is ``Wal.append_and_sync``'s steps, the sync the group
  commit's ``sync_to``), never to the ``Wal``: the log's handle holds it, so
  no reference cycle keeps a dropped log (and its writer lock) alive until a
  garbage collection.
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._errors import RecordTooLargeError
from ._format import HEADER_SIZE, SPEEDUPS, encode_frame, encode_frames
from ._reservations import INLINE_COPY_LIMIT, Reservations
from ._store import Buffer

if TYPE_CHECKING:
    from ._commit import GroupCommit
if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import Appender

__all__ = ["append_record", "append_records", "as_bytes", "fast_appender"]


def as_bytes(data: object) -> bytes:
    """Return the bytes of a record; refuse what is not one with ``TypeError``."""
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | mmap.mmap):
        return bytes(data)
    if isinstance(data, memoryview):
        # In logical order: a view need not be contiguous.
        return data.tobytes()
    raise TypeError(
        f"a record must be bytes, bytearray, memoryview or mmap, not {type(data).__name__}"
        + (" (hint: encode text first, e.g. text.encode())" if isinstance(data, str) else "")
    )


def append_record(
    reservations: Reservations, log: GroupCommit, max_record_size: int, data: Buffer
) -> int:
    """Append one record; return its LSN (see ``Wal.append``)."""
    payload = data if type(data) is bytes else as_bytes(data)
    length = len(payload)
    if length > max_record_size:
        raise RecordTooLargeError(length, max_record_size)
    frame = encode_frame(payload)
    if length < INLINE_COPY_LIMIT:
        reserve = reservations.lock
        if not reserve.acquire(False):
            reservations.acquire_contended()
        try:
            lsn = reservations.next_lsn
            end = lsn + length + HEADER_SIZE
            if end <= reservations.fast_limit:
                base = reservations.piece_base
                reservations.piece[lsn - base : end - base] = frame  # type: ignore[index]
                reservations.next_lsn = end
                reservations.appends += 1
                if reservations.followers_waiting:
                    reservations.wake_followers()
                return lsn
        finally:
            reserve.release()
    return reservations.place(frame, 1, log)


def append_records(
    reservations: Reservations, log: GroupCommit, max_record_size: int, records: Iterable[Buffer]
) -> list[int]:
    """Append records in order, all or none; return their LSNs (see ``Wal.append_many``)."""
    if isinstance(records, bytes | bytearray | memoryview | mmap.mmap | str):
        raise TypeError("append_many takes an iterable of records, not one record")
    payloads = [as_bytes(record) for record in records]
    offsets: list[int] = []
    position = 0
    for payload in payloads:
        if len(payload) > max_record_size:
            raise RecordTooLargeError(len(payload), max_record_size)
        offsets.append(position)
        position += HEADER_SIZE + len(payload)
    if not payloads:
        log.check_writable()
        return []
    first = reservations.place(encode_frames(payloads), len(payloads), log)
    return [first + offset for offset in offsets]


def fast_appender(
    reservations: Reservations, log: GroupCommit, max_record_size: int
) -> Appender | None:
    """Return the C append path over ``reservations``, or None without the extension."""
    if not SPEEDUPS:
        return None
    appender = Appender(
        reservations,
        max_record_size,
        INLINE_COPY_LIMIT,
        functools.partial(append_record, reservations, log, max_record_size),
        functools.partial(append_records, reservations, log, max_record_size),
    )
    # ``append_and_sync``: Wal.append_and_sync's steps, the sync the group
    # commit's own (in C for a lone commit).
    appender.sync_to = log.sync_to
    appender.as_bytes = as_bytes
    return appender
