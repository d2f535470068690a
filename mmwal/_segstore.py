"""``SegmentStore``: a log split over fixed-size segment files in one directory."""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import threading
import time
import weakref

from ._chunked import ChunkedStore
from ._errors import CorruptionError
from ._files import (
    DEFAULT_FILE_MODE,
    KeptDescriptor,
    advise_writing,
    check_file_mode,
    close_descriptors,
    close_mapping,
    create_file,
    directory_mode,
    drop_resident,
    evict_clean,
    lock_exclusively,
    open_directory,
    read_small_file,
    remove_leftover_temporaries,
    replace_file,
)
from ._filesystems import SpaceReservation
from ._format import (
    HEAD_FILE_NAME,
    RECOVERY_FILE_NAME,
    decode_head_file,
    encode_head_file,
    parse_segment_name,
    segment_name,
)
from ._segment_size import infer_segment_size
from ._syscalls import (
    DEFAULT_SYNC_METHOD,
    FlushPlan,
    Syscalls,
    check_sync_method,
    fdatasync_plan,
    mapping_address,
)

__all__ = ["SegmentStore"]

# How often a read-only open takes its view again while a live writer's
# truncation keeps changing the directory under it.
_CONSISTENT_ATTEMPTS = 100


class SegmentStore(ChunkedStore):
    """Keep a log in a directory of segment files, each exactly ``segment_size`` bytes.

    Segment ``k`` is ``{k:020d}.wal`` and holds log bytes ``[k*S, (k+1)*S)``; other
    names in the directory are ignored. A new segment is created fresh and zero
    (``posix_fallocate``), never recycled. The ``head`` file names the first LSN
    once a prefix was dropped.

    Crash cost: bytes not covered by a ``flush`` may be lost or torn; a segment
    created since the last flush may be missing after a crash (its directory entry
    is made durable by the next flush). ``drop_before`` is durable on return.
    A writable store on a copy-on-write file system makes each new segment NOCOW
    (btrfs) or refuses with ``UnsafeFileSystemError`` unless
    ``allow_copy_on_write`` accepts that a full disk may SIGBUS.

    ``precreate`` (default: segments of 1 MiB or more) keeps the next segment
    created, reserved, mapped and durable ahead of need, on a background thread,
    so a roll waits for none of it. It costs one spare segment of disk; a crash
    leaves it as a zero file past the end, which the next writable open removes.
    Every file it creates (segments, the head file and its temporary, quarantine
    files) is created with ``O_EXCL | O_NOFOLLOW`` and mode ``file_mode``
    (``0o600`` unless told otherwise; the umask applies; a directory it creates
    gets search permission where ``file_mode`` has read). Segment files are
    opened without following symlinks. A temporary of the head file or a side
    file that a crash left is removed at the next writable open.
    """

    _makes_chunks_ahead = True
    _reloads_chunks = True
    _maps_files = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_size: int | None = None,
        *,
        writable: bool = True,
        syscalls: Syscalls | None = None,
        precreate: bool | None = None,
        mapped_chunks: int | None = None,
        sync_method: str = DEFAULT_SYNC_METHOD,
        allow_copy_on_write: bool = False,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = os.fspath(directory)
        check_file_mode(file_mode)
        # ``_load`` (which may run again for a read-only view) hands it on.
        self._sync_method_asked = check_sync_method(sync_method)
        # Before anything is created: a refused open leaves no directory behind.
        self._reservation = (
            SpaceReservation(
                self.path,
                syscalls if syscalls is not None else Syscalls(),
                allow_copy_on_write=allow_copy_on_write,
            )
            if writable
            else None
        )
        created = False
        if writable and not os.path.isdir(self.path):
            os.makedirs(self.path, mode=directory_mode(file_mode), exist_ok=True)
            created = True
        directory_fd = open_directory(self.path)
        try:
            if writable:
                lock_exclusively(directory_fd, self.path)
                self._load(segment_size, syscalls, writable, precreate, mapped_chunks)
            else:
                self._load_consistently(segment_size, syscalls, mapped_chunks)
            self.file_mode = file_mode
            self._directory_fd = directory_fd
            # A store dropped without close must not keep the directory, and with it
            # the writer lock, for the life of the process, nor the segment
            # descriptor a flush kept: both are closed when the store is collected,
            # or at close, once either way.
            self._close_directory = weakref.finalize(
                self, close_descriptors, directory_fd, self._flush_descriptor
            )
            self._directory_dirty = created
        except BaseException:
            self._unmap_all()
            os.close(directory_fd)
            raise
        if created:
            # The new directory's own entry lives in its parent.
            self.syscalls.fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def _load(
        self,
        segment_size: int | None,
        syscalls: Syscalls | None,
        writable: bool,
        precreate: bool | None,
        mapped_chunks: int | None,
    ) -> None:
        """List the segments, read the head file and map the live segments."""
        names = sorted(
            (index, name)
            for name in os.listdir(self.path)
            if (index := parse_segment_name(name)) is not None
        )
        sizes = [(name, os.stat(self._file(name)).st_size) for _, name in names]
        super().__init__(
            infer_segment_size(sizes, segment_size),
            syscalls,
            writable=writable,
            precreate=precreate,
            mapped_chunks=mapped_chunks,
            sync_method=self._sync_method_asked,
        )
        self.location = self.path
        # Segments created since the last flush: the flush fsyncs them. By
        # index, not descriptor, so many new segments hold no descriptor.
        self._pending_files: set[int] = set()
        # (mapping, address, path, descriptor or -1, flush plan or None) of the
        # chunk the last flush wrote back; the descriptor is owned by
        # ``_flush_descriptor``. The plan is what ``flush_plan`` answers for it.
        self._flush_target: tuple[mmap.mmap, int, str, int, FlushPlan | None] | None = None
        self._flush_descriptor = KeptDescriptor()
        self._metadata_lock = threading.Lock()
        self._head_file_present = os.path.exists(self._file(HEAD_FILE_NAME))
        self._head_lsn = self._read_head()
        if writable:
            # Under the writer lock: a temporary here is a crash's leftover.
            remove_leftover_temporaries(
                self.syscalls, self.path, [HEAD_FILE_NAME, RECOVERY_FILE_NAME]
            )
        self._open_segments([index for index, _ in names])

    def _load_consistently(
        self, segment_size: int | None, syscalls: Syscalls | None, mapped_chunks: int | None
    ) -> None:
        """Load a read-only view that a live writer's truncation did not tear apart.

        A writer's ``truncate_before`` writes the head file, then removes segments:
        a listing taken meanwhile can name a file that is gone when it is opened,
        or a head file read before it moved can name a segment removed since. Such
        a view is taken again. Only a failure that repeats on an unchanged
        directory and head file is real: it is raised.
        """
        previous: tuple[object, ...] | None = None
        for _ in range(_CONSISTENT_ATTEMPTS):
            seen = (sorted(os.listdir(self.path)), self._read_head_bytes())
            try:
                self._load(segment_size, syscalls, False, None, mapped_chunks)
            except (FileNotFoundError, CorruptionError) as error:
                self._unmap_all()
                state = (*seen, sorted(os.listdir(self.path)), self._read_head_bytes())
                if isinstance(error, CorruptionError) and state == previous:
                    raise
                previous = state
                time.sleep(0.001)
                continue
            return
        raise CorruptionError(
            0,
            f"the segments of {self.path} kept changing while they were opened",
            path=self.path,
            hint="a writer is truncating the log very fast; open it again",
        )

    def _read_head_bytes(self) -> bytes:
        try:
            with open(self._file(HEAD_FILE_NAME), "rb") as head_file:
                return head_file.read(64)
        except FileNotFoundError:
            return b""

    # -- following a live writer (read-only stores) ---------------------------------

    def read_head(self) -> int:
        """Return the head LSN the head file names now (a live writer may move it)."""
        return self._read_head()

    def refresh(self, head: int, cut: int | None = None) -> None:
        """Read-only: take in the head ``head`` and the segments created since open.

        ``cut`` is a writer's ``truncate_after`` end: it removed the segments
        wholly past it, and may have created new ones under the same names, so
        their mappings are given up and the files mapped again.

        Mappings below the segment holding ``head`` are given up (unmapped once no
        reader holds them); segments a writer created since are mapped, and a short
        last file (wal-db's) is mapped again when it grew.
        """
        self._check_open()
        if self.writable:
            return
        size = self.chunk_size
        if cut is not None:
            first_gone = max(-(-cut // size), self._first_chunk)
            for index in range(first_gone, self._end_chunk):
                self._chunks.pop(index, None)  # dropped, not closed: see below
            self._end_chunk = min(self._end_chunk, first_gone)
        if head > self._head_lsn:
            new_first = head // size
            for index in range(self._first_chunk, min(new_first, self._end_chunk)):
                # Dropped, not closed: a reader thread may still hold it, and the
                # mapping goes when the last reference does.
                self._chunks.pop(index, None)
            self._head_lsn = head
            self._first_chunk = new_first
            self._end_chunk = max(self._end_chunk, new_first)
        last = self._chunks.get(self._end_chunk - 1)
        if last is not None and len(last) < size:
            self._end_chunk -= 1  # a short last file (wal-db's) may have grown
        while True:
            index = self._end_chunk
            try:
                fd = os.open(self.segment_path(index), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                return
            try:
                length = min(os.fstat(fd).st_size, size)
                old = self._chunks.get(index)
                if length == 0 or (old is not None and length <= len(old)):
                    if old is not None:
                        self._end_chunk = index + 1
                    return
                with self._mapping_lock:
                    # The old mapping goes with its last user; at most the store's
                    # limit of mappings stays, as for any store.
                    self._map(fd, index, length)
                    self._let_go_beyond_limit(index)
            finally:
                os.close(fd)
            self._end_chunk = index + 1
            if length < size:
                return

    @property
    def segment_size(self) -> int:
        """The size of every segment file."""
        return self.chunk_size

    @property
    def unit_size(self) -> int:
        return self.chunk_size

    def segment_path(self, index: int) -> str:
        """Return the path of segment ``index``."""
        return self._file(segment_name(index))

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _read_head(self) -> int:
        # A symlink (or anything but a plain file) under the name reads as no head
        # file: it is never followed.
        data = read_small_file(self._file(HEAD_FILE_NAME), 64)
        return 0 if data is None else decode_head_file(data)

    def _open_segments(self, indices: list[int]) -> None:
        size = self.chunk_size
        head_index = self._head_lsn // size
        for previous, index in itertools.pairwise(indices):
            if index != previous + 1:
                missing = (
                    f"segment {previous + 1} is"
                    if index == previous + 2
                    else f"segments {previous + 1}..{index - 1} are"
                )
                raise CorruptionError(
                    (previous + 1) * size,
                    f"segment numbering has a gap: {segment_name(previous)} is followed by "
                    f"{segment_name(index)}; {missing} missing",
                    path=self.path,
                    hint="nothing was changed; restore the missing segment files, or run "
                    "mmwal.repair() to set the segments after the gap aside",
                )
        if indices and indices[0] > head_index:
            head_note = (
                f"the head file names LSN {self._head_lsn}"
                if self._head_file_present
                else "there is no valid head file"
            )
            raise CorruptionError(
                self._head_lsn,
                f"the segment holding the head, {segment_name(head_index)}, is missing "
                f"({head_note}; the first segment is {segment_name(indices[0])})",
                path=self.path,
                hint="restore the missing segments or the head file, or run "
                "mmwal.repair() to start the log at the first segment present; "
                "nothing was changed",
            )
        self._stale = [index for index in indices if index < head_index]
        live = [index for index in indices if index >= head_index]
        if self._reservation is not None:
            # Truncation zeroes bytes in older segments too: every live file counts.
            for index in live[:-1]:
                self._reservation.check_existing_path(self.segment_path(index))
        # Only the last segment is mapped now; the others when they are read.
        for index in live[-1:]:
            fd = self._open_segment(index, writable=self.writable)
            try:
                length = os.fstat(fd).st_size
                if self._reservation is not None:
                    if length:
                        self._reservation.check_existing_file(fd, self.segment_path(index))
                    else:
                        self._reservation.prepare_new_file(fd, self.segment_path(index))
                if length:
                    self._map(fd, index, length)
            finally:
                os.close(fd)
        self._first_chunk = head_index
        self._end_chunk = head_index
        if live:
            # An empty last file (a crash right after creating it) maps nothing yet.
            self._end_chunk = live[-1] + (1 if live[-1] in self._chunks else 0)
        self._short_tail = (
            live[-1] if live and os.path.getsize(self.segment_path(live[-1])) < size else None
        )

    def _complete_open(self) -> None:
        if self._stale:
            # A drop_before that wrote the head file but was cut short before
            # removing every segment below it: finish it.
            for index in self._stale:
                self.syscalls.remove(self.segment_path(index))
            self._stale = []
            self.syscalls.fsync_directory(self.path)
        short_tail = self._short_tail
        if short_tail is None:
            return
        self._short_tail = None
        index = short_tail
        # The last file wal-db left short: extend it to the segment size.
        fd = self._open_segment(index, writable=True)
        try:
            length = os.fstat(fd).st_size
            self.syscalls.allocate(fd, length, self.chunk_size - length)
            self.syscalls.fsync(fd)
            old = self._chunks.pop(index, None)
            if old is not None:
                old.close()
            self._map(fd, index, self.chunk_size)
        finally:
            os.close(fd)
        self._end_chunk = index + 1

    def _open_segment(self, index: int, *, writable: bool) -> int:
        flags = os.O_RDWR if writable else os.O_RDONLY
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        return self.syscalls.open(self.segment_path(index), flags)

    def _map(self, fd: int, index: int, length: int) -> mmap.mmap:
        chunk = self.syscalls.map(fd, length, 0, writable=self.writable)
        self._chunks[index] = chunk
        return chunk

    def _load_chunk(self, index: int) -> mmap.mmap:
        fd = self._open_segment(index, writable=self.writable)
        try:
            chunk = self.syscalls.map(fd, os.fstat(fd).st_size, 0, writable=self.writable)
        finally:
            os.close(fd)
        if self.writable and index >= self._writable_from:
            advise_writing(chunk)
        return chunk

    def _unmap_all(self) -> None:
        chunks = getattr(self, "_chunks", {})
        for chunk in chunks.values():
            chunk.close()
        chunks.clear()

    def _create_segment(self, index: int) -> tuple[int, mmap.mmap]:
        """Create, reserve and map segment ``index``; return its descriptor and mapping."""
        path = self.segment_path(index)
        fd = create_file(self.syscalls, path, self.file_mode)
        try:
            if self._reservation is not None:
                self._reservation.prepare_new_file(fd, path)
            self.syscalls.allocate(fd, 0, self.chunk_size)
            chunk = self.syscalls.map(fd, self.chunk_size, 0, writable=True)
            advise_writing(chunk)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.syscalls.remove(path)
            raise
        return fd, chunk

    def _create_chunk(self, index: int) -> mmap.mmap:
        fd, chunk = self._create_segment(index)
        os.close(fd)
        self._chunks[index] = chunk
        with self._metadata_lock:
            self._pending_files.add(index)
            self._directory_dirty = True
        return chunk

    def _precreate_chunk(self, index: int) -> mmap.mmap:
        fd, chunk = self._create_segment(index)
        try:
            try:
                self.syscalls.fsync(fd)
            finally:
                os.close(fd)
            self.syscalls.fsync_directory(self.path)
        except BaseException:
            chunk.close()
            with contextlib.suppress(OSError):
                self.syscalls.remove(self.segment_path(index))
            raise
        return chunk

    def _drop_resident(self, chunk: mmap.mmap) -> None:
        drop_resident(chunk)

    def _evict_clean(self, index: int, chunk: mmap.mmap, start: int) -> None:
        try:
            fd = os.open(self.segment_path(index), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            evict_clean(chunk, fd, 0, start)
        finally:
            os.close(fd)

    def _forget_chunk(self, index: int) -> None:
        with self._metadata_lock:
            # A flush running meanwhile may have taken (fsynced) it already.
            self._pending_files.discard(index)
        with contextlib.suppress(FileNotFoundError):
            self.syscalls.remove(self.segment_path(index))
        with self._metadata_lock:
            self._directory_dirty = True

    def _before_flush(self) -> None:
        # Read without the lock first: a creation or removal that is not seen here
        # runs concurrently with this flush, which owes it nothing (``Store.flush``).
        if not self._pending_files and not self._directory_dirty:
            return
        with self._metadata_lock:
            pending, self._pending_files = self._pending_files, set()
            directory_dirty, self._directory_dirty = self._directory_dirty, False
        for index in sorted(pending):
            try:
                fd = self._open_segment(index, writable=False)
            except FileNotFoundError:
                continue  # removed again since (a rolled-back growth, a truncation)
            try:
                self.syscalls.fsync(fd)
            finally:
                os.close(fd)
        if directory_dirty:
            self.syscalls.fsync_directory(self.path)

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        # The local reference keeps the mapping alive while msync runs on it.
        chunk = self._chunks.get(index)
        if chunk is None:
            chunk = self._mapped(index)  # let go: map it again
            if chunk is None:
                return
        # Every commit flushes the same chunk: its address and path are kept, not
        # made again (a ctypes export and a formatted path cost microseconds). The
        # entry holds the mapping, so the address cannot outlive it; a new mapping
        # of the chunk is a new object and takes a new entry.
        target = self._flush_target
        if target is None or target[0] is not chunk:
            # fdatasync needs a descriptor: the one of the chunk flushed last is
            # kept (one, whatever the log's length), the previous one closed.
            fd = -1
            if self.sync_method == "fdatasync":
                fd = self._open_segment(index, writable=False)
            self._flush_target = None
            self._flush_descriptor.replace(fd)
            plan = fdatasync_plan(self.syscalls, fd)
            target = (chunk, mapping_address(chunk), self.segment_path(index), fd, plan)
            self._flush_target = target
        if target[3] >= 0:
            self.syscalls.sync_file_data(target[3], target[1] + start, length, target[2])
        else:
            self.syscalls.sync_mapping(target[1] + start, length, None, target[2])

    def flush_plan(self, start: int, end: int) -> FlushPlan | None:
        # The one-chunk flush of ``flush`` with nothing owed before it (a new
        # segment's or the directory's fsync) and the chunk's target kept: every
        # commit's. Read without the lock, as ``_before_flush`` does.
        changes = self._plan_changes
        target = self._flush_target
        if target is None or self._closed or self._pending_files or self._directory_dirty:
            return None
        chunk = target[0]
        size = self.chunk_size
        head = self._head_lsn
        start = max(start, head)
        base = start - start % size
        if not start < end <= base + len(chunk) or self._chunks.get(start // size) is not chunk:
            return None
        if not self._release_idle(end):
            return None  # ``release(end)`` has work: the log calls ``flush`` and ``release``
        plan = target[4]
        if plan is not None:
            # The same answer holds for every range in the chunk below the end
            # ``release`` is idle for, until a change is counted.
            high = min(base + len(chunk), self._release_quiet_below - 1)
            self._publish_plan(changes, max(base, head), high, plan)
        return plan

    def _forget_flush_target(self) -> None:
        self._flush_target = None
        self._flush_descriptor.replace(-1)

    def _release_chunk(self, index: int) -> bool:
        # The caller unmaps the chunk once this returns True.
        self.syscalls.remove(self.segment_path(index))
        with self._metadata_lock:
            self._directory_dirty = True
        return True

    def _after_release(self) -> None:
        self._before_flush()

    def drop_before(self, offset: int) -> int:
        self._check_open()
        self._ensure_open_completed()
        if offset <= self._head_lsn:
            return self._head_lsn
        self._forget_plan()
        if offset >= self.capacity:
            # Keep a segment file holding the head, so the directory still shows
            # the segment size once every older segment is gone.
            self.ensure_capacity(offset + 1)
        replace_file(
            self.syscalls, self.path, HEAD_FILE_NAME, encode_head_file(offset), self.file_mode
        )
        self._head_file_present = True
        # The head file is durable: from here a crash leaves a log starting at
        # ``offset`` whatever happens to the segments below it.
        self._head_lsn = offset
        new_first = offset // self.chunk_size
        kept = self._flush_target
        for index in range(self._first_chunk, min(new_first, self._end_chunk)):
            chunk = self._chunks.pop(index, None)
            if chunk is not None:
                close_mapping(chunk)
            path = self.segment_path(index)
            if kept is not None and kept[2] == path:
                # The descriptor kept for fdatasync would hold the removed
                # segment's space until a flush of another one. No flush runs
                # meanwhile: the log serialises this against everything else.
                self._forget_flush_target()
            self.syscalls.remove(path)
        self._first_chunk = new_first
        self._end_chunk = max(self._end_chunk, new_first)
        self.syscalls.fsync_directory(self.path)
        return offset

    def _side_path(self, name: str) -> str | None:
        # Neither a segment name nor ``head``: wal-db ignores it.
        return self._file(name)

    def _quarantine_base(self, offset: int) -> str | None:
        # Not a segment name, so wal-db and mmwal both ignore it.
        return self._file(f"quarantine-{offset:020d}")

    def _close_resources(self) -> None:
        self._forget_flush_target()
        self._close_directory()
