"""Make the next chunk of a store ahead of need, on a thread of its own.

A roll (the log growing into a new segment or window) creates a file, reserves
its blocks, maps it and makes the creation durable: milliseconds, during which
the appending thread holds the reservation lock. etcd's file pipeline keeps one
such file ready instead; this module does the same for a ``ChunkedStore``.

Rules kept here:

- At most one spare and one job at a time. The spare is made durable by the job
  (file and directory fsynced), so the flush after a roll has nothing to add.
- A spare is fresh and zero: it lies past the end of the log, so a crash that
  leaves it behind leaves a zero file that reads as the end, and the next
  writable open removes it like any segment wholly past the end.
- A job's failure is dropped: the roll that needs the chunk creates it inline,
  and that call reports the error (ENOSPC), all or nothing as before. So is a
  job that cannot start (no thread to be had): ``start`` runs after a flush
  that succeeded and must not fail it.
- ``take`` waits for a job still making the chunk asked for rather than make a
  second one beside it; a spare for another index is discarded.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Callable

__all__ = ["ChunkPipeline"]

_log = logging.getLogger("mmwal")


class ChunkPipeline:
    """One chunk made ahead by a background job, handed over on demand."""

    def __init__(
        self,
        make: Callable[[int], mmap.mmap],
        discard: Callable[[int, mmap.mmap], None],
    ) -> None:
        self._make = make
        self._discard = discard
        self._lock = threading.Lock()
        self._job: threading.Thread | None = None
        self._spare: tuple[int, mmap.mmap] | None = None
        self._stopped = False

    def start(self, index: int) -> bool:
        """Begin making chunk ``index`` in the background, unless it is made already.

        Return False when another job is still running: nothing started, ask again.
        """
        with self._lock:
            if self._stopped:
                return True
            if self._job is not None:
                return False
            if self._spare is not None and self._spare[0] == index:
                return True
            job = threading.Thread(
                target=self._run, args=(index,), name=f"mmwal-precreate-{index}", daemon=True
            )
            self._job = job
        try:
            job.start()
        except RuntimeError as error:
            # No thread to be had: a failed job, dropped as the others are (the
            # caller runs after a flush that succeeded; raising would report its
            # records lost). The roll makes the chunk inline.
            _log.debug("making chunk %d ahead: no thread: %s", index, error)
            with self._lock:
                self._job = None
        return True

    def _run(self, index: int) -> None:
        chunk = None
        try:
            chunk = self._make(index)
        except OSError as error:  # the inline creation that follows reports it
            _log.debug("making chunk %d ahead failed: %s", index, error)
        finally:
            stale: tuple[int, mmap.mmap] | None = None
            with self._lock:
                self._job = None
                if chunk is not None:
                    stale, self._spare = self._spare, (index, chunk)
                    if self._stopped:
                        stale, self._spare = self._spare, None
            if stale is not None:
                self._discard(*stale)

    def _wait(self) -> None:
        with self._lock:
            job = self._job
        if job is not None:
            job.join()

    def take(self, index: int) -> mmap.mmap | None:
        """Return the spare if it is chunk ``index`` (waiting for its job), else None."""
        self._wait()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare[0] == index:
            return spare[1]
        self._discard(*spare)
        return None

    def cancel(self) -> None:
        """Wait for any job and discard the spare; ``start`` may run again later."""
        self._wait()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            self._discard(*spare)

    def stop(self) -> None:
        """Cancel for good: no job starts after this, none is left running."""
        with self._lock:
            self._stopped = True
        self.cancel()

    @property
    def spare_index(self) -> int | None:
        """The index of the chunk ready to hand over, if any (for tests)."""
        with self._lock:
            return None if self._spare is None else self._spare[0]
