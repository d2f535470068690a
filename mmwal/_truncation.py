"""The steps of ``Wal.truncate_after`` and ``Wal.truncate_before``, crash-safe in order.

Rules this module keeps:

- Each truncation runs inside ``GroupCommit.exclusive``: it holds the one-flusher
  token and the reservation lock, with no copy in flight, for all of its steps,
  so it may move ``next_lsn`` and ``durable_lsn`` (the latter through
  ``GroupCommit.truncated`` and ``flushed_exclusively``, which take the commit
  lock inside: the reservation lock comes before the commit lock).
- A caller's mistake is refused before anything changes. Then ``fast_limit`` is
  zeroed: the next append takes the slow path, which maps the piece at the end.
- Readers learn of a cut (``Lifetime.truncated``, the published ends) before a
  byte changes or a mapping is closed.
- Past the checks, an ``OSError`` in any step breaks the log (fail-stop): what
  the log holds is then in doubt, as after any failed flush. The archive push
  of ``truncate_before`` runs before it all, outside ``exclusive``; if it fails,
  nothing has changed.
- Followers waiting on the handle are woken once the truncation is done, after
  the reservation lock is let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import WalBrokenError
from ._filestore import FileStore
from ._format import HEADER_SIZE
from ._lifetime import UNBOUNDED
from ._memstore import MemStore

if TYPE_CHECKING:
    from ._wal import Wal

__all__ = ["check_truncate_before", "truncate_after", "truncate_before"]


def truncate_after(wal: Wal, lsn: int) -> None:
    """Keep the records up to and including the one at ``lsn``; see ``Wal.truncate_after``."""
    reservations = wal._reservations
    group = wal._group_commit
    with group.exclusive():
        wal._check_writable()
        end = reservations.next_lsn
        wal._check_lsn(lsn, end, end_allowed=False)
        new_end = wal._check_record_start(lsn, end, end_allowed=False)
        wal._record_starts.forget_from(new_end)
        reservations.fast_limit = 0
        # Readers learn of the cut first, before the flush of what is kept and
        # before a byte changes (see _lifetime). A cut at the end removes
        # nothing: readers need not hear of it.
        if new_end < reservations.next_lsn:
            wal._lifetime.truncated(0, new_end)
        if group.publisher is not None and new_end < reservations.next_lsn:
            group.publisher.cut(
                new_end,
                written=reservations.next_lsn,
                durable=group.durable_lsn,
                head=wal._store.head_lsn,
            )
        store = wal._store
        try:
            store.flush(group.durable_lsn, new_end)
        except OSError as error:
            group.break_locked(error, "the flush of truncate_after")
            raise WalBrokenError("the flush of truncate_after") from error
        # The point must not vouch for records this drops: it moves first.
        wal._points.truncating(lsn, new_end, durable=True)
        try:
            if new_end < reservations.next_lsn:
                switch_end = min(new_end + HEADER_SIZE, store.capacity)
                store.write(new_end, bytes(switch_end - new_end))
                store.flush(new_end, switch_end)
            store.discard_after(new_end)
        except OSError as error:
            # The zeroing may have reached the mapping and not the disk: what
            # the log holds is in doubt, as after any failed flush.
            group.break_locked(error, "the flush of truncate_after")
            raise WalBrokenError("the flush of truncate_after") from error
        reservations.bytes_dropped += reservations.next_lsn - new_end
        reservations.next_lsn = new_end
        group.truncated(new_end)
        group.publish(new_end)
    if reservations.followers_waiting:
        reservations.wake_followers()


def truncate_before(wal: Wal, lsn: int) -> int:
    """Drop whole segments before the one holding ``lsn``; see ``Wal.truncate_before``."""
    reservations = wal._reservations
    group = wal._group_commit
    if wal._archiver is not None:
        # A caller's mistake is refused before anything leaves the machine.
        with group.exclusive():
            check_truncate_before(wal, lsn)
        wal._archiver.before_truncate(lsn)
    with group.exclusive():
        head = check_truncate_before(wal, lsn)
        if lsn <= head:
            return head
        end = reservations.next_lsn
        reservations.fast_limit = 0
        try:
            # The records the new head points at must be on disk before the
            # head file names them, or a crash leaves a head on a torn record.
            start = group.durable_lsn
            wal._store.flush(start, end)
            group.flushed_exclusively(end)
            wal._points.flushed(start, end)
            if not isinstance(wal._store, FileStore | MemStore):
                # Readers learn of the cut before any mapping is closed.
                wal._lifetime.truncated(lsn, UNBOUNDED)
                if group.publisher is not None:
                    group.publisher.publish(written=end, durable=end, head=lsn)
                    group.publisher.announce()
            head = wal._store.drop_before(lsn)
            if group.publisher is not None:
                group.publisher.announce()  # the head file is in place now
            # The point may name a record the drop removed: name the end.
            wal._points.save_durable_end(end)
        except OSError as error:
            # The head file or the removals may be half durable: fail-stop.
            group.break_locked(error, "the durable steps of truncate_before")
            raise WalBrokenError("the durable steps of truncate_before") from error
        group.publish(end)
    if reservations.followers_waiting:
        reservations.wake_followers()
    return head


def check_truncate_before(wal: Wal, lsn: int) -> int:
    """Refuse what ``truncate_before(lsn)`` may not do; return the head.

    Call inside ``GroupCommit.exclusive``.
    """
    wal._check_writable()
    head = wal._store.head_lsn
    if lsn > head:
        end = wal._reservations.next_lsn
        wal._check_lsn(lsn, end)
        wal._check_record_start(lsn, end, end_allowed=True)
    return head
