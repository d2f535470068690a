"""Archiving an open log as it runs: background pushes and the truncation guard.

Rules kept here:

- One push at a time per log (``_lock``): the background thread and
  ``truncate_before`` never upload the same segment at once.
- ``truncate_before`` deletes nothing the archive does not hold: it pushes the
  segments it is about to drop first, in the caller's thread, and raises (the
  log unchanged) if that push fails. Pushing, not refusing, because a caller
  truncates to free space: a guard that raised whenever the background thread
  lagged would turn every truncation into a retry loop, while pushing first
  costs only the time of uploads that were due anyway.
- The background thread only reads a log attribute while idle; it pushes when
  the durable end passed the end of the next segment to archive, and after a
  failure it backs off before it tries again. A conflict stops it for good.
- ``stop`` (called by ``close``) lets a push in progress finish and starts none.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ._archive_local import LocalLog
from ._errors import ArchiveConflictError

if TYPE_CHECKING:
    from ._archive import Archive
    from ._wal import Wal

__all__ = ["Archiver"]

_log = logging.getLogger("mmwal")

_POLL_SECONDS = 0.1
_FIRST_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 60.0


class Archiver:
    """Push an open segmented log's sealed segments to an ``Archive`` in the background."""

    def __init__(self, wal: Wal, archive: Archive) -> None:
        """Check that ``wal`` can be archived and start the background thread."""
        LocalLog.of_wal(wal)  # a single-file log raises here
        if not wal.store.writable:
            raise ValueError(
                "archive= needs a writable log: a read-only open makes nothing sealed "
                "(hint: push a read-only log's directory with archive.push(path))"
            )
        self.archive = archive
        self._wal = wal
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        #: The error of the last background push that failed, ``None`` after a success.
        self.last_error: BaseException | None = None
        # Where the next segment to push ends: no push is due before the durable
        # end passes it.
        self._due_at = 0
        self._thread = threading.Thread(target=self._run, name="mmwal-archiver", daemon=True)
        self._thread.start()

    def push(self, up_to_index: int | None = None) -> list[int]:
        """Push the log's sealed segments now (below ``up_to_index``, if given)."""
        with self._lock:
            log = LocalLog.of_wal(self._wal)
            pushed = self.archive._push_log(log, None, up_to=up_to_index)
            segments = self.archive.segments()
            last = segments[-1].index if segments else log.head_lsn // log.segment_size - 1
            self._due_at = (last + 2) * log.segment_size
            return pushed

    def before_truncate(self, lsn: int) -> None:
        """Make sure every segment ``truncate_before(lsn)`` would delete is archived."""
        wal = self._wal
        if lsn <= wal.head_lsn:
            return
        wal.sync()
        size = LocalLog.of_wal(wal).segment_size
        drop_below = min(lsn, wal.next_lsn) // size
        self.push(up_to_index=drop_below)
        archived = {segment.index for segment in self.archive.segments()}
        missing = [
            index for index in range(wal.head_lsn // size, drop_below) if index not in archived
        ]
        if missing:
            raise ArchiveConflictError(
                missing[0],
                f"truncate_before({lsn}) would delete segments {missing[0]}..{missing[-1]}, "
                f"which the archive does not hold and could not take; nothing was deleted",
                self.archive.url,
            )

    def stop(self) -> None:
        """Stop the background thread; wait for a push in progress to finish."""
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        while not self._stopping.wait(_POLL_SECONDS):
            if self._wal.durable_lsn < self._due_at:
                continue
            try:
                self.push()
            except ArchiveConflictError as error:
                self.last_error = error
                _log.error("archiving %s stopped: %s", self._wal.store.location, error)
                return
            except Exception as error:  # noqa: BLE001 - any failure is retried later
                self.last_error = error
                _log.warning(
                    "archiving %s failed, retrying in %.0f s: %s",
                    self._wal.store.location,
                    backoff,
                    error,
                )
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            else:
                self.last_error = None
                backoff = _FIRST_BACKOFF_SECONDS
