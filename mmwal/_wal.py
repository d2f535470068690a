"""``Wal``: reservation of LSNs, framing into a store, group commit, recovery, truncation.

The log knows records and LSNs; how bytes are mapped is the store's business.

Rules this module keeps:

- LSNs are reserved under ``_reserve`` (one short critical section); a frame is
  built before it and, when large, copied after it.
- ``_written_lsn()`` (the contiguous-written watermark) never passes a byte that
  is not copied yet; iteration, ``sync`` and ``durable_lsn`` never look past it.
- ``_durable_lsn`` only moves after a flush that covered it returned without error.
- A failed flush breaks the log for good (fail-stop): every later append and sync
  raises ``WalBrokenError``. No flush is retried.
- Truncation and close run with no flush in progress and no copy in flight.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from ._batches import RecordBatch, read_batches, read_views
from ._config import WalConfig
from ._errors import (
    CorruptionError,
    RecordTooLargeError,
    WalBrokenError,
    WalClosedError,
    WalReadOnlyError,
)
from ._files import DEFAULT_FILE_MODE
from ._filestore import FileStore
from ._follow import PollState, follow, refresh
from ._format import HEADER_SIZE, Record, encode_frame, encode_frames
from ._lifetime import UNBOUNDED, Lifetime, Watch
from ._memstore import MemStore
from ._opening import check_segment_size, check_single_file_path, explain_permission
from ._positions import RecordStarts
from ._published import EndsPublisher, ends_path
from ._reading import read_records
from ._recovery import recover
from ._recovery_point import PointKeeper
from ._segstore import SegmentStore
from ._store import Buffer, Store
from ._typed import TypedWal

if TYPE_CHECKING:
    from ._archive import Archive
    from ._archiver import Archiver
    from .codecs import Codec

__all__ = ["Wal", "WalIterator", "WalStats"]


_T = TypeVar("_T")

# Frames up to this size are copied while the reservation lock is held: for them
# a second lock round trip to publish completion costs more than the copy.
_INLINE_COPY_LIMIT = 64 * 1024

# How often a read-only open of a segmented log starts again when a live writer's
# truncation removed a segment under it.
_READ_ONLY_OPEN_ATTEMPTS = 100

# How often a thread that finds the reservation lock taken yields before it
# blocks on it (see ``Wal._acquire_contended``).
_SPINS_BEFORE_BLOCKING = 64


@contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release an already acquired ``lock`` when the block ends."""
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True, slots=True)
class WalStats:
    """Counters of one open log, since it was opened."""

    appends: int
    bytes_appended: int
    syncs_requested: int
    flushes: int
    flush_seconds: float
    segments_created: int


class WalIterator:
    """An iterator over records that also reports the damage it stepped over.

    ``skipped`` lists a ``CorruptionError`` for each damaged record passed over
    under ``RecoveryPolicy.SKIP_BAD_RECORDS``. For speed, ``iter()`` of it returns
    the underlying generator, so ``for`` loops run without a Python-level step.
    """

    __slots__ = ("_records", "_wal", "skipped")

    def __init__(self, wal: Wal, records: Iterator[Record], skipped: list[CorruptionError]):
        self._wal = wal
        self._records = records
        self.skipped = skipped

    def __iter__(self) -> Iterator[Record]:
        return self._records

    def __next__(self) -> Record:
        self._wal._check_open()
        return next(self._records)


def _batches_before(batches: Iterator[RecordBatch], stop: int) -> Iterator[RecordBatch]:
    """Yield the batches of records before ``stop``, the last one cut short."""
    for batch in batches:
        if batch.end <= stop:
            yield batch
            continue
        kept = bisect.bisect_left(batch.lsns, stop)
        if kept:
            yield batch._head(kept)
        return


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | mmap.mmap):
        return bytes(data)
    if isinstance(data, memoryview):
        return data.tobytes()
    raise TypeError(
        f"a record must be bytes, bytearray, memoryview or mmap, not {type(data).__name__}"
        + (" (hint: encode text first, e.g. text.encode())" if isinstance(data, str) else "")
    )


