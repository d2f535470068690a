"""Reading without copying: ``RecordBatch`` runs of frames and ``copy=False`` records.

A batch is a read-only ``memoryview`` over a run of good frames in one mapping,
with the LSNs, payload offsets and payload lengths as int64 arrays, all found by
one pass of the C frame walk (``_format.walk_frames``), CRCs checked.

Rules kept here:

- A view is valid until the reader advances, the log is truncated or it is
  closed; then it is released, and touching it raises ``ValueError``. Every
  reader registers with the log's ``Lifetime``, which releases its views before
  anything is unmapped, so a view never points at unmapped memory.
- A frame that crosses from one mapping into the next is copied (it has no
  single view) and handed out as a batch of one over the copy.
- Nothing is yielded before the ``Watch`` says the bytes were still the log's.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Generator, Iterator
from typing import overload

from ._config import RecoveryPolicy, WalConfig
from ._errors import CorruptionError, WalClosedError
from ._format import HEADER_SIZE, Record, Scan, diagnose, walk_frames
from ._lifetime import Watch
from ._reading import frame_at
from ._recordviews import RecordViews, Run
from ._store import Store

__all__ = ["RecordBatch", "read_batches", "read_views"]

# Bytes of frames one step of a ``copy=False`` walk checks before yielding.
_VIEW_STEP_BYTES = 1024 * 1024


class RecordBatch:
    """A run of records read in place: one view over their frames, and index arrays.

    ``view`` is a read-only ``memoryview`` over the frames; ``lsns``, ``offsets``
    and ``lengths`` are int64 arrays (``memoryview`` of format ``q``, which
    ``numpy.frombuffer`` wraps without copying): record ``i`` has LSN ``lsns[i]``
    and payload ``view[offsets[i] : offsets[i] + lengths[i]]``. Indexing and
    iterating give ``Record``s whose ``data`` is such a view. Everything here is
    valid until the reader advances, or the log is truncated or closed; then it is
    released and touching it raises ``ValueError``.
    """

    __slots__ = ("_items", "end", "lengths", "lsns", "offsets", "view")

    def __init__(self, view: memoryview, lsns: bytes, offsets: bytes, lengths: bytes, end: int):
        self.view = view
        self.lsns = memoryview(lsns).cast("q")
        self.offsets = memoryview(offsets).cast("q")
        self.lengths = memoryview(lengths).cast("q")
        #: The LSN just past the last record: where the next batch starts.
        self.end = end
        self._items: list[memoryview] = []

    def __len__(self) -> int:
        return len(self.lsns)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        offset = self.offsets[index]
        item = self.view[offset : offset + self.lengths[index]]
        self._items.append(item)
        return Record(self.lsns[index], item)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Record]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        if self.view.obj is None:  # pragma: no cover - only a released batch
            return "<RecordBatch released>"
        first = self.lsns[0] if len(self) else self.end
        return f"<RecordBatch {len(self)} records [{first}, {self.end}) {self.view.nbytes} bytes>"

    def release(self) -> None:
        """Release the view and every record view handed out; idempotent."""
        for item in self._items:
            item.release()
        self._items.clear()
        self.view.release()

    def _head(self, count: int) -> RecordBatch:
        """Return the first ``count`` records as a batch, releasing this one."""
        if count == 0:
            end = self.lsns[0] if len(self) else self.end
        else:
            end = self.lsns[count - 1] + HEADER_SIZE + self.lengths[count - 1]
        stop = self.offsets[count] - HEADER_SIZE if count < len(self) else len(self.view)
        head = RecordBatch(
            self.view[:stop],
            self.lsns[:count].tobytes(),
            self.offsets[:count].tobytes(),
            self.lengths[:count].tobytes(),
            end,
        )
        self.release()
        return head


class _Views:
    """The views one reader holds; the log's ``Lifetime`` releases them."""

    __slots__ = ("__weakref__", "batch")

    def __init__(self) -> None:
        self.batch: RecordBatch | None = None

    def release_views(self) -> None:
        if self.batch is not None:
            self.batch.release()
            self.batch = None


def _batch_over(
    store: Store, position: int, end: int, max_record_size: int, max_bytes: int
) -> tuple[RecordBatch | None, Scan | None]:
    """Return a batch of the good frames from ``position``, or why there is none."""
    buffer, base, piece_limit = store.piece(position)
    stop_at = min(piece_limit, end)
    with memoryview(buffer) as whole:
        run = whole[position - base : stop_at - base].toreadonly()
    try:
        lsns, offsets, lengths, stop = walk_frames(
            run, 0, len(run), position, max_record_size, -1, max_bytes
        )
    except BaseException:
        run.release()
        raise
    if stop:
        view = run[:stop]
        run.release()
        return RecordBatch(view, lsns, offsets, lengths, position + stop), None
    try:
        reason, length = diagnose(run, 0, len(run), max_record_size)
    finally:
        run.release()
    scan = Scan([], position, reason, length)
    if (reason.name.startswith("SHORT") and stop_at < end) or reason.name == "BAD_LENGTH":
        # The frame crosses into the next mapping, or is longer than max_record_size
        # (a record all the same when its CRC checks: a smaller limit at open must not
        # turn a healthy log into damage): check it whole, as a copy.
        scan = frame_at(store, position, end, max_record_size)
        if scan.stop is None:
            frame = store.read(position, scan.end - position)
            length = len(frame) - HEADER_SIZE
            return RecordBatch(
                memoryview(frame),
                array.array("q", [position]).tobytes(),
                array.array("q", [HEADER_SIZE]).tobytes(),
                array.array("q", [length]).tobytes(),
                scan.end,
            ), None
    return None, scan


