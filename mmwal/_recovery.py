"""Recovery at open: find the end, refuse what is not a log, keep and zero the rest.

Rules kept here:

- Nothing on disk changes before the log is accepted: the refusal comes first.
- Never destroy silently: the nonzero bytes past the end are copied to a
  quarantine file (durably) before they are zeroed, and a warning is logged.
- The zeroing is durable before recovery returns, so no later append can join an
  old intact frame lying past a torn one (a ghost) to the log.
- A read-only store is only scanned.
"""

from __future__ import annotations

import logging

from ._config import WalConfig
from ._errors import CorruptionError
from ._format import HEADER, HEADER_SIZE, Stop
from ._reading import RecoveryReport, scan_end
from ._store import Store

__all__ = ["recover"]

_log = logging.getLogger("mmwal")


def recover(store: Store, config: WalConfig, *, refuse_foreign: bool = True) -> RecoveryReport:
    """Recover the log in ``store``: its end, and a clean, durable tail past it.

    With ``refuse_foreign`` (every open), a store with no valid frame at its head
    but nonzero bytes beyond the first frame's claimed extent raises
    ``CorruptionError`` and is left untouched; ``repair`` passes False.
    """
    found = scan_end(store, config)
    head, end = found.head, found.end
    if end == head and refuse_foreign:
        _refuse_foreign_bytes(store, head, found.stop, config.max_record_size)
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
        store.flush(head, end)
    return RecoveryReport(
        head=head,
        end=end,
        discarded_bytes=discarded,
        stop=found.stop,
        skipped=found.skipped,
        quarantine_path=quarantine_path,
    )


def _refuse_foreign_bytes(store: Store, head: int, stop: Stop | None, max_record_size: int) -> None:
    """Refuse a log with no valid frame at its head, unless it is a torn first append.

    A crash during the very first append leaves a partial frame and zeros: every
    nonzero byte lies within the extent the first header claims. Anything else
    is not ours to wipe.
    """
    claimed_end = head + HEADER_SIZE
    header = store.read(head, HEADER_SIZE)
    if len(header) == HEADER_SIZE:
        _, length = HEADER.unpack(header)
        if length <= max_record_size:
            claimed_end += length
    extent = store.nonzero_extent(claimed_end)
    if extent is None:
        return
    reason = stop.value if stop is not None else "no frame"
    raise CorruptionError(
        head,
        f"no valid record starts at the head ({reason}), yet nonzero bytes lie at "
        f"offset {extent[0]}: this is not an mmwal/wal-db log, or its start is damaged",
        path=store.location,
        hint="nothing was changed; check the path and max_record_size, or run "
        "mmwal.repair() to quarantine the unreadable bytes and start afresh",
    )