class Wal:
    """A write-ahead log: append records, make them durable, read them back.

    Open one with ``Wal.open`` (single file), ``Wal.open_segmented`` (a directory of
    segments) or ``Wal.with_store``. Opening runs recovery from the recovery point
    (how far the log was known durable; the head if there is none): the log ends
    at the first frame past it that fails its check, and everything after that is
    zeroed, durably, before the open returns. Damage below the point is never cut
    away (see ``RecoveryPolicy``).

    Durability: ``append`` puts a record in the mapping (the page cache); a process
    crash does not lose it, a machine crash before the next ``sync`` may.
    ``sync`` returns once every record appended before it is on stable storage.
    All methods are safe to call from many threads.
    """

    def __init__(self, store: Store, config: WalConfig | None = None) -> None:
        """Open a log over ``store`` (prefer the ``open*`` constructors); runs recovery."""
        self._store = store
        self._config = config if config is not None else WalConfig()
        self._max_record_size = self._config.max_record_size
        # A bare lock, not a Condition: the append path takes it directly, in C.
        self._reserve = threading.Lock()
        self._copies_done = threading.Condition(self._reserve)
        self._commit = threading.Condition(threading.Lock())
        self._closed = False
        self._closing = False
        self._flushing = False
        # Fail-stop state: the error that broke the log and what it interrupted.
        # Set only by ``_break_locked``, under both locks, so no append slips past.
        self._broken: BaseException | None = None
        self._broken_by = ""
        self._in_flight: dict[int, int] = {}
        # The LSN of a copy that failed: the watermark never passes it.
        self._hole: int | None = None
        self._close_done = threading.Event()
        self._lifetime = Lifetime()
        self._close_error: BaseException | None = None
        self._appends = 0
        self._bytes_dropped = 0
        self._syncs_requested = 0
        # Threads inside sync right now (under ``_commit``): the leader gives way
        # to the others before it flushes only when there are others.
        self._sync_callers = 0
        self._flushes = 0
        self._flush_seconds = 0.0
        self._record_starts = RecordStarts()
        try:
            self.recovery = recover(store, self._config)
        except BaseException:
            store.close()
            raise
        end = self.recovery.end
        self._next_lsn = self._durable_lsn = end
        # Recovery made the range it scanned durable; a point found agrees.
        point = self.recovery.recovery_point
        scanned_from = self.recovery.head if point is None else point
        self._points = PointKeeper(store, self._max_record_size, (scanned_from, end))
        if point is not None:
            self._points.adopt(point)
        self._end_at_open = end
        self._units_at_open = store.units_created
        # The append fast path copies a frame straight into the store's piece that
        # holds the end, while the frame fits below ``_fast_limit``: the end of that
        # piece while the log accepts appends, 0 when it must take the slow path
        # (closing, broken, no piece yet, just truncated).
        self._piece: Buffer = b""
        self._piece_base = 0
        self._fast_limit = 0
        #: The background archiver when opened with ``archive=`` (see ``_archiver``).
        self._archiver: Archiver | None = None
        self._start_following(end)

    def _start_following(self, end: int) -> None:
        """Publish the ends for followers (a writer), or find the writer's (a reader)."""
        store = self._store
        # Followers on this handle wait on ``_arrivals``; appends, flushes,
        # truncations and close notify it only while one is waiting.
        self._arrivals = threading.Condition(threading.Lock())
        self._followers_waiting = 0
        self._publisher: EndsPublisher | None = None
        self._poll: PollState | None = None
        path = ends_path(store)
        if not store.writable:
            self._poll = PollState(self)
            counter = self._poll.reader.counter
            self._lifetime.remote = counter
            self._lifetime.seen = counter[0] if counter is not None else 0
            self._lifetime.poll = self.refresh
            # A live writer's unsynced records are in the page cache, so recovery
            # found them: the writer's published durable end is the truth.
            ends = self._poll.reader.read()
            if ends is not None:
                self._durable_lsn = max(min(ends.durable, end), store.head_lsn)
        elif path is not None:
            self._publisher = EndsPublisher.create(path)
            self._publish(end)

    # -- constructors -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: WalConfig | None = None,
        *,
        readonly: bool = False,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> Wal:
        """Open or create the single-file log at ``path`` (locks it for this writer).

        ``readonly=True`` opens an existing log without the lock and changes
        nothing on disk: recovery only finds the end, appends are refused. A
        writable open on a copy-on-write file system where preallocation cannot
        reserve space raises ``UnsafeFileSystemError`` (see ``WalConfig``).
        ``file_mode`` is the mode of files the log creates (default ``0o600``).
        """
        location = os.fspath(path)
        with explain_permission(location, writable=not readonly):
            store = FileStore(
                location,
                writable=not readonly,
                allow_copy_on_write=config is not None and config.allow_copy_on_write,
                file_mode=file_mode,
            )
        return cls(store, config)

    @classmethod
    def open_segmented(
        cls,
        directory: str | os.PathLike[str],
        segment_size: int | None = None,
        config: WalConfig | None = None,
        *,
        readonly: bool = False,
        archive: Archive | None = None,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> Wal:
        """Open or create the segmented log in ``directory``.

        ``segment_size=None`` infers the size from the files there (64 MiB for a new
        log); a size that contradicts them is a ``ValueError`` naming both, and so
        is one the file system can never hold; a new log whose first segment
        exceeds the free space is ``OSError(ENOSPC)`` here, not at the first append.
        ``readonly=True`` changes nothing on disk, and copy-on-write file systems
        are refused, as for ``open``; ``file_mode`` as for ``open``. With
        ``archive`` sealed segments are pushed to it in the background, and
        ``truncate_before`` pushes what it would delete first (see ``mmwal.Archive``).
        """
        location = os.fspath(directory)
        check_single_file_path(location)
        check_segment_size(location, segment_size, writable=not readonly)
        for attempt in itertools.count(1):
            with explain_permission(location, writable=not readonly):
                store = SegmentStore(
                    location,
                    segment_size,
                    writable=not readonly,
                    allow_copy_on_write=config is not None and config.allow_copy_on_write,
                    file_mode=file_mode,
                )
            try:
                wal = cls(store, config)
            except FileNotFoundError:
                # A live writer's truncate_before removed a segment this read-only
                # open was about to read (segments are mapped when first read):
                # take the view again, as SegmentStore does for its listing.
                if not readonly or attempt == _READ_ONLY_OPEN_ATTEMPTS:
                    raise
                continue
            break
        if archive is not None:
            from ._archiver import Archiver  # noqa: PLC0415 - imports this module

            try:
                wal._archiver = Archiver(wal, archive)
            except BaseException:
                wal.close()
                raise
        return wal

    @classmethod
    def with_store(cls, store: Store, config: WalConfig | None = None) -> Wal:
        """Open a log over any ``Store``; the log owns it and closes it."""
        if not isinstance(store, Store):
            raise TypeError(f"store must be a mmwal Store, not {type(store).__name__}")
        return cls(store, config)

    # -- recovery -----------------------------------------------------------------

    # -- appending ----------------------------------------------------------------

    def append(self, data: Buffer) -> int:
        """Append one record; return its LSN.

        Crash cost: the record is in the page cache when this returns; a process
        crash keeps it, a machine crash before the next ``sync`` may lose it.
        """
        payload = data if type(data) is bytes else _as_bytes(data)
        length = len(payload)
        if length > self._max_record_size:
            raise RecordTooLargeError(length, self._max_record_size)
        frame = encode_frame(payload)
        if length < _INLINE_COPY_LIMIT:
            reserve = self._reserve
            if not reserve.acquire(False):
                self._acquire_contended()
            try:
                lsn = self._next_lsn
                end = lsn + length + HEADER_SIZE
                if end <= self._fast_limit:
                    base = self._piece_base
                    self._piece[lsn - base : end - base] = frame  # type: ignore[index]
                    self._next_lsn = end
                    self._appends += 1
                    if self._followers_waiting:
                        self._wake_followers()
                    return lsn
            finally:
                reserve.release()
        return self._place(frame, 1)

    def _acquire_contended(self) -> None:
        """Take ``_reserve`` when another thread holds it, without starting a convoy.

        A thread that blocks on the lock gives up the GIL; when the holder lets the
        lock go, the blocked thread owns it but must wait for the GIL, which the
        holder, running on, needs for its next append, and blocks in turn: from
        then on every append costs two context switches (measured: appends from 4
        threads fell to a fifth of one thread's rate). Yielding instead, a few
        times, hands the GIL to a holder that is waiting for it; only a holder
        that keeps the lock long (growing the log) makes the waiters block.
        """
        reserve = self._reserve
        for _ in range(_SPINS_BEFORE_BLOCKING):
            os.sched_yield()
            if reserve.acquire(False):
                return
        reserve.acquire()

    def append_many(self, records: Iterable[Buffer]) -> list[int]:
        """Append records in order, all or none; return their LSNs.

        The bytes on disk are those of repeated ``append``. Every record is checked
        before anything is written: one bad item rejects the whole batch. Crash
        cost: as ``append``; a crash may keep a prefix of the batch.
        """
        if isinstance(records, bytes | bytearray | memoryview | mmap.mmap | str):
            raise TypeError("append_many takes an iterable of records, not one record")
        payloads = [_as_bytes(record) for record in records]
        limit = self._max_record_size
        offsets: list[int] = []
        position = 0
        for payload in payloads:
            if len(payload) > limit:
                raise RecordTooLargeError(len(payload), limit)
            offsets.append(position)
            position += HEADER_SIZE + len(payload)
        if not payloads:
            self._check_writable()
            return []
        first = self._place(encode_frames(payloads), len(payloads))
        return [first + offset for offset in offsets]

    def append_and_sync(self, data: Buffer) -> int:
        """Append one record and make it durable; return its LSN.

        Crash cost: none once it returns; concurrent callers share flushes. It
        raises only when the record is not known durable: a ``close`` that flushed
        it meanwhile does not make it raise.
        """
        payload = data if type(data) is bytes else _as_bytes(data)
        lsn = self.append(payload)
        self._sync_to(lsn + HEADER_SIZE + len(payload))
        return lsn

    def _place(self, frame: bytes, count: int) -> int:
        """Reserve room for ``frame``, copy it in, publish it; return its LSN."""
        size = len(frame)
        reserve = self._reserve
        if not reserve.acquire(False):
            self._acquire_contended()
        with _held(reserve):
            self._check_writable()
            lsn = self._next_lsn
            end = lsn + size
            store = self._store
            if end > store.capacity:
                # On OSError nothing was reserved: the log is unchanged and usable.
                store.ensure_capacity(end)
            if size <= _INLINE_COPY_LIMIT:
                try:
                    store.write(lsn, frame)
                except BaseException as error:
                    # Nothing was reserved yet, so no hole; but the mapping may hold
                    # part of the frame past the end, which only recovery clears.
                    self._break_locked(error, "a copy into the log")
                    raise
            else:
                self._in_flight[lsn] = end
            self._appends += count
            self._next_lsn = end
            if end < store.capacity:
                self._piece, self._piece_base, self._fast_limit = store.piece(end)
            else:
                self._fast_limit = 0
            if size <= _INLINE_COPY_LIMIT:
                if self._followers_waiting:
                    self._wake_followers()
                return lsn
        try:
            store.write(lsn, frame)
        except BaseException as error:
            with reserve:
                self._hole = lsn if self._hole is None else min(self._hole, lsn)
                del self._in_flight[lsn]
                self._break_locked(error, "a copy into the log")
                self._copies_done.notify_all()
            raise
        with reserve:
            del self._in_flight[lsn]
            self._copies_done.notify_all()
            if self._followers_waiting:
                self._wake_followers()
        return lsn

    def _written_lsn(self) -> int:
        """Return the contiguous-written watermark; call with ``_reserve`` held.

        Every byte below it is copied: the lowest copy still in flight, or a copy
        that failed, bounds it.
        """
        low = self._next_lsn if self._hole is None else self._hole
        return min(low, *self._in_flight) if self._in_flight else low

    def _break_locked(self, error: BaseException, operation: str) -> None:
        """Break the log for good; call with ``_reserve`` held.

        Keeps the rule the append fast path relies on: ``_fast_limit`` is 0 from the
        moment ``_broken`` is set, in the same critical section.
        """
        self._fast_limit = 0
        with self._commit:
            if self._broken is None:
                self._broken = error
                self._broken_by = operation
            self._commit.notify_all()

    def _raise_broken(self) -> None:
        raise WalBrokenError(self._broken_by) from self._broken

    # -- durability ---------------------------------------------------------------

    def sync(self) -> None:
        """Make every record appended before this call durable (group commit).

        Concurrent calls coalesce: one thread flushes, the others wait for it and
        return without flushing again when it covered them. Crash cost: none for
        records appended before the call, once it returns. Raises
        ``WalBrokenError`` if a flush fails; the log then refuses further writes.
        On a log already broken or closed it raises at once, with nothing to flush.
        """
        # Fail-stop: once broken, every later sync raises, even one with nothing
        # left to flush; a closed log refuses as well.
        if self._broken is not None:
            self._raise_broken()
        self._check_open()
        self._sync_to(self._next_lsn)

    def _sync_to(self, target: int) -> None:
        if self._poll is not None:
            return  # read-only: what refresh found is the writer's to flush
        commit = self._commit
        with commit:
            self._syncs_requested += 1
            self._sync_callers += 1
        try:
            self._await_durable(target)
        finally:
            with commit:
                self._sync_callers -= 1

    def _await_durable(self, target: int) -> None:
        """Return once ``target`` is durable: as a follower, or as the leader."""
        commit = self._commit
        with commit:
            while True:
                # Durable first: a commit whose record is durable never raises, even
                # when a close flushed it or a later flush failed meanwhile. Then
                # broken before closed: a waiter whose flush failed hears of the
                # failure even when a close finished meanwhile.
                if self._durable_lsn >= target:
                    return
                if self._broken is not None:
                    self._raise_broken()
                if self._closed:
                    raise WalClosedError()
                if not self._flushing:
                    self._flushing = True
                    break
                commit.wait()
        self._lead_flush(target)

    def _lead_flush(self, target: int) -> None:
        """Flush as the one leader: up to the watermark, at least up to ``target``."""
        try:
            if self._sync_callers > 1:
                # Other threads are committing too: let those a previous flush
                # just released append before this flush takes its range, so one
                # flush covers their commits as well. (Alone, a thread never
                # waits: sleep(0) costs a timer slack, tens of microseconds.)
                time.sleep(0)
            with self._reserve:
                while self._in_flight and min(self._in_flight) < target and not self._broken:
                    self._copies_done.wait()
                if self._broken is not None:
                    self._raise_broken()
                flush_to = self._written_lsn()
            start = self._durable_lsn
            began = time.perf_counter()
            self._store.flush(start, flush_to)
            elapsed = time.perf_counter() - began
            # Still the one flusher, so no truncation or close runs meanwhile.
            self._store.release(flush_to)
        except OSError as error:
            with self._reserve:
                self._break_locked(error, "a flush")
            with self._commit:
                self._flushing = False
                self._commit.notify_all()
            raise WalBrokenError("a flush") from error
        except BaseException:
            with self._commit:
                self._flushing = False
                self._commit.notify_all()
            raise
        with self._commit:
            self._durable_lsn = max(self._durable_lsn, flush_to)
            self._flushes += 1
            self._flush_seconds += elapsed
            self._publish(flush_to)
            # The waiters this flush covered return now; the leader stays the one
            # flusher (no truncation or close) while it may write a recovery point.
            self._commit.notify_all()
        try:
            self._points.flushed(start, flush_to)
        finally:
            with self._commit:
                self._flushing = False
                self._commit.notify_all()
        if self._followers_waiting:
            self._wake_followers()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the log still: no flush running, no copy in flight, no new reservation."""
        with self._commit:
            while self._flushing:
                self._commit.wait()
            self._flushing = True
        try:
            with self._reserve:
                while self._in_flight:
                    self._copies_done.wait()
                yield
        finally:
            with self._commit:
                self._flushing = False
                self._commit.notify_all()

    # -- reading ------------------------------------------------------------------

    def iter(
        self, start: int | None = None, stop: int | None = None, *, copy: bool = True
    ) -> WalIterator:
        """Iterate over records from the head (or from ``start``) to the current end.

        The end is fixed when this is called; records appended later are not seen.
        ``stop`` ends the walk before the first record at or past it. Checks every
        checksum: damage raises ``CorruptionError`` or, under
        ``SKIP_BAD_RECORDS``, is stepped over and listed in ``skipped``. A record
        removed by a truncation made after this call is never yielded: the walk
        raises ``WalTruncatedError`` where it would have read it.

        ``copy=False`` yields each ``data`` as a read-only ``memoryview`` into the
        mapping, valid until the iterator advances (or the log is truncated or
        closed): then it is released, and touching it raises ``ValueError``. A
        ``start`` follows the rules of ``iter_from``.
        """
        if start is None:
            self._check_open()
            with self._reserve:
                end = self._written_lsn()
            return self._walk(self._store.head_lsn, end, stop, copy=copy)
        if stop is None and copy:
            return self.iter_from(start)
        self._check_open()
        with self._reserve:
            end = self._written_lsn()
        if start < end:
            self._check_record_start(start, end)
        return self._walk(min(start, end), end, stop, copy=copy)

    def iter_from(self, lsn: int) -> WalIterator:
        """Iterate from the record at ``lsn`` (an O(1) seek) to the current end.

        ``lsn`` is a record start or ``next_lsn`` (then the iterator is empty). A
        caller's mistake raises ``InvalidLSNError`` (a ``ValueError``) naming the
        nearest valid LSNs and changes nothing: an ``lsn`` inside a record, below
        the head (dropped by ``truncate_before``) or past ``next_lsn``. A damaged
        record at ``lsn`` raises ``CorruptionError``. An ``lsn`` appended but still
        being copied by another thread reads as the end.
        """
        self._check_open()
        with self._reserve:
            end = self._written_lsn()
            next_lsn = self._next_lsn
        self._check_lsn(lsn, next_lsn)
        if lsn >= end:
            return self._walk(end, end)
        self._check_record_start(lsn, end, end_allowed=True)
        return self._walk(lsn, end)

    def batches(
        self, start: int | None = None, stop: int | None = None, *, max_bytes: int = 8 << 20
    ) -> Iterator[RecordBatch]:
        """Iterate over the records as ``RecordBatch``es: views and arrays, no copies.

        Each batch covers up to ``max_bytes`` of frames in one mapping, CRCs
        checked in C, and is valid until the iterator advances (or the log is
        truncated or closed); then its views are released. ``start`` and ``stop``
        as for ``iter``; the end is fixed when this is called.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._check_open()
        with self._reserve:
            end = self._written_lsn()
        if start is None:
            start = self._store.head_lsn
        elif start < end:
            self._check_record_start(start, end)
        batches = read_batches(
            self._store,
            start=min(start, end),
            end=end,
            config=self._config,
            skipped=[],
            watch=Watch(self._lifetime),
            max_bytes=max_bytes,
        )
        return batches if stop is None else _batches_before(batches, stop)

    def follow(
        self,
        start: int | None = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
        copy: bool = True,
    ) -> Iterator[Record]:
        """Yield every record from ``start`` (default: the head), then wait for more.

        Records come in order, each exactly once. The iterator returns once
        ``timeout`` seconds pass without a new record (``None``: wait until this
        handle is closed). On the writer's handle appends wake it; on a
        ``readonly=True`` handle (another process) it polls the writer's published
        ends with a backoff, across segment rolls, with no reopen.
        ``durable=True`` yields only records a ``sync`` made durable, which a
        crash cannot take back (a replica should ship only those). A follower
        whose position was removed by ``truncate_before`` or ``truncate_after``
        raises ``WalTruncatedError``. ``copy=False`` as for ``iter``.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must not be negative, got {timeout}")
        # A read-only handle first takes in what the writer did until now: the
        # follower answers only for truncations made after this call.
        self.refresh()
        if start is None:
            start = self._store.head_lsn
        else:
            with self._reserve:
                end = self._written_lsn()
            if start < end:
                self._check_record_start(start, end)
        return follow(self, start, timeout=timeout, durable=durable, copy=copy)

    def refresh(self) -> int:
        """Look at what the writer did since the last look; return the new ``next_lsn``.

        On a ``readonly=True`` handle: maps the segments the writer added, checks
        the new frames by CRC, and takes in its published durable end and its
        truncations; ``iter``, ``follow`` and ``durable_lsn`` then see them. On
        the writer's own handle it only returns ``next_lsn``.
        """
        self._check_open()
        if self._poll is None:
            return self._next_lsn
        with self._reserve:
            return refresh(self, self._poll)

    def __iter__(self) -> Iterator[Record]:
        """Iterate over every record from the head; see ``iter``."""
        return iter(self.iter())

    def _walk(
        self, start: int, end: int, stop: int | None = None, *, copy: bool = True
    ) -> WalIterator:
        skipped: list[CorruptionError] = []
        records = self._read(start, end, Watch(self._lifetime), skipped, copy=copy)
        if stop is not None:
            records = itertools.takewhile(lambda record: record[0] < stop, records)
        return WalIterator(self, records, skipped)

    def _read(
        self,
        start: int,
        end: int,
        watch: Watch,
        skipped: list[CorruptionError],
        *,
        copy: bool,
    ) -> Iterator[Record]:
        read = read_records if copy else read_views
        return read(
            self._store, start=start, end=end, config=self._config, skipped=skipped, watch=watch
        )

    # -- following ------------------------------------------------------------------

    def _publish(self, written: int) -> None:
        """Publish the ends for followers in other processes (no-op without a state file)."""
        if self._publisher is not None:
            self._publisher.publish(
                written=written, durable=self._durable_lsn, head=self._store.head_lsn
            )

    def _follow_end(self, *, durable: bool) -> int:
        """Return how far a follower may read now: the written or the durable end."""
        self._check_open()
        if self._poll is not None:
            with self._reserve:
                end = refresh(self, self._poll)
            return min(end, self._durable_lsn) if durable else end
        if durable:
            return self._durable_lsn
        with self._reserve:
            return self._written_lsn()

    def _wait_for_news(
        self, position: int, epoch: int, *, durable: bool, timeout: float | None
    ) -> None:
        """Wait until the log passes ``position``, is truncated or closed, or ``timeout``."""
        arrivals = self._arrivals
        with arrivals:
            self._followers_waiting += 1
            try:
                # Read after announcing the wait: an append this read misses sees
                # the waiter and notifies under the same lock.
                end = self._durable_lsn if durable else self._written_lsn()
                if end <= position and not self._closing and self._lifetime.epoch == epoch:
                    arrivals.wait(timeout)
            finally:
                self._followers_waiting -= 1

    def _wake_followers(self) -> None:
        with self._arrivals:
            self._arrivals.notify_all()

    def _check_lsn(self, lsn: int, end: int, *, end_allowed: bool = True) -> None:
        """Refuse an LSN that is no int, below the head or past ``end``.

        The same rules for every method that takes one (``RecordStarts.check_bounds``).
        """
        self._record_starts.check_bounds(
            self._store, lsn, end, end_allowed=end_allowed, max_record_size=self._max_record_size
        )

    def _check_record_start(self, lsn: int, end: int, *, end_allowed: bool = True) -> int:
        """Return the end of the intact record at ``lsn`` (``end`` itself if allowed).

        Raises ``InvalidLSNError`` when no record starts at ``lsn`` (with the nearest
        that do), or it lies below the head or past ``end``, and ``CorruptionError``
        when the record there is damaged.
        """
        self._check_lsn(lsn, end, end_allowed=end_allowed)
        return self._record_starts.check(
            self._store,
            lsn,
            end=end,
            end_allowed=end_allowed,
            max_record_size=self._max_record_size,
        )

    # -- truncation ---------------------------------------------------------------

    def truncate_after(self, lsn: int) -> None:
        """Keep the records up to and including the one at ``lsn``; drop the rest.

        ``lsn`` must be the start of a record of the log: one inside a record, below
        the head, at ``next_lsn`` or past it raises ``InvalidLSNError`` (a
        ``ValueError``) naming the nearest valid LSNs, and a damaged record there
        ``CorruptionError``; either way nothing changes. The records kept are
        durable and the dropped bytes zeroed, durably, before this returns; if a
        step fails, the log is broken (``WalBrokenError``).
        Crash cost: none once it returns. A crash during it leaves exactly the old
        log (as a crash just before the call would) or the new one: the records
        kept are flushed first, then the header of the first dropped record is
        zeroed and flushed (the switch: from then on the log ends at the cut), and
        only then is the rest zeroed and are later segments removed.
        """
        with self._exclusive():
            self._check_writable()
            end = self._next_lsn
            self._check_lsn(lsn, end, end_allowed=False)
            new_end = self._check_record_start(lsn, end, end_allowed=False)
            self._record_starts.forget_from(new_end)
            self._fast_limit = 0
            # Readers learn of the cut first, before the flush of what is kept and
            # before a byte changes (see _lifetime). A cut at the end removes
            # nothing: readers need not hear of it.
            if new_end < self._next_lsn:
                self._lifetime.truncated(0, new_end)
            if self._publisher is not None and new_end < self._next_lsn:
                self._publisher.cut(
                    new_end,
                    written=self._next_lsn,
                    durable=self._durable_lsn,
                    head=self._store.head_lsn,
                )
            store = self._store
            try:
                store.flush(self._durable_lsn, new_end)
            except OSError as error:
                self._break_locked(error, "the flush of truncate_after")
                raise WalBrokenError("the flush of truncate_after") from error
            # The point must not vouch for records this drops: it moves first.
            self._points.truncating(lsn, new_end, durable=True)
            try:
                if new_end < self._next_lsn:
                    switch_end = min(new_end + HEADER_SIZE, store.capacity)
                    store.write(new_end, bytes(switch_end - new_end))
                    store.flush(new_end, switch_end)
                store.discard_after(new_end)
            except OSError as error:
                # The zeroing may have reached the mapping and not the disk: what
                # the log holds is in doubt, as after any failed flush.
                self._break_locked(error, "the flush of truncate_after")
                raise WalBrokenError("the flush of truncate_after") from error
            self._bytes_dropped += self._next_lsn - new_end
            self._next_lsn = new_end
            self._durable_lsn = new_end
            self._publish(new_end)
        if self._followers_waiting:
            self._wake_followers()

    def truncate_before(self, lsn: int) -> int:
        """Drop whole segments before the one holding ``lsn``; return the new head.

        ``lsn`` must be a record start or ``next_lsn``: one inside a record or past
        ``next_lsn`` raises ``InvalidLSNError`` (a ``ValueError``) naming the nearest
        valid LSNs, a damaged record there ``CorruptionError``, and nothing changes.
        At or below the head it changes nothing and returns the head: what it would
        drop is gone already. The head file is written durably before any
        segment is deleted, and every record from ``lsn`` on is flushed before the
        head file is, so a crash at any point leaves a log that starts at the old
        head or at ``lsn``. If a step fails, the log is broken
        (``WalBrokenError``). A single file or ``MemStore`` keeps its bytes and
        returns the head unchanged. With an archive attached, the segments it would
        delete are pushed first; if that fails, it raises and deletes nothing.
        """
        if self._archiver is not None:
            # A caller's mistake is refused before anything leaves the machine.
            with self._exclusive():
                self._check_truncate_before(lsn)
            self._archiver.before_truncate(lsn)
        with self._exclusive():
            head = self._check_truncate_before(lsn)
            if lsn <= head:
                return head
            end = self._next_lsn
            self._fast_limit = 0
            try:
                # The records the new head points at must be on disk before the
                # head file names them, or a crash leaves a head on a torn record.
                start = self._durable_lsn
                self._store.flush(start, end)
                with self._commit:
                    self._durable_lsn = max(self._durable_lsn, end)
                self._points.flushed(start, end)
                if not isinstance(self._store, FileStore | MemStore):
                    # Readers learn of the cut before any mapping is closed.
                    self._lifetime.truncated(lsn, UNBOUNDED)
                    if self._publisher is not None:
                        self._publisher.publish(written=end, durable=end, head=lsn)
                        self._publisher.announce()
                head = self._store.drop_before(lsn)
                if self._publisher is not None:
                    self._publisher.announce()  # the head file is in place now
                # The point may name a record the drop removed: name the end.
                self._points.save_durable_end(end)
            except OSError as error:
                # The head file or the removals may be half durable: fail-stop.
                self._break_locked(error, "the durable steps of truncate_before")
                raise WalBrokenError("the durable steps of truncate_before") from error
            self._publish(end)
        if self._followers_waiting:
            self._wake_followers()
        return head

    def typed(self, codec: Codec[_T]) -> TypedWal[_T]:
        """Return a view of this log that appends and yields values through ``codec``."""
        return TypedWal(self, codec)

    def _check_truncate_before(self, lsn: int) -> int:
        """Refuse what ``truncate_before(lsn)`` may not do; return the head.

        Call inside ``_exclusive``.
        """
        self._check_writable()
        head = self._store.head_lsn
        if lsn > head:
            end = self._next_lsn
            self._check_lsn(lsn, end)
            self._check_record_start(lsn, end, end_allowed=True)
        return head

    # -- state ----------------------------------------------------------------------

    @property
    def next_lsn(self) -> int:
        """The LSN the next appended record will get: the end of the log."""
        return self._next_lsn

    @property
    def head_lsn(self) -> int:
        """The LSN of the first record still in the log."""
        return self._store.head_lsn

    @property
    def durable_lsn(self) -> int:
        """The end of what the last completed flush covered (everything, after a reopen)."""
        return self._durable_lsn

    @property
    def is_empty(self) -> bool:
        """Whether the log holds no record."""
        return self._next_lsn == self._store.head_lsn

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self._closed

    @property
    def config(self) -> WalConfig:
        """The options this log was opened with."""
        return self._config

    @property
    def store(self) -> Store:
        """The store holding the log's bytes."""
        return self._store

    def stats(self) -> WalStats:
        """Return the counters since open: appends, syncs, flushes, segments created."""
        with self._reserve, self._commit:
            return WalStats(
                appends=self._appends,
                # Payload bytes are the frame bytes ever reserved less their headers.
                bytes_appended=self._next_lsn
                - self._end_at_open
                + self._bytes_dropped
                - HEADER_SIZE * self._appends,
                syncs_requested=self._syncs_requested,
                flushes=self._flushes,
                flush_seconds=self._flush_seconds,
                segments_created=self._store.units_created - self._units_at_open,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise WalClosedError()

    def _check_writable(self) -> None:
        if self._closed or self._closing:
            raise WalClosedError()
        if self._broken is not None:
            self._raise_broken()
        if not self._store.writable:
            raise WalReadOnlyError(self._store.location)

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Sync (unless the log is broken), record the recovery point, unmap, unlock; idempotent.

        Crash cost: none for records appended before the call, once it returns.
        If the final flush fails, the files are still released and
        ``WalBrokenError`` is raised. On a log that was already broken, close
        releases everything without a flush and does not raise: the call that met
        the failure reported it. A close that finds another close running waits
        for it and shares its outcome.
        """
        if self._archiver is not None:
            self._archiver.stop()
        with self._reserve:
            in_progress = self._closing
            self._closing = True
            self._fast_limit = 0
        if in_progress:
            if self._close_done.is_set():
                return
            self._close_done.wait()
            if self._close_error is not None:
                raise WalBrokenError("the final flush of close") from self._close_error
            return
        try:
            if self._broken is None:
                self._sync_to(self._next_lsn)
        except BaseException as error:
            self._close_error = error
            raise
        finally:
            try:
                with self._exclusive():
                    if self._broken is None and self._store.writable:
                        self._points.save_durable_end(self._durable_lsn)
                    self._closed = True
                    self._lifetime.close()
                    if self._publisher is not None:
                        self._publish(self._durable_lsn)
                        self._publisher.close()
                    if self._poll is not None:
                        self._poll.reader.close()
                    self._store.close()
                    # The piece may be a chunk the store let go (not closed by it):
                    # its mapping holds a descriptor, and with it the writer's lock.
                    self._piece = b""
            finally:
                self._close_done.set()
                self._wake_followers()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return (
            f"<Wal {self._store.location} {state} head={self.head_lsn} "
            f"next={self._next_lsn} durable={self._durable_lsn}>"
        )
