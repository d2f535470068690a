"""``Wal``: the public log, a facade over its parts.

The log knows records and LSNs; how bytes are mapped is the store's business.
Each part states the rules it keeps at its top: ``_reservations`` (the end, the
space appends reserve, copies in flight, the written watermark), ``_commit``
(the durable end, group commit, fail-stop), ``_truncation``, ``_closing``,
``_opening``, and for reading ``_iteration`` and ``_follow``.

Rules this module keeps:

- On a writer's handle the append fast path (``_appending``, in C
  ``_appendpath.c``) is the one place outside ``Reservations`` that moves the end:
  under the reservation lock, and only while the frame ends at or below
  ``fast_limit``; every other append takes ``Reservations.place``.
- ``_reserve`` is the reservation lock itself; reading takes it to read the
  written watermark (``_written_lsn``) and never looks past it.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from ._appending import append_record, append_records, as_bytes, fast_appender
from ._batches import RecordBatch, read_batches, read_views
from ._closing import close
from ._commit import GroupCommit
from ._config import RecoveryPolicy, WalConfig
from ._errors import CorruptionError, WalClosedError
from ._files import DEFAULT_FILE_MODE
from ._filestore import FileStore
from ._follow import follow, refresh, start_following
from ._format import HEADER_SIZE, Record
from ._iteration import WalIterator, batches_before
from ._lifetime import Lifetime, Watch
from ._opening import explain_permission, open_segmented
from ._positions import RecordStarts
from ._reading import read_records
from ._recovery import recover
from ._recovery_point import PointKeeper
from ._reservations import Reservations
from ._store import Buffer, Store
from ._truncation import truncate_after, truncate_before
from ._typed import TypedWal

if TYPE_CHECKING:
    from ._archive import Archive
    from ._archiver import Archiver
    from .codecs import Codec

__all__ = ["Wal", "WalStats"]


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WalStats:
    """Counters of one open log, since it was opened."""

    appends: int
    bytes_appended: int
    syncs_requested: int
    flushes: int
    flush_seconds: float
    segments_created: int


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
        self._lifetime = Lifetime()
        # The first close's outcome, for a close that comes later (see ``_closing``).
        self._close_done = threading.Event()
        self._close_error: BaseException | None = None
        self._record_starts = RecordStarts()
        try:
            self.recovery = recover(store, self._config)
        except BaseException:
            store.close()
            raise
        end = self.recovery.end
        # Recovery made the range it scanned durable; a point found agrees.
        point = self.recovery.recovery_point
        scanned_from = self.recovery.head if point is None else point
        self._points = PointKeeper(store, self._max_record_size, (scanned_from, end))
        if point is not None:
            self._points.adopt(point)
        self._end_at_open = end
        self._units_at_open = store.units_created
        self._reservations = Reservations(store, end)
        # The reservation lock under the name reading uses for it (the same object).
        self._reserve = self._reservations.lock
        self._group_commit = GroupCommit(store, self._reservations, self._points, end)
        appender = fast_appender(self._reservations, self._group_commit, self._max_record_size)
        cls = type(self)
        if appender is not None and (cls.append, cls.append_many) == (Wal.append, Wal.append_many):
            # The C append path, called with no Python frame: these instance
            # attributes shadow the methods below, which are its reference (a
            # subclass that overrides either keeps its own).
            self.__dict__["append"] = appender.append
            self.__dict__["append_many"] = appender.append_many
            if cls.append_and_sync is Wal.append_and_sync:
                self.__dict__["append_and_sync"] = appender.append_and_sync
        #: The background archiver when opened with ``archive=`` (see ``_archiver``).
        self._archiver: Archiver | None = None
        self._poll = start_following(self, end)

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
                sync_method=(config or WalConfig()).sync_method,
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
        return open_segmented(
            cls,
            directory,
            segment_size,
            config,
            readonly=readonly,
            archive=archive,
            file_mode=file_mode,
        )

    @classmethod
    def with_store(cls, store: Store, config: WalConfig | None = None) -> Wal:
        """Open a log over any ``Store``; the log owns it and closes it."""
        if not isinstance(store, Store):
            raise TypeError(f"store must be a mmwal Store, not {type(store).__name__}")
        return cls(store, config)

    # -- appending ----------------------------------------------------------------

    def append(self, data: Buffer) -> int:
        """Append one record; return its LSN.

        Crash cost: the record is in the page cache when this returns; a process
        crash keeps it, a machine crash before the next ``sync`` may lose it.
        """
        return append_record(self._reservations, self._group_commit, self._max_record_size, data)

    def append_many(self, records: Iterable[Buffer]) -> list[int]:
        """Append records in order, all or none; return their LSNs.

        The bytes on disk are those of repeated ``append``. Every record is checked
        before anything is written: one bad item rejects the whole batch. Crash
        cost: as ``append``; a crash may keep a prefix of the batch.
        """
        return append_records(
            self._reservations, self._group_commit, self._max_record_size, records
        )

    def append_and_sync(self, data: Buffer) -> int:
        """Append one record and make it durable; return its LSN.

        Crash cost: none once it returns; concurrent callers share flushes. It
        raises only when the record is not known durable: a ``close`` that flushed
        it meanwhile does not make it raise.
        """
        payload = data if type(data) is bytes else as_bytes(data)
        lsn = self.append(payload)
        self._group_commit.sync_to(lsn + HEADER_SIZE + len(payload))
        return lsn

    # -- durability ---------------------------------------------------------------

    def sync(self) -> None:
        """Make every record appended before this call durable (group commit).

        Concurrent calls coalesce: one thread flushes, the others wait for it and
        return without flushing again when it covered them. Crash cost: none for
        records appended before the call, once it returns. Raises
        ``WalBrokenError`` if a flush fails; the log then refuses further writes.
        On a log already broken or closed it raises at once, with nothing to flush.
        """
        group = self._group_commit
        # Fail-stop: once broken, every later sync raises, even one with nothing
        # left to flush; a closed log refuses as well.
        if group.broken is not None:
            group.raise_broken()
        self._check_open()
        group.sync_to(self._reservations.next_lsn)

    def _written_lsn(self) -> int:
        """Return the contiguous-written watermark; call with ``_reserve`` held."""
        return self._reservations.written_lsn()

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
            self._check_record_start(start, end, walk=True)
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
            next_lsn = self._reservations.next_lsn
        self._check_lsn(lsn, next_lsn)
        if lsn >= end:
            return self._walk(end, end)
        self._check_record_start(lsn, end, end_allowed=True, walk=True)
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
            self._check_record_start(start, end, walk=True)
        batches = read_batches(
            self._store,
            start=min(start, end),
            end=end,
            config=self._config,
            skipped=[],
            watch=Watch(self._lifetime),
            max_bytes=max_bytes,
        )
        return batches if stop is None else batches_before(batches, stop)

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
                self._check_record_start(start, end, walk=True)
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
            return self._reservations.next_lsn
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

    def _check_lsn(self, lsn: int, end: int, *, end_allowed: bool = True) -> None:
        """Refuse an LSN that is no int, below the head or past ``end``.

        The same rules for every method that takes one (``RecordStarts.check_bounds``).
        """
        self._record_starts.check_bounds(
            self._store, lsn, end, end_allowed=end_allowed, max_record_size=self._max_record_size
        )

    def _check_record_start(
        self, lsn: int, end: int, *, end_allowed: bool = True, walk: bool = False
    ) -> int:
        """Return the end of the intact record at ``lsn`` (``end`` itself if allowed).

        Raises ``InvalidLSNError`` when no record starts at ``lsn`` (with the nearest
        that do), or it lies below the head or past ``end``, and ``CorruptionError``
        when the record there is damaged, unless ``walk`` (a read starting there)
        and the policy steps over it (``SKIP_BAD_RECORDS``).
        """
        self._check_lsn(lsn, end, end_allowed=end_allowed)
        return self._record_starts.check(
            self._store,
            lsn,
            end=end,
            end_allowed=end_allowed,
            max_record_size=self._max_record_size,
            damaged_allowed=walk
            and self._config.recovery_policy is RecoveryPolicy.SKIP_BAD_RECORDS,
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
        truncate_after(self, lsn)

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
        return truncate_before(self, lsn)

    def typed(self, codec: Codec[_T]) -> TypedWal[_T]:
        """Return a view of this log that appends and yields values through ``codec``."""
        return TypedWal(self, codec)

    # -- state ----------------------------------------------------------------------

    @property
    def next_lsn(self) -> int:
        """The LSN the next appended record will get: the end of the log."""
        return self._reservations.next_lsn

    @property
    def head_lsn(self) -> int:
        """The LSN of the first record still in the log."""
        return self._store.head_lsn

    @property
    def durable_lsn(self) -> int:
        """The end of what the last completed flush covered (everything, after a reopen)."""
        return self._group_commit.durable_lsn

    @property
    def is_empty(self) -> bool:
        """Whether the log holds no record."""
        return self._reservations.next_lsn == self._store.head_lsn

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self._group_commit.closed

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
        reservations, group = self._reservations, self._group_commit
        with reservations.lock, group.lock:
            return WalStats(
                appends=reservations.appends,
                # Payload bytes are the frame bytes ever reserved less their headers.
                bytes_appended=reservations.next_lsn
                - self._end_at_open
                + reservations.bytes_dropped
                - HEADER_SIZE * reservations.appends,
                syncs_requested=group.syncs_requested,
                flushes=group.flushes,
                flush_seconds=group.flush_seconds,
                segments_created=self._store.units_created - self._units_at_open,
            )

    def _check_open(self) -> None:
        if self._group_commit.closed:
            raise WalClosedError()

    def _check_writable(self) -> None:
        self._group_commit.check_writable()

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Sync (unless the log is broken), record the recovery point, unmap, unlock; idempotent.

        Crash cost: none for records appended before the call, once it returns.
        If the final flush fails, the files are still released and
        ``WalBrokenError`` is raised. On a log that was already broken, close
        releases everything without a flush and does not raise: the call that met
        the failure reported it. A close that finds another close running waits
        for it and shares its outcome. A log dropped without ``close`` syncs
        nothing: once collected it lets go of its files and the writer lock, and
        what it appended since its last sync is lost in a machine crash (a process
        crash keeps it, in the page cache).
        """
        close(self)

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
        group = self._group_commit
        state = "closed" if group.closed else "broken" if group.broken else "open"
        return (
            f"<Wal {self._store.location} {state} head={self.head_lsn} "
            f"next={self.next_lsn} durable={group.durable_lsn}>"
        )
