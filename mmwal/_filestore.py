"""``FileStore``: a single-file log, preallocated and mapped in fixed-size windows."""

from __future__ import annotations

import mmap
import os
import threading
import weakref

from ._chunked import ChunkedStore
from ._files import (
    DEFAULT_FILE_MODE,
    advise_writing,
    check_file_mode,
    create_file,
    drop_resident,
    evict_clean,
    lock_apart,
    remove_leftover_temporaries,
)
from ._filesystems import SpaceReservation
from ._format import RECOVERY_FILE_NAME
from ._syscalls import (
    DEFAULT_SYNC_METHOD,
    FlushPlan,
    Syscalls,
    fdatasync_plan,
    mapping_address,
)

__all__ = ["DEFAULT_WINDOW_SIZE", "FileStore"]

DEFAULT_WINDOW_SIZE = 64 * 1024 * 1024


class FileStore(ChunkedStore):
    """Keep a log in one file, records back to back from offset 0, no file header.

    The file grows a window at a time (``posix_fallocate``, then a new mapping of
    just that window), so a full disk is an ``OSError`` when a window is added and
    never a SIGBUS. The zero tail past the last record is not log data; a file
    wal-db left with no zero tail is extended on a writable open.

    Crash cost: bytes not covered by a ``flush`` may be lost or torn; the file's
    creation and growth are made durable by the first ``flush`` after them.
    A writable store on a copy-on-write file system makes a new file NOCOW (btrfs)
    or refuses with ``UnsafeFileSystemError`` unless ``allow_copy_on_write``
    accepts that a full disk may SIGBUS (see ``mmwal._filesystems``).

    ``precreate`` (default: windows of 1 MiB or more) reserves and maps the next
    window ahead of need, on a background thread, so the file holds up to one
    window of zeros more than the log needs.
    A new file is created with ``O_EXCL | O_NOFOLLOW`` and mode ``file_mode``
    (``0o600`` unless told otherwise; the umask applies); an existing one keeps
    its mode.
    """

    _makes_chunks_ahead = True
    _reloads_chunks = True
    _maps_files = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        window_size: int = DEFAULT_WINDOW_SIZE,
        writable: bool = True,
        syscalls: Syscalls | None = None,
        precreate: bool | None = None,
        mapped_chunks: int | None = None,
        sync_method: str = DEFAULT_SYNC_METHOD,
        allow_copy_on_write: bool = False,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        if window_size <= 0 or window_size % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(
                f"window_size must be a positive multiple of {mmap.ALLOCATIONGRANULARITY} "
                f"(the mapping granularity), got {window_size}"
            )
        super().__init__(
            window_size,
            syscalls,
            writable=writable,
            precreate=precreate,
            mapped_chunks=mapped_chunks,
            sync_method=sync_method,
        )
        self.file_mode = check_file_mode(file_mode)
        self.path = os.fspath(path)
        self.location = self.path
        self._metadata_lock = threading.Lock()
        reservation = (
            SpaceReservation(
                os.path.dirname(os.path.abspath(self.path)),
                self.syscalls,
                allow_copy_on_write=allow_copy_on_write,
            )
            if writable
            else None
        )
        existed = True
        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            # An existing log may be reached through a symlink the user made; a
            # new one is never created through one.
            fd = self.syscalls.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | cloexec)
        except FileNotFoundError:
            if not writable:
                raise
            fd = create_file(self.syscalls, self.path, self.file_mode)
            existed = False
        lock_fd = -1
        try:
            if writable:
                lock_fd = lock_apart(self.syscalls, fd, self.path)
                # Under the writer lock: a side file's temporary is a crash's leftover.
                directory, name = os.path.split(os.path.abspath(self.path))
                remove_leftover_temporaries(
                    self.syscalls, directory, [f"{name}.{RECOVERY_FILE_NAME}"]
                )
            size = os.fstat(fd).st_size
            if reservation is not None:
                if size:
                    reservation.check_existing_file(fd, self.path)
                else:
                    reservation.prepare_new_file(fd, self.path)
            windows = -(-size // window_size)
            # Only the last window is mapped now; the others when they are read.
            for index in range(windows)[-1:]:
                offset = index * window_size
                self._map(fd, index, min(window_size, size - offset))
            self._end_chunk = windows
        except BaseException:
            self._unmap_all()
            _close_file(fd, lock_fd)
            raise
        self._fd = fd
        # ``flush_plan``'s answer when it has one: with ``fdatasync`` every flush
        # of the file is one call (``_flush_spans``).
        self._plan = (
            fdatasync_plan(self.syscalls, fd)
            if writable and self.sync_method == "fdatasync"
            else None
        )
        # A store dropped without close must not keep the file, and with it the
        # writer lock, for the life of the process: the descriptors are closed
        # when the store is collected, or at close, once either way. The lock's
        # own descriptor is never mapped, so no mapping left alive holds it.
        self._close_file = weakref.finalize(self, _close_file, fd, lock_fd)
        # The file's size and, for a new file, its directory entry are metadata a
        # later flush must make durable before it may report success.
        self._file_dirty = writable
        # The window flushed last and its address (see ``_flush_chunk``).
        self._flush_target: tuple[mmap.mmap, int] | None = None
        self._directory_dirty = writable and not existed

    def _map(self, fd: int, index: int, length: int) -> mmap.mmap:
        chunk = self.syscalls.map(fd, length, index * self.chunk_size, writable=self.writable)
        self._chunks[index] = chunk
        return chunk

    def _load_chunk(self, index: int) -> mmap.mmap:
        offset = index * self.chunk_size
        length = min(self.chunk_size, os.fstat(self._fd).st_size - offset)
        chunk = self.syscalls.map(self._fd, length, offset, writable=self.writable)
        if self.writable and index >= self._writable_from:
            advise_writing(chunk)
        return chunk

    def _unmap_all(self) -> None:
        for chunk in self._chunks.values():
            chunk.close()
        self._chunks.clear()

    def _complete_open(self) -> None:
        last = self._end_chunk - 1
        chunk = self._chunks.get(last)
        if chunk is None or len(chunk) == self.chunk_size:
            return
        # A file with no zero tail (as wal-db leaves it): extend its last window.
        self.syscalls.allocate(
            self._fd, last * self.chunk_size + len(chunk), self.chunk_size - len(chunk)
        )
        chunk.close()
        self._map(self._fd, last, self.chunk_size)
        with self._metadata_lock:
            self._file_dirty = True

    def read_head(self) -> int:
        """Return the head LSN: always 0, a single file keeps its whole prefix."""
        return 0

    def refresh(self, head: int, cut: int | None = None) -> None:
        """Read-only: map the bytes a live writer added to the file since the last look.

        A single file never loses a window, so ``head`` and ``cut`` change nothing.
        """
        del head, cut
        self._check_open()
        if self.writable:
            return
        size = os.fstat(self._fd).st_size
        window = self.chunk_size
        if size <= self.capacity:
            return
        last = self._chunks.get(self._end_chunk - 1)
        index = self._end_chunk - 1 if last is not None and len(last) < window else self._end_chunk
        while index * window < size:
            # A shorter mapping of the last window is replaced, not closed: a reader
            # thread may still hold it, and it goes with its last reference.
            self._map(self._fd, index, min(window, size - index * window))
            index += 1
        self._end_chunk = index

    def _create_chunk(self, index: int) -> mmap.mmap:
        self.syscalls.allocate(self._fd, index * self.chunk_size, self.chunk_size)
        with self._metadata_lock:
            self._file_dirty = True
        chunk = self._map(self._fd, index, self.chunk_size)
        advise_writing(chunk)
        return chunk

    def _precreate_chunk(self, index: int) -> mmap.mmap:
        # The window lies past the log's end: the file grows by zeros only, which
        # recovery reads as the end. The fsync makes the new size durable here,
        # off the flush that follows the roll.
        self.syscalls.allocate(self._fd, index * self.chunk_size, self.chunk_size)
        self.syscalls.fsync(self._fd)
        chunk = self.syscalls.map(self._fd, self.chunk_size, index * self.chunk_size, writable=True)
        advise_writing(chunk)
        return chunk

    def _drop_resident(self, chunk: mmap.mmap) -> None:
        drop_resident(chunk)

    def _evict_clean(self, index: int, chunk: mmap.mmap, start: int) -> None:
        evict_clean(chunk, self._fd, index * self.chunk_size, start)

    def _forget_chunk(self, index: int) -> None:
        # The file keeps the blocks allocated for the window; creating the window
        # again reuses them.
        del index

    def _before_flush(self) -> None:
        # Read without the lock first: a growth not seen here runs concurrently
        # with this flush, which owes it nothing (``Store.flush``).
        if not self._file_dirty and not self._directory_dirty:
            return
        with self._metadata_lock:
            file_dirty, self._file_dirty = self._file_dirty, False
            directory_dirty, self._directory_dirty = self._directory_dirty, False
        if file_dirty:
            self.syscalls.fsync(self._fd)
        if directory_dirty:
            self.syscalls.fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        # The local reference keeps the mapping alive while msync runs on it.
        chunk = self._mapped(index)
        if chunk is not None:
            # Every commit flushes the same window: its address is kept (a ctypes
            # export costs microseconds), with the mapping, so it cannot outlive it.
            target = self._flush_target
            if target is None or target[0] is not chunk:
                target = self._flush_target = (chunk, mapping_address(chunk))
            address = target[1] + start
            if self.sync_method == "fdatasync":
                self.syscalls.sync_file_data(self._fd, address, length, self.path)
            else:
                self.syscalls.sync_mapping(address, length, self._fd, self.path)

    def _flush_spans(self, spans: list[tuple[int, int, int]]) -> None:
        if self.sync_method != "fdatasync" or len(spans) < 2:
            super()._flush_spans(spans)
            return
        # One fdatasync covers the whole file: one call for every window the flush
        # spans, not one each. The local references keep the mappings alive.
        chunks = [(self._mapped(index), start, length) for index, start, length in spans]
        ranges = [
            (mapping_address(chunk) + start, length)
            for chunk, start, length in chunks
            if chunk is not None
        ]
        self.syscalls.sync_file_ranges(self._fd, ranges, self.path)

    def flush_plan(self, start: int, end: int) -> FlushPlan | None:
        # Nothing owed before the flush (the file's new size or its directory
        # entry) and ``release`` idle: every commit's but the first in a new
        # window. Read without the lock, as ``_before_flush`` does.
        changes = self._plan_changes
        plan = self._plan
        if plan is None or self._closed or self._file_dirty or self._directory_dirty:
            return None
        head, capacity = self._head_lsn, self.capacity
        if not max(start, head) < end <= capacity or not self._release_idle(end):
            return None
        # The same answer holds for every range below the end ``release`` is
        # idle for, until a change is counted.
        self._publish_plan(changes, head, min(capacity, self._release_quiet_below - 1), plan)
        return plan

    def _side_path(self, name: str) -> str | None:
        return f"{self.path}.{name}"

    def _quarantine_base(self, offset: int) -> str | None:
        return f"{self.path}.quarantine-{offset:020d}"

    def _close_resources(self) -> None:
        # A window let go and kept only here would hold a descriptor, and with
        # it the writer's lock.
        self._flush_target = None
        self._close_file()


def _close_file(fd: int, lock_fd: int) -> None:
    """Close a single-file store's descriptors: the file's, then the lock's (-1: none)."""
    try:
        os.close(fd)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
