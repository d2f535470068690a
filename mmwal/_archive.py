"""``Archive``: sealed segments off the machine, through fsspec, and back.

Rules kept here (the layout is in ``_manifest``):

- A segment is uploaded under a key of its own, checked (size and CRC-32C of
  what landed, see ``_archive_transfer``), and only then published by its
  manifest entry, written last. A crash or a network failure at any step
  leaves at most an object no entry names, which a later push removes.
- An archived segment is never overwritten: a push whose segment differs from
  the archived one raises ``ArchiveConflictError`` before anything is written.
- The archive is one contiguous run of segments; a push never leaves a gap.
- A restore is built in a sibling directory and renamed into place whole; it
  never writes into an existing log, and never returns a prefix shorter than
  asked without raising.
- fsspec is imported only when an ``Archive`` is made: the core install does
  not need it.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._archive_local import LocalLog
from ._archive_push import push_segments
from ._archive_restore import restore_segments
from ._archive_transfer import Target
from ._config import WalConfig
from ._crc import crc32c
from ._errors import ArchiveConflictError, CorruptionError, InvalidLSNError
from ._format import (
    HEADER,
    HEADER_SIZE,
    Record,
    Stop,
    decode_batch,
    diagnose,
)
from ._manifest import (
    MANIFEST_DIR,
    SEGMENTS_DIR,
    ArchivedSegment,
    decode_entry,
    encode_entry,
    entry_name,
    parse_entry_name,
    parse_object_name,
)
from ._wal import Wal

__all__ = ["Archive", "ArchivedSegment", "Progress"]

Progress = Callable[[int], object]
"""Called with the number of bytes just transferred (``tqdm.update`` fits)."""

_BATCH_RECORDS = 256
_BATCH_BYTES = 1 << 20

# One push at a time per archive within this process (a background pusher, an
# explicit push, a truncation guard): a push's clean-up removes the objects no
# entry names, which would include another push's upload not yet published.
_push_locks: dict[tuple[str, str], threading.Lock] = {}
_push_locks_guard = threading.Lock()


class _HeadMovedError(Exception):
    """A truncation moved the head past a segment before an empty archive got it."""


def _long_record(
    buffer: bytes, at: int, limit: int, base: int, max_record_size: int
) -> Record | None:
    """Return the frame at ``buffer[at]`` if it is longer than the limit, whole and checks."""
    if at + HEADER_SIZE > limit:
        return None
    crc, length = HEADER.unpack_from(buffer, at)
    end = at + HEADER_SIZE + length
    if length <= max_record_size or end > limit:
        return None
    if crc32c(memoryview(buffer)[at + 4 : end]) != crc:
        return None
    return Record(base + at, buffer[at + HEADER_SIZE : end])


def _decode(
    buffer: bytes, at: int, limit: int, base: int, max_record_size: int
) -> tuple[list[Record], int, bool]:
    """Decode a batch of the frames at ``buffer[at:limit]``; say whether more may follow.

    A frame longer than ``max_record_size`` whose CRC checks is a record, as the
    log itself reads it.
    """
    records, position = decode_batch(
        buffer,
        at,
        limit,
        base=base,
        max_record_size=max_record_size,
        max_records=_BATCH_RECORDS,
        max_bytes=_BATCH_BYTES,
    )
    if len(records) == _BATCH_RECORDS or position - (base + at) >= _BATCH_BYTES:
        return records, position, True
    long_record = _long_record(buffer, position - base, limit, base, max_record_size)
    if long_record is None:
        return records, position, False
    return [*records, long_record], position + HEADER_SIZE + len(long_record.data), True


def _at_or_after(records: list[Record], start: int) -> Iterator[Record]:
    """Yield the records at or after ``start``; one that straddles it is an LSN error."""
    for record in records:
        end = record.lsn + HEADER_SIZE + len(record.data)
        if record.lsn >= start:
            yield record
        elif end > start:
            raise InvalidLSNError(
                start, "is not a record start in the archive", before=record.lsn, after=end
            )


def _stamp(info: dict[str, Any]) -> object:
    """Return what an fsspec listing says about an object that changes when it does."""
    version = next(
        (info[key] for key in ("ETag", "mtime", "LastModified", "created") if key in info),
        None,
    )
    return (info.get("size"), str(version))


def _push_lock(filesystem: Any, root: str) -> threading.Lock:
    key = (str(filesystem.protocol), root)
    with _push_locks_guard:
        return _push_locks.setdefault(key, threading.Lock())


class Archive:
    """A place off the machine for a segmented log's sealed segments, via fsspec.

    ``url`` is an fsspec URL (``file:///backups/orders``, ``s3://bucket/prefix``,
    ``memory://name``); ``storage_options`` go to fsspec unchanged (for S3:
    ``key``, ``secret``, ``endpoint_url``, ...). Needs ``pip install 'mmwal[archive]'``
    (and ``'mmwal[s3]'`` for S3).

    Crash cost: none. A segment is visible in the archive only whole and verified;
    a push cut short at any point leaves the archive as a shorter, valid archive
    and the next push resumes. Pushes to one archive from one process take turns;
    push to an archive from one process at a time.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        """Open the archive at ``url``; nothing is contacted yet."""
        try:
            from fsspec.core import url_to_fs  # noqa: PLC0415 - an optional dependency
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "mmwal.Archive needs fsspec: pip install 'mmwal[archive]' (and 'mmwal[s3]' for S3)"
            ) from error
        filesystem, root = url_to_fs(url, **storage_options)
        self._init(filesystem, root, url)

    @classmethod
    def from_filesystem(cls, filesystem: Any, path: str) -> Archive:
        """Open the archive at ``path`` of an fsspec file system object you already have."""
        archive = cls.__new__(cls)
        archive._init(filesystem, path, filesystem.unstrip_protocol(path))
        return archive

    def _init(self, filesystem: Any, root: str, url: str) -> None:
        self._fs = filesystem
        self._target = Target(filesystem)
        self._root = root.rstrip("/")
        self.url = url
        # Segments whose local bytes were compared with the archive already, by
        # (path, index) -> (inode, mtime, size): a sealed file does not change.
        self._compared: dict[tuple[str, int], tuple[int, int, int]] = {}
        # Manifest entries read, by path: (listing stamp, entry).
        self._entries: dict[str, tuple[object, ArchivedSegment]] = {}

    def __repr__(self) -> str:
        return f"<mmwal.Archive {self.url}>"

    # -- names ------------------------------------------------------------------

    def _path(self, directory: str, name: str) -> str:
        return f"{self._root}/{directory}/{name}"

    def _segment_path(self, entry: ArchivedSegment) -> str:
        return self._path(SEGMENTS_DIR, entry.object_name)

    # -- listing ----------------------------------------------------------------

    def segments(self) -> list[ArchivedSegment]:
        """Return the archived segments in index order (only published, verified ones)."""
        directory = f"{self._root}/{MANIFEST_DIR}"
        self._fs.invalidate_cache(directory)
        try:
            listed = self._fs.ls(directory, detail=True)
        except FileNotFoundError:
            return []
        stamps = {
            info["name"]: _stamp(info)
            for info in listed
            if parse_entry_name(posixpath.basename(info["name"])) is not None
        }
        # Entries do not change once written: read only those not read before
        # (or whose size or modification stamp changed since).
        unread = [
            path for path, stamp in stamps.items() if self._entries.get(path, (None,))[0] != stamp
        ]
        if unread:
            contents = self._fs.cat(unread)
            for path in unread:
                entry = decode_entry(contents[path], f"{self.url}/{path}")
                self._entries[path] = (stamps[path], entry)
        entries = [self._entries[path][1] for path in sorted(stamps)]
        sizes = {entry.segment_size for entry in entries}
        if len(sizes) > 1:
            raise CorruptionError(
                0,
                f"the archive mixes segment sizes {sorted(sizes)}",
                path=self.url,
                hint="an archive holds one log; push each log to its own URL",
            )
        return entries

    # -- pushing ----------------------------------------------------------------

    def push(
        self,
        source: Wal | str | os.PathLike[str],
        *,
        max_record_size: int | None = None,
        progress: Progress | None = None,
    ) -> list[int]:
        """Upload every sealed segment not archived yet; return their indices in order.

        ``source`` is an open segmented ``Wal`` (its durable segments are sealed)
        or a segmented log's directory (read without taking its lock; each file is
        fsynced before it is read). A sealed segment is full and entirely covered
        by intact, durable frames. Idempotent: nothing new to push returns ``[]``.
        A segment archived with other bytes, or a log that no longer continues the
        archive, raises ``ArchiveConflictError`` with the archive unchanged; so
        does a segment that a truncation removes while the push runs, before it
        was read, if the archive holds the segment before it (an empty archive
        starts again at the new head instead).
        Crash cost: none; a push cut short resumes at the next one.
        """
        if isinstance(source, Wal):
            log = LocalLog.of_wal(source)
        else:
            log = LocalLog.of_directory(source, max_record_size or WalConfig().max_record_size)
        return self._push_log(log, progress, up_to=None)

    def _push_log(self, log: LocalLog, progress: Progress | None, up_to: int | None) -> list[int]:
        """Push the sealed segments of ``log`` (only those below index ``up_to``, if given)."""
        with _push_lock(self._fs, self._root):
            while True:
                try:
                    return self._push_locked(log, progress, up_to)
                except _HeadMovedError:
                    log = log.described_again()  # nothing archived yet: start at the new head

    def _push_locked(
        self, log: LocalLog, progress: Progress | None, up_to: int | None
    ) -> list[int]:
        entries = {entry.index: entry for entry in self.segments()}
        local = log.indices()
        next_index, first_lsn = self._resume_point(log, entries, local)
        self._prepare()
        pushed: list[int] = []

        def publish(entry: ArchivedSegment) -> None:
            manifest = self._path(MANIFEST_DIR, entry_name(entry.index))
            self._target.write_small(manifest, encode_entry(entry))
            pushed.append(entry.index)
            if progress is not None:
                progress(entry.size)

        vanished = push_segments(
            log,
            self._target,
            (next_index, first_lsn),
            up_to=up_to,
            listed=set(local),
            path_of=self._segment_path,
            publish=publish,
        )
        if vanished is not None:
            self._vanished(vanished, log, bool(entries) or bool(pushed))
        if pushed:
            self._remove_leftovers(pushed[-1])
        return pushed

    def _resume_point(
        self, log: LocalLog, entries: dict[int, ArchivedSegment], local: list[int]
    ) -> tuple[int, int]:
        """Return the index and first record start the push continues the archive at.

        Refuses (``ArchiveConflictError``) a log that is not the archive's.
        """
        if not entries:
            return log.head_lsn // log.segment_size, log.head_lsn
        archived_size = next(iter(entries.values())).segment_size
        if archived_size != log.segment_size:
            raise ArchiveConflictError(
                min(entries),
                f"the archive holds {archived_size}-byte segments, the log "
                f"{log.segment_size}-byte ones",
                self.url,
            )
        for index in local:
            if index in entries:
                self._compare(log, entries[index])
        next_index = max(entries) + 1
        if local and next_index < local[0]:
            raise ArchiveConflictError(
                next_index,
                f"the archive ends before segment {next_index}, but the log now "
                f"starts at segment {local[0]}: the segments between are gone",
                self.url,
            )
        return next_index, entries[next_index - 1].next_record_lsn

    def _vanished(self, index: int, log: LocalLog, archive_started: bool) -> None:
        """Say what a segment that a truncation removed before it was pushed means.

        If the archive holds it now (another push took it), nothing. If the
        archive is empty, the push starts again at the log's new head. Else the
        archive cannot continue from this log: ``ArchiveConflictError``.
        """
        if any(entry.index == index for entry in self.segments()):
            return
        if not archive_started:
            raise _HeadMovedError
        raise ArchiveConflictError(
            index,
            f"segment {index} was removed from the log before it was archived (a "
            f"truncation moved the head to segment {log.head_segment_now()}): the archive "
            f"ends at segment {index - 1} and this log can no longer continue it",
            self.url,
        )

    def _remove_leftovers(self, up_to: int) -> None:
        """Remove what pushes cut short left for published segments up to index ``up_to``.

        Objects no entry names (uploads never published) and, on a local
        directory, entries never renamed into place. Runs after a push that
        published something, so leftovers live until the next segment is pushed.
        """
        named = {entry.object_name for entry in self.segments()}
        for directory in (SEGMENTS_DIR, MANIFEST_DIR):
            if directory == MANIFEST_DIR and not self._target.local:
                continue  # an object store's entry is one PUT: no temporary to leave
            try:
                listed = self._fs.ls(f"{self._root}/{directory}", detail=False)
            except FileNotFoundError:
                continue
            for path in listed:
                name = posixpath.basename(path)
                if directory == SEGMENTS_DIR:
                    index = parse_object_name(name)
                    leftover = name not in named
                else:
                    index = parse_entry_name(name.split(".json.", 1)[0] + ".json")
                    leftover = name.endswith(".tmp")
                if leftover and index is not None and index <= up_to:
                    self._fs.rm_file(path)

    def _compare(self, log: LocalLog, entry: ArchivedSegment) -> None:
        """Refuse a local segment whose bytes differ from its archived copy."""
        path = log.segment_path(entry.index)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return
        key = (os.path.abspath(path), entry.index)
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        if self._compared.get(key) == stamp:
            return
        with log.opened_segment(entry.index) as segment:
            if segment is None:
                return
            found = (len(segment.data), crc32c(segment.data))
        if found != (entry.size, entry.crc32c):
            raise ArchiveConflictError(
                entry.index,
                f"the archived segment (size {entry.size}, CRC-32C {entry.crc32c:#010x}) "
                f"differs from {path} (size {found[0]}, CRC-32C {found[1]:#010x})",
                self.url,
            )
        self._compared[key] = stamp

    def _prepare(self) -> None:
        if self._target.local:
            for directory in (SEGMENTS_DIR, MANIFEST_DIR):
                self._fs.makedirs(f"{self._root}/{directory}", exist_ok=True)

    # -- reading ----------------------------------------------------------------

    def _contiguous(self) -> list[ArchivedSegment]:
        entries = self.segments()
        for previous, entry in itertools.pairwise(entries):
            if entry.index != previous.index + 1:
                raise CorruptionError(
                    entry.start_lsn,
                    f"the archive has a gap: segment {previous.index} is followed by {entry.index}",
                    path=self.url,
                    hint="the missing manifest entries were removed by hand; push the "
                    "log that holds those segments again",
                )
        return entries

    def _fetch(self, entry: ArchivedSegment) -> bytes:
        data: bytes = self._fs.cat_file(self._segment_path(entry))
        if len(data) != entry.size or crc32c(data) != entry.crc32c:
            raise CorruptionError(
                entry.start_lsn,
                f"archived segment {entry.index} does not match its manifest entry",
                path=f"{self.url}/{SEGMENTS_DIR}/{entry.object_name}",
                hint="the object was changed after it was published; push the log again "
                "to a new archive",
            )
        return data

    def iter(
        self, start: int | None = None, *, max_record_size: int | None = None
    ) -> Iterator[Record]:
        """Yield the archived records from the head (or from ``start``), CRC-checked.

        Reads the archive directly, one segment at a time, without restoring. A
        record that continues past the last archived segment is not yielded.
        A ``start`` that is not a record start raises ``InvalidLSNError``, and a
        frame that fails its check ``CorruptionError``, when reached.
        """
        limit = max_record_size or WalConfig().max_record_size
        entries = self._contiguous()
        if not entries:
            return
        head = entries[0].first_lsn
        if start is None:
            start = head
        if start < head:
            raise InvalidLSNError(start, "is below the archive's head", after=head)
        # The last segment whose first record start is at or before ``start``.
        first = max(
            (position for position, entry in enumerate(entries) if entry.first_lsn <= start),
            default=0,
        )
        yield from self._records(entries[first:], start, limit)

    def _records(
        self, entries: list[ArchivedSegment], start: int, max_record_size: int
    ) -> Iterator[Record]:
        position = entries[0].first_lsn
        buffer = b""
        base = position
        for entry in entries:
            if position >= entry.end_lsn:
                continue  # the middle of one record that spans past the archive
            data = self._fetch(entry)
            if buffer:
                buffer = buffer[position - base :] + data
            else:
                buffer = data[position - entry.start_lsn :]
            base = position
            limit = len(buffer)
            while True:
                records, position, more = _decode(
                    buffer, position - base, limit, base, max_record_size
                )
                yield from _at_or_after(records, start)
                if position - base >= limit or not more:
                    break
            if position - base < limit:
                stop, length = diagnose(buffer, position - base, limit, max_record_size)
                if stop is Stop.BAD_LENGTH and position + HEADER_SIZE + length > base + limit:
                    stop = Stop.SHORT_PAYLOAD  # a long record continuing in the next segment
                if stop not in (Stop.SHORT_HEADER, Stop.SHORT_PAYLOAD):
                    raise CorruptionError(
                        position,
                        f"archived frame fails its check ({stop.value}, length {length})",
                        path=self.url,
                    )

    # -- restoring --------------------------------------------------------------

    def restore(
        self,
        directory: str | os.PathLike[str],
        *,
        up_to_lsn: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the archived log into ``directory``; return its ``next_lsn``.

        The segment files are byte-identical to the archived ones, so mmwal and
        wal-db open them. ``up_to_lsn`` keeps only the records before it: it must
        be a record start (or the archived end), else ``InvalidLSNError``, and it
        is what this returns. ``directory`` must not exist or be empty: a restore
        never writes into an existing log (``FileExistsError``). Crash cost: none;
        the log is assembled beside ``directory`` and renamed into place whole.
        """
        entries = self._contiguous()
        if not entries:
            raise ValueError(f"the archive {self.url} holds no segment to restore")
        return restore_segments(
            entries,
            fetch=self._download,
            directory=os.fspath(directory),
            up_to_lsn=up_to_lsn,
            progress=progress,
        )

    def _download(self, entries: list[ArchivedSegment], local_paths: list[str]) -> None:
        self._fs.get([self._segment_path(entry) for entry in entries], local_paths)
