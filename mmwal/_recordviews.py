"""The per-record loop of ``copy=False`` reads: records whose data is a view, one at a time.

``RecordViews(feed, record_type)`` is ``mmwal._speedups.RecordViews`` where the C
extension is built, else ``RecordViewsPython``, its reference twin here. Both
take runs of good frames from ``feed`` (the log layer, which reads and checks
them) and yield ``record_type(lsn, data)``, ``data`` a read-only slice of the
run's view. Neither reads a store: this is the format layer.

Rules kept here (and in C):

- The view yielded last is released when the next record is asked for, at
  ``release_views()`` (the log calls it before it truncates or unmaps) and at
  ``close()``; touching it then raises ``ValueError``.
- After ``release_views()``, or once ``remote`` (a writer's truncation counter in
  another process) no longer holds ``seen``, the run is dropped and the feed is
  asked for the next record again by its LSN, so the log checks that it survived
  before it is made. A run during which ``release_views()`` ran is asked again
  from its first record.
- A run whose view is found released (a truncation or close in another thread
  released the reader's batch and has not reached ``release_views()`` yet) is
  treated as a release: the feed is asked for the next record by its LSN.
- A feed that raises or returns None ends the iteration (as a generator ends).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._format import SPEEDUPS
from ._store import Buffer

__all__ = ["Feed", "RecordViews", "RecordViewsPython", "Run"]

#: A run of good frames: (view, lsns, offsets, lengths, remote, seen); the three
#: arrays are native int64 buffers indexing ``view`` (as ``walk_frames`` gives).
Run = tuple[memoryview, Buffer, Buffer, Buffer, Buffer | None, int]

#: What hands out runs: called with None for the next run, or with the LSN of
#: the record to go on from after the walk stopped short; None at the end.
Feed = Callable[[int | None], Run | None]


class RecordViewsPython:
    """Yield ``record_type(lsn, view)`` over the runs ``feed`` hands out; the reference."""

    __slots__ = (
        "__weakref__",
        "_feed",
        "_held",
        "_next",
        "_record_type",
        "_releases",
        "_resume_at",
        "_run",
    )

    def __init__(self, feed: Feed, record_type: type[tuple[Any, ...]]) -> None:
        self._held: memoryview | None = None
        if not callable(feed):
            raise TypeError("feed must be callable")
        if not (isinstance(record_type, type) and issubclass(record_type, tuple)):
            raise TypeError("record_type must be a tuple subclass")
        self._feed: Feed | None = feed
        self._record_type = record_type
        self._run: tuple[memoryview, memoryview, memoryview, memoryview, Any, int] | None = None
        self._next = 0
        self._releases = 0
        self._resume_at: int | None = None

    def __iter__(self) -> RecordViewsPython:
        return self

    def __next__(self) -> Any:
        try:
            self._release_held()
        except BaseException:
            self._finish()
            raise
        releases = self._releases
        while True:
            if self._feed is None:
                raise StopIteration
            run = self._run
            if (
                run is None
                or self._next >= len(run[1])
                or (run[4] is not None and run[4][0] != run[5])
            ):
                try:
                    got = self._refill()
                except BaseException:
                    self._finish()
                    raise
                if not got:
                    self._finish()
                    raise StopIteration
                releases = self._releases
                continue
            view, lsns, offsets, lengths, _, _ = run
            i = self._next
            if _released(view):
                self._resume_at = lsns[i]
                self._run = None
                continue
            offset = offsets[i]
            length = lengths[i]
            if offset < 0 or length < 0 or offset + length > len(view):
                self._finish()
                raise IndexError("a record lies outside the view")
            data = view[offset : offset + length]
            record = tuple.__new__(self._record_type, (lsns[i], data))
            if self._releases != releases:  # pragma: no cover - C's guard; no collection here
                data.release()
                continue
            self._held = data
            self._next = i + 1
            return record

    def _refill(self) -> bool:
        assert self._feed is not None
        resume_at = self._resume_at
        run = self._run
        if resume_at is None and run is not None and self._next < len(run[1]):
            resume_at = run[1][self._next]
        self._resume_at = None
        self._run = None
        releases = self._releases
        got = self._feed(resume_at)
        if got is None:
            return False
        view, lsns, offsets, lengths, remote, seen = got
        if not isinstance(view, memoryview):
            raise TypeError("a feed returns (view, lsns, offsets, lengths, remote, seen) or None")
        if _released(view):
            # Released before the walk took it: ask again from the run's first record.
            first = memoryview(lsns).cast("B").cast("q")
            self._resume_at = first[0] if len(first) else None
            return True
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous or view.format != "B":
            raise TypeError("a run's view must be a 1-D memoryview of bytes")
        arrays = [memoryview(array).cast("B") for array in (lsns, offsets, lengths)]
        if len(arrays[0]) % 8 or not len(arrays[0]) == len(arrays[1]) == len(arrays[2]):
            raise ValueError("lsns, offsets and lengths differ in length")
        lsns, offsets, lengths = (array.cast("q") for array in arrays)
        counter = None if remote is None else memoryview(remote).cast("B")[:8]
        if counter is not None:
            if len(counter) < 8:
                raise ValueError("remote holds no uint64")
            counter = counter.cast("Q")
        if self._releases != releases:
            # Released while the feed ran: ask again from the run's first record.
            self._resume_at = lsns[0] if len(lsns) else None
            return True
        self._run = (view, lsns, offsets, lengths, counter, seen)
        self._next = 0
        return True

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def _finish(self) -> None:
        self._run = None
        self._feed = None

    def release_views(self) -> None:
        """Release the view yielded last and drop the run: the next record is asked again."""
        self._releases += 1
        run = self._run
        if run is not None and self._next < len(run[1]):
            self._resume_at = run[1][self._next]
        self._run = None
        self._release_held()

    def __del__(self) -> None:
        self._release_held()

    def close(self) -> None:
        """Release the view yielded last and end the iteration."""
        try:
            self._release_held()
        finally:
            self._finish()


def _released(view: memoryview) -> bool:
    """Return whether ``view`` was released (memoryview has no public flag for it)."""
    try:
        len(view)
    except ValueError:
        return True
    return False


RecordViews: type[RecordViewsPython]
if SPEEDUPS:
    from . import _speedups

    RecordViews = _speedups.RecordViews  # type: ignore[assignment]
else:
    RecordViews = RecordViewsPython