def _damage(scan: Scan, store: Store) -> CorruptionError:
    assert scan.stop is not None
    reason = scan.stop.value
    if scan.stop.name == "BAD_LENGTH":
        reason = f"implausible length {scan.length}"
    elif scan.stop.name == "BAD_CRC":
        reason = f"checksum mismatch in a record of length {scan.length}"
    return CorruptionError(scan.end, reason, path=store.location)


def read_batches(
    store: Store,
    *,
    start: int,
    end: int,
    config: WalConfig,
    skipped: list[CorruptionError],
    watch: Watch,
    max_bytes: int,
) -> Generator[RecordBatch, None, None]:
    """Yield batches of the records of ``[start, end)``, each released on advance."""
    views = _Views()
    watch.lifetime.register(views)
    skip = config.recovery_policy is RecoveryPolicy.SKIP_BAD_RECORDS
    position = start
    try:
        while position < end:
            watch.check(position)
            try:
                batch, scan = _batch_over(store, position, end, config.max_record_size, max_bytes)
            except (ValueError, OSError, WalClosedError):
                watch.check(position, look=True)
                raise
            if batch is None:
                assert scan is not None
                watch.check(position)
                error = _damage(scan, store)
                if not skip:
                    raise error
                skipped.append(error)
                if not (
                    scan.stop is not None
                    and scan.stop.name == "BAD_CRC"
                    and scan.end + HEADER_SIZE + scan.length <= end
                ):
                    return
                position = scan.end + HEADER_SIZE + scan.length
                continue
            if watch.changed or batch.end > watch.high:
                watch.update()
                if batch.end > watch.high:
                    batch = batch._head(bisect.bisect_left(batch.lsns, watch.high))
                watch.check(position)
            position = batch.end
            if len(batch):
                views.batch = batch
                yield batch
                views.release_views()
    finally:
        views.release_views()


def read_views(
    store: Store,
    *,
    start: int,
    end: int,
    config: WalConfig,
    skipped: list[CorruptionError],
    watch: Watch,
) -> Iterator[Record]:
    """Yield the records of ``[start, end)`` with ``data`` a view into the mapping.

    Each view is released when the next record is asked for (or the walk ends).
    The per-record loop is ``RecordViews`` (in C where built); the runs it walks
    are the batches of ``read_batches``, read and checked by ``_ViewFeed``. A
    truncation or close releases the view and makes the loop ask the feed for
    the next record by its LSN: the watch then checks that it survived.
    """
    feed = _ViewFeed(store, start=start, end=end, config=config, skipped=skipped, watch=watch)
    records = RecordViews(feed, Record)
    watch.lifetime.register(records)
    return records


class _ViewFeed:
    """Hand ``RecordViews`` the batches of ``[start, end)``, checked by the watch."""

    __slots__ = ("_batches", "_config", "_end", "_skipped", "_store", "_watch")

    def __init__(
        self,
        store: Store,
        *,
        start: int,
        end: int,
        config: WalConfig,
        skipped: list[CorruptionError],
        watch: Watch,
    ) -> None:
        self._store = store
        self._end = end
        self._config = config
        self._skipped = skipped
        self._watch = watch
        self._batches = self._walk_from(start)

    def _walk_from(self, position: int) -> Generator[RecordBatch, None, None]:
        return read_batches(
            self._store,
            start=position,
            end=self._end,
            config=self._config,
            skipped=self._skipped,
            watch=self._watch,
            max_bytes=_VIEW_STEP_BYTES,
        )

    def __call__(self, lsn: int | None) -> Run | None:
        """Return the next batch as a run; from ``lsn`` (checked first) when given."""
        if lsn is not None:
            # A truncation or close released the views (or a writer in another
            # process moved its counter) under the walk: the record at ``lsn``
            # must have survived, and is read again from the mapping.
            self._watch.check(lsn)
            self._batches.close()
            self._batches = self._walk_from(lsn)
        batch = next(self._batches, None)
        if batch is None:
            return None
        lifetime = self._watch.lifetime
        return batch.view, batch.lsns, batch.offsets, batch.lengths, lifetime.remote, lifetime.seen
