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
from collections.abc import Iterator
from typing import overload

from ._config import RecoveryPolicy, WalConfig
from ._errors import CorruptionError, WalClosedError
from ._format import HEADER_SIZE, Record, Scan, diagnose, record_views, walk_frames
from ._lifetime import UNBOUNDED, Watch
from ._reading import frame_at
from ._store import Store

__all__ = ["RecordBatch", "read_batches", "read_views"]

# Bytes of frames one step of a ``copy=False`` walk checks before yielding.
_VIEW_STEP_BYTES = 1024 * 1024

# Records (and views) a ``copy=False`` walk makes at once. Each chunk's objects
# are freed before the next chunk is made; fewer than the cyclic GC's first
# threshold (700 allocations) keeps the walk from triggering collections.
_VIEW_CHUNK = 256


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

    __slots__ = ("__weakref__", "batch", "records")

    def __init__(self) -> None:
        self.batch: RecordBatch | None = None
        # The records of the batch a ``copy=False`` walk is yielding from: each
        # one's view is released as the walk passes it, all of them here.
        self.records: list[Record] | None = None

    def release_views(self) -> None:
        if self.records is not None:
            for record in self.records:
                record.data.release()  # type: ignore[attr-defined]
            self.records = None
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
) -> Iterator[RecordBatch]:
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
    The records are made ``_VIEW_CHUNK`` at a time (``record_views``, in C); each
    is checked against the watch just before it is yielded. A truncation or close
    releases every view (so those of the records made but not yet yielded too):
    the walk then checks the next record and, when it survived, reads again from
    there. One generator, no helpers: this loop is the per-record cost.
    """
    views = _Views()
    lifetime = watch.lifetime
    lifetime.register(views)
    position = start
    try:
        while position < end:
            batches = read_batches(
                store,
                start=position,
                end=end,
                config=config,
                skipped=skipped,
                watch=watch,
                max_bytes=_VIEW_STEP_BYTES,
            )
            position = UNBOUNDED
            for batch, first in _chunks(batches):
                records = record_views(
                    batch.view, batch.lsns, batch.offsets, batch.lengths, first, first + _VIEW_CHUNK
                )
                views.records = records
                epoch = watch.epoch
                high = watch.high
                remote = lifetime.remote
                seen = lifetime.seen
                for record in records:
                    if (
                        lifetime.epoch != epoch
                        or record[0] >= high
                        or (remote is not None and remote[0] != seen)
                    ):
                        watch.check(record[0])
                        if views.records is not records:
                            break  # released under the walk: read again from this record
                        epoch = watch.epoch
                        high = watch.high
                        seen = lifetime.seen
                    yield record
                    record[1].release()  # type: ignore[attr-defined]
                else:
                    views.records = None
                    del records  # freed before the next chunk is made
                    continue
                position = record[0]
                break
    finally:
        views.release_views()


def _chunks(batches: Iterator[RecordBatch]) -> Iterator[tuple[RecordBatch, int]]:
    """Yield each batch with the index of each chunk of ``_VIEW_CHUNK`` records in it."""
    for batch in batches:
        for first in range(0, len(batch), _VIEW_CHUNK):
            yield batch, first
