"""The steps of ``Wal.close``: refuse new work, flush, record the point, release.

Rules this module keeps:

- Close runs once. The first close sets ``Reservations.closing`` (and zeroes
  ``fast_limit``) under the reservation lock, so no append or reservation starts
  after it; a later close finds the flag set, waits for ``Wal._close_done`` and
  shares the first one's outcome (``Wal._close_error``).
- The final sync runs through the group commit like any other, unless the log is
  broken (then nothing is flushed, and close does not raise: the call that met
  the failure reported it).
- Whatever the sync did, the release runs inside ``GroupCommit.exclusive`` (no
  flush running, no copy in flight): ``GroupCommit.closed`` is set there, before
  the store is closed, so a waiter wakes to a closed log and no flush starts on a
  closed store.
- ``Wal._close_done`` is set and followers are woken on every path out, after the
  locks are let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import WalBrokenError

if TYPE_CHECKING:
    from ._wal import Wal

__all__ = ["close"]


def close(wal: Wal) -> None:
    """Close ``wal``; see ``Wal.close``."""
    if wal._archiver is not None:
        wal._archiver.stop()
    reservations, group = wal._reservations, wal._group_commit
    with reservations.lock:
        in_progress = reservations.closing
        reservations.closing = True
        reservations.fast_limit = 0
    if in_progress:
        if wal._close_done.is_set():
            return
        wal._close_done.wait()
        if wal._close_error is not None:
            raise WalBrokenError("the final flush of close") from wal._close_error
        return
    try:
        if group.broken is None:
            group.sync_to(reservations.next_lsn)
    except BaseException as error:
        wal._close_error = error
        raise
    finally:
        try:
            with group.exclusive():
                if group.broken is None and wal._store.writable:
                    wal._points.save_durable_end(group.durable_lsn)
                group.mark_closed()
                wal._lifetime.close()
                if group.publisher is not None:
                    group.publish(group.durable_lsn)
                    group.publisher.close()
                if wal._poll is not None:
                    wal._poll.reader.close()
                wal._store.close()
                # The piece may be a chunk the store let go (not closed by it):
                # its mapping holds a descriptor, and with it the writer's lock.
                reservations.piece = b""
        finally:
            wal._close_done.set()
            reservations.wake_followers()
