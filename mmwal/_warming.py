"""Fault the pages just past a log's durable end in, clean, on a thread of their own.

The first store into a page of a file mapping that no fault has touched yet is
a full fault: a page-cache folio allocated and zero-filled (the blocks are
preallocated and unwritten, so nothing is read), mapped, then made writable
(ext4's ``page_mkwrite``). A commit that opens a page pays all of it before its
``fdatasync``; ``pwrite`` pays less for the same page. Measured
(``perf.commit_tail``, six rounds): a page-opening commit was 16.5-21.3 µs
slower than raw ``pwrite`` + ``fdatasync``, the others 10.7-13.1 µs. Those
commits, one in 16 at 256 B, are where a run's commit p99 lies.

``MADV_POPULATE_READ`` does the first half ahead of need, on another thread and
without the GIL: the folio is in the page cache and mapped read-only, and the
commit that opens the page takes only the write fault.

Rules kept here:

- Read faults only. A warmed page is clean: nothing is written back for it, and
  a crash loses nothing it did not already lose (the page reads as zeros, as the
  preallocated block does). Only the log's own stores dirty pages.
- No large folios. The tail's mapping has no fault readahead
  (``_files.advise_writing``), and a populate fault follows the mapping's advice,
  so each warmed page is an order-0 folio and a commit still writes back only
  the pages it touched.
- Bounded: at most ``WARM_AHEAD`` bytes past the durable end, inside the last
  chunk; a roll's next chunk is warmed once the end is in it.
- One job at a time. A busy warmer starts nothing; the store asks again later.
- The job holds a buffer export of the mapping while the kernel faults it in, so
  an unmap in another thread (``_files.close_mapping``) waits for the job's end
  and the call never touches a range that is no longer this mapping. The store
  waits for the job before it closes its mappings (``wait``) or moves the end
  back (``reset``), so no job outlives the store.
- A failure is dropped: warming is a hint (kernels before 5.14 refuse the advice
  with ``EINVAL``; a process out of threads starts no job), and without it a
  commit only pays the fault itself. It must never fail the flush it follows:
  that flush's records are durable, and an error would report them lost.
"""

from __future__ import annotations

import ctypes
import mmap
from _thread import allocate_lock, start_new_thread

from ._files import populate_read
from ._syscalls import PAGE_SIZE

__all__ = ["WARM_AHEAD", "TailWarmer"]

#: Bytes past the durable end kept faulted in. A job starts when the end is
#: within half of this of the warmed bytes' end, so each job faults in about
#: half of it (128 pages, well under a millisecond of a second core's time).
WARM_AHEAD = 1 << 20


class TailWarmer:
    """Keeps the pages after a store's durable end faulted in ahead of its appends."""

    def __init__(self, chunk_size: int, ahead: int = WARM_AHEAD) -> None:
        if ahead < 2 * PAGE_SIZE or ahead % PAGE_SIZE:
            raise ValueError(f"ahead must be a multiple of {PAGE_SIZE} of at least two pages")
        self.chunk_size = chunk_size
        self.ahead = ahead
        # Log bytes below this are warmed, written, or not the last chunk's.
        self._warmed_to = 0
        # Held from a job's start to its end (released by the job's thread).
        self._running = allocate_lock()
        self.jobs_started = 0

    def after_flush(self, end: int, last_index: int, last: mmap.mmap | None) -> int:
        """Start warming past the durable ``end`` if due; return the end to call again at.

        ``last`` is the mapping of the store's last chunk (None: not mapped) and
        ``last_index`` its index. The answer is always past ``end``, so a store
        that waits for it is not called on every commit. Never raises: warming
        is a hint, and this runs after a flush that succeeded.
        """
        size = self.chunk_size
        index = end // size
        base = index * size
        if last is None or index != last_index:
            # The end is not in the last chunk (or just past it): nothing to warm
            # until it is; a growth or a roll brings the store back anyway.
            return base + size
        again = self._warmed_to - self.ahead // 2
        if end < again:
            return again
        first = max(end, self._warmed_to) - base
        first += -first % PAGE_SIZE  # the page holding the end is written already
        stop = end - base + self.ahead
        stop = min(len(last), stop + -stop % PAGE_SIZE)
        if first >= stop:
            return base + size  # the chunk is warm to its end
        if not self._start(last, first, stop - first):
            return end + self.ahead // 8  # a job still runs: ask again a little later
        self._warmed_to = base + stop
        if stop == len(last):
            return base + size  # warm to the chunk's end once this job is done
        return self._warmed_to - self.ahead // 2  # at least end + ahead / 2

    def _start(self, mapping: mmap.mmap, start: int, length: int) -> bool:
        if not self._running.acquire(blocking=False):
            return False
        try:
            # Not threading.Thread: its start waits for the new thread to run
            # (120 µs measured, on the commit that asks); this returns once the
            # thread exists (13 µs).
            start_new_thread(self._run, (mapping, start, length))
        except RuntimeError:  # no thread to be had: the commit goes on unwarmed
            self._running.release()
            return False
        self.jobs_started += 1
        return True

    def _run(self, mapping: mmap.mmap, start: int, length: int) -> None:
        try:
            try:
                anchor = ctypes.c_char.from_buffer(mapping)
            except (ValueError, TypeError):
                return  # closed meanwhile, or not writable: nothing to warm
            populate_read(ctypes.addressof(anchor) + start, length)
            del anchor
        finally:
            self._running.release()

    @property
    def busy(self) -> bool:
        """Whether a job runs."""
        return self._running.locked()

    def wait(self) -> None:
        """Return once no job runs."""
        with self._running:
            pass

    def reset(self) -> None:
        """Wait, then forget what was warmed: the end moved back (a truncation)."""
        self.wait()
        self._warmed_to = 0

    @property
    def warmed_to(self) -> int:
        """Log bytes below this are warmed (or written); for tests."""
        return self._warmed_to
