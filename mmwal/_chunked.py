"""A store made of equal, separately mapped chunks: the shared core of every mmwal store.

Chunk ``k`` holds log bytes ``[k*chunk_size, (k+1)*chunk_size)``. A segment file,
a window of a single file and a block of anonymous memory are all chunks; the
subclasses say how a chunk is made, flushed and released.

Rules this class keeps:

- A chunk, once mapped, is never remapped or resized, so a thread copying into it
  never races a remap; growth only adds chunks.
- Only the last chunk may be shorter than ``chunk_size`` (a file wal-db left
  short). A writable store extends it on its first write, not when it opens: an
  open the log refuses must leave every file as it found it.
- Zeroing touches only blocks that hold a nonzero byte, so discarding a mostly
  empty preallocated tail costs a read, not a write-back.
- A chunk the log may still write into is mapped without fault readahead, and
  the clean page cache past the end is evicted once the end is known
  (``discard_after``): a commit then writes back the pages it touched, not a 2 MiB
  folio (see ``_files.advise_writing``). A chunk below the durable end is sealed
  (``release``): it reads ahead again, so reading it back stays fast.
- A writable store whose subclass can make a chunk ahead (``_precreate_chunk``)
  makes the next one (``ChunkPipeline``) once a flush finds the durable end
  halfway through the last chunk, so a roll only hands it over. Anything that
  moves the end (``discard_after``, ``close``) first cancels it.
- A writable file store keeps the pages just past the durable end faulted in,
  clean, on a thread of its own (``TailWarmer``), so the commit that opens a page
  takes only the write fault. ``release`` starts it, at most once per half
  window; ``discard_after`` and ``close`` wait for it first.
- The plan a subclass's ``flush_plan`` publishes (``Store.plan_window``) is
  taken back as ``_planwindow.py`` lists: at the start of ``flush``, the
  truncations and ``close``, and after growth, a chunk let go and the open's
  deferred writes.
"""

from __future__ import annotations

import abc
import mmap
import sys
import threading

from ._errors import WalClosedError
from ._files import (
    DEFAULT_FILE_MODE,
    LARGEST_FOLIO,
    advise_reading,
    advise_writing,
    close_mapping,
)
from ._pipeline import ChunkPipeline
from ._planwindow import PlanWindow
from ._sidefiles import FilesBeside
from ._store import Buffer, Store
from ._syscalls import (
    DEFAULT_SYNC_METHOD,
    PAGE_SIZE,
    Syscalls,
    check_sync_method,
)
from ._warming import TailWarmer
from ._zeroing import nonzero_bounds, zero_nonzero

__all__ = ["ChunkedStore"]

#: Default bytes of chunks kept mapped besides the last one (at least one chunk,
#: at most 16): a log's older segments cost no descriptor and no mapping.
DEFAULT_MAPPED_BYTES = 64 << 20


#: Chunks at least this large are made ahead by default. Smaller ones roll more
#: often than a background job (two fsyncs each) keeps up with, and cost little
#: to make inline.
PRECREATE_MIN_CHUNK = 1 << 20


class ChunkedStore(PlanWindow, FilesBeside, Store):
    """A store of equal chunks, each one mapping; subclasses make and release chunks."""

    #: A piece is a chunk's mapping itself: slice assignment into it is ``write``.
    writes_into_pieces = True
    #: The mode of the files the store creates (less the umask).
    file_mode: int = DEFAULT_FILE_MODE
    #: Whether the subclass implements ``_precreate_chunk``.
    _makes_chunks_ahead = False
    #: Whether the subclass implements ``_load_chunk``: then only the last chunk
    #: and ``mapped_chunks`` others stay mapped, the rest are mapped on demand.
    _reloads_chunks = False
    #: Whether chunks map files (not anonymous memory): then the pages past the
    #: durable end are warmed ahead of the appends (``TailWarmer``).
    _maps_files = False

    def __init__(
        self,
        chunk_size: int,
        syscalls: Syscalls | None,
        *,
        writable: bool,
        precreate: bool | None = None,
        mapped_chunks: int | None = None,
        sync_method: str = DEFAULT_SYNC_METHOD,
    ) -> None:
        self.sync_method = check_sync_method(sync_method)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk size must be a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.writable = writable
        self.syscalls = syscalls if syscalls is not None else Syscalls()
        self._chunks: dict[int, mmap.mmap] = {}
        self._first_chunk = 0
        self._end_chunk = 0
        self._head_lsn = 0
        self._closed = False
        self._units_created = 0
        # A writable store changes nothing on disk until the log accepted what it
        # found there: the first call that writes completes the open.
        self._open_completed = not writable
        # Chunks below this index had their resident pages given back (release).
        self._released_below = 0
        # ``release`` has nothing to do for an end below this while the store
        # has ``_release_quiet_chunks`` chunks (every commit calls it):
        # recomputed when it finds work, zeroed by whatever moves the released
        # chunks or the pipeline back. Too low costs one slow call; it is never
        # too high for that chunk count.
        self._release_quiet_below = 0
        self._release_quiet_chunks = -1
        # The chunk index the pipeline was last asked to make (-1: none since
        # it was last cancelled).
        self._spare_asked = -1
        if precreate is None:
            precreate = chunk_size >= PRECREATE_MIN_CHUNK
        self._pipeline = (
            ChunkPipeline(self._precreate_chunk, self._discard_spare)
            if writable and precreate and self._makes_chunks_ahead
            else None
        )
        self._warmer = (
            TailWarmer(chunk_size)
            if writable and self._maps_files and sys.platform == "linux"
            else None
        )
        # Chunks below this index hold durable bytes the log will not write
        # again (until a truncation moves the end back): mapped for reading.
        # Unknown until recovery found the end (``prepare_end``).
        self._writable_from = sys.maxsize
        if mapped_chunks is None:
            mapped_chunks = max(1, min(16, DEFAULT_MAPPED_BYTES // chunk_size))
        elif mapped_chunks < 1:
            raise ValueError(f"mapped_chunks must be at least 1, got {mapped_chunks}")
        self._mapped_limit = mapped_chunks
        self._mapping_lock = threading.Lock()
        self._start_plan_window()

    # -- what subclasses provide ------------------------------------------------

    @abc.abstractmethod
    def _create_chunk(self, index: int) -> mmap.mmap:
        """Allocate and map chunk ``index``; raise ``OSError`` leaving nothing behind."""

    @abc.abstractmethod
    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        """Write back ``length`` bytes of chunk ``index`` from page-aligned ``start``."""

    def _flush_spans(self, spans: list[tuple[int, int, int]]) -> None:
        """Write back each ``(index, start, length)`` span; a subclass may merge them.

        ``flush`` comes here for two spans or more; one span (every commit's
        flush) goes straight to ``_flush_chunk``.
        """
        for index, start, length in spans:
            self._flush_chunk(index, start, length)

    def _precreate_chunk(self, index: int) -> mmap.mmap:
        """Make chunk ``index`` ahead of need, durably, on a background thread.

        Like ``_create_chunk``, but the creation is durable when this returns and
        nothing is left for a flush to do. Subclasses that cannot, do not override.
        """
        raise NotImplementedError

    def _load_chunk(self, index: int) -> mmap.mmap:
        """Map existing chunk ``index`` again (it was unmapped to bound the mappings)."""
        raise NotImplementedError

    def _mapped(self, index: int) -> mmap.mmap | None:
        """Return chunk ``index``'s mapping, mapping it if it was let go; None if absent."""
        chunk = self._chunks.get(index)
        if chunk is not None or not self._reloads_chunks:
            return chunk
        if not self._first_chunk <= index < self._end_chunk:
            return None
        with self._mapping_lock:
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._load_chunk(index)
                self._chunks[index] = chunk
                self._let_go_beyond_limit(index)
        return chunk

    def _let_go_beyond_limit(self, keep: int) -> None:
        # Oldest mapped first; the last chunk (the log's tail) always stays, and so
        # does a chunk growth has mapped but not yet counted (``ensure_capacity``
        # runs under the append lock, a flush's ``release`` without it): it is the
        # new tail. A chunk let go is not closed: a reader or a copy holding it
        # keeps it alive, and its last reference unmaps it. Dirty pages stay in
        # the page cache, and a flush maps the chunk again: msync writes back the
        # file's range.
        last = self._end_chunk - 1
        others = [index for index in list(self._chunks) if index != keep and index < last]
        let_go = others[: max(0, len(others) - self._mapped_limit + 1)]
        for index in let_go:
            self._chunks.pop(index, None)
        if let_go:
            self._forget_plan()

    def _discard_spare(self, index: int, chunk: mmap.mmap) -> None:
        """Undo ``_precreate_chunk(index)``: the chunk was never part of the log."""
        chunk.close()
        self._forget_chunk(index)

    def _drop_resident(self, chunk: mmap.mmap) -> None:
        """Give back the memory of a chunk whose bytes are durable; never lose them."""
        del chunk

    def _evict_clean(self, index: int, chunk: mmap.mmap, start: int) -> None:
        """Drop the clean page cache of chunk ``index`` from ``start`` (folio-aligned) on."""
        del index, chunk, start

    def _forget_chunk(self, index: int) -> None:
        """Undo ``_create_chunk(index)`` after its mapping was closed."""
        del index

    def _check_open(self) -> None:
        if self._closed:
            raise WalClosedError(f"store {self.location}")

    def _complete_open(self) -> None:
        """Do the writes a writable open defers: extend short files, finish drops."""

    def _ensure_open_completed(self) -> None:
        if not self._open_completed:
            self._open_completed = True
            self._complete_open()
            self._forget_plan()

    def _before_flush(self) -> None:
        """Make pending file creations durable; runs before any data is flushed."""

    def _release_chunk(self, index: int) -> bool:
        """Give back chunk ``index``, wholly past the end; return False to keep it (zeroed)."""
        del index
        return False

    def _after_release(self) -> None:
        """Make chunk releases durable."""

    def _close_resources(self) -> None:
        """Release files and locks after every chunk is unmapped."""

    # -- the store protocol -----------------------------------------------------

    @property
    def head_lsn(self) -> int:
        return self._head_lsn

    @property
    def capacity(self) -> int:
        last = self._chunks.get(self._end_chunk - 1)
        if last is None:
            return self._end_chunk * self.chunk_size
        return (self._end_chunk - 1) * self.chunk_size + len(last)

    @property
    def closed(self) -> bool:
        return self._closed

    def piece(self, offset: int) -> tuple[Buffer, int, int]:
        return self._locate(offset)

    def _locate(self, offset: int) -> tuple[mmap.mmap, int, int]:
        self._check_open()
        index = offset // self.chunk_size
        chunk = self._mapped(index)
        if chunk is None or offset < self._head_lsn:
            raise ValueError(
                f"offset {offset} is outside the bytes {self.location} holds "
                f"[{self._head_lsn}, {self.capacity})"
            )
        base = index * self.chunk_size
        return chunk, base, base + len(chunk)

    def read(self, offset: int, length: int) -> bytes:
        self._check_open()
        end = min(offset + length, self.capacity)
        parts: list[bytes] = []
        position = offset
        while position < end:
            chunk, base, limit = self._locate(position)
            stop = min(limit, end)
            parts.append(chunk[position - base : stop - base])
            position = stop
        return b"".join(parts)

    def write(self, offset: int, data: Buffer) -> None:
        self._check_open()
        size = self.chunk_size
        index, local = divmod(offset, size)
        length = len(data)
        if not length:
            return
        if local + length <= size:
            self._chunk_for_write(index)[local : local + length] = data
            return
        view = memoryview(data).cast("B")
        done = 0
        while done < length:
            step = min(size - local, length - done)
            self._chunk_for_write(index)[local : local + step] = view[done : done + step]
            done += step
            index += 1
            local = 0

    def _chunk_for_write(self, index: int) -> mmap.mmap:
        chunk = self._mapped(index)
        if chunk is None:
            raise ValueError(f"chunk {index} of {self.location} is not backed")
        return chunk

    def ensure_capacity(self, end: int) -> None:
        self._check_open()
        self._ensure_open_completed()
        first_new = self._end_chunk
        pipeline = self._pipeline
        try:
            while self._end_chunk * self.chunk_size < end:
                index = self._end_chunk
                chunk = pipeline.take(index) if pipeline is not None else None
                if chunk is None:
                    chunk = self._create_chunk_or_take(index)
                self._chunks[index] = chunk
                self._end_chunk = index + 1
                self._units_created += 1
        except BaseException:
            # All or nothing: give back the chunks this call made before it failed.
            made = range(first_new, self._end_chunk)
            self._end_chunk = first_new
            self._units_created -= len(made)
            for index in reversed(made):
                self._chunks.pop(index).close()
                self._forget_chunk(index)
            self._forget_plan()
            raise
        if self._end_chunk != first_new:
            # After the growth, not before: a ``flush_plan`` that read the old
            # chunks may publish until here (``Store.plan_window``).
            self._forget_plan()

    def _create_chunk_or_take(self, index: int) -> mmap.mmap:
        try:
            return self._create_chunk(index)
        except FileExistsError:
            # A flush's ``release`` (it runs without the append lock) started the
            # job for this very chunk after ``take`` found none, and the job's
            # create came first: its chunk is the one to use.
            chunk = self._pipeline.take(index) if self._pipeline is not None else None
            if chunk is None:
                raise
            return chunk

    def flush(self, start: int, end: int) -> None:
        if self._closed:
            raise WalClosedError(f"store {self.location}")
        self._forget_plan()
        self._before_flush()
        size = self.chunk_size
        start = max(start, self._head_lsn)
        end = min(end, self.capacity)
        base = start - start % size
        if start < end <= base + size:
            # One chunk: every commit's flush.
            local = start - base
            aligned = local - local % PAGE_SIZE
            self._flush_chunk(start // size, aligned, end - base - aligned)
            return
        spans: list[tuple[int, int, int]] = []
        position = start
        while position < end:
            index = position // size
            base = index * size
            stop = min(end, base + size)
            local = position - base
            aligned = local - local % PAGE_SIZE
            spans.append((index, aligned, stop - base - aligned))
            position = stop
        self._flush_spans(spans)

    def release(self, end: int) -> None:
        if self._closed:
            raise WalClosedError(f"store {self.location}")
        if self._release_idle(end):
            return  # the common case: every Python-path commit comes here
        size = self.chunk_size
        pipeline = self._pipeline
        last = self._end_chunk - 1
        spare_at = sys.maxsize
        if pipeline is not None and last >= 0 and self._spare_asked != self._end_chunk:
            # Once the durable end is halfway through the last chunk, not before:
            # a log that stays small, and an open that only reads, is refused or
            # repaired, make no spare. Asked once per chunk (a job that failed
            # leaves the inline creation to report it).
            spare_at = last * size + size // 2
            if end >= spare_at and pipeline.start(self._end_chunk):
                self._spare_asked = self._end_chunk
                spare_at = sys.maxsize
        below = min(end // size, self._end_chunk)
        if below <= self._released_below:
            # Nothing newly sealed. ``_writable_from`` is never below
            # ``_released_below`` (both move together here and in
            # ``prepare_end``), so it has nothing to learn.
            warm_at = sys.maxsize
            if self._warmer is not None:
                warm_at = self._warmer.after_flush(end, last, self._chunks.get(last))
            self._release_quiet_below = min(spare_at, (self._released_below + 1) * size, warm_at)
            self._release_quiet_chunks = self._end_chunk
            return
        for index in range(max(self._released_below, self._first_chunk), below):
            chunk = self._chunks.get(index)
            if chunk is not None:
                self._drop_resident(chunk)
                advise_reading(chunk)
        self._released_below = max(self._released_below, below)
        self._release_quiet_below = 0
        if self._writable_from != sys.maxsize:
            self._writable_from = max(self._writable_from, below)
        if self._reloads_chunks:
            # Chunks the writer created stay mapped until here: sealed now, those
            # beyond the limit are let go as reloaded ones are (a mapping and a
            # descriptor each), so a writer that rolls for months keeps a bounded
            # number, not one per segment it made.
            with self._mapping_lock:
                self._let_go_beyond_limit(self._end_chunk - 1)

    def _release_idle(self, end: int) -> bool:
        """Whether ``release(end)`` would return at once (it and ``flush_plan`` ask)."""
        return end < self._release_quiet_below and self._end_chunk == self._release_quiet_chunks

    def discard_after(self, end: int) -> None:
        self._check_open()
        self._ensure_open_completed()
        self._forget_plan()
        if self._pipeline is not None:
            self._pipeline.cancel()
        if self._warmer is not None:
            self._warmer.reset()
        self._spare_asked = -1
        self._release_quiet_below = 0
        size = self.chunk_size
        first_whole = -(-end // size)
        dirty: list[tuple[int, int, int]] = []
        # Chunks the zeroing writes stay mapped for writing (see ``_load_chunk``).
        self._writable_from = min(self._writable_from, max(end // size, self._first_chunk))
        holding_end = self._mapped(end // size) if end % size else None
        if holding_end is not None:
            # The chunk holding ``end`` first: its zeros are durable before a later
            # chunk is released or zeroed, so a crash never keeps bytes past ``end``
            # in it while later ones are gone.
            index = end // size
            span = zero_nonzero(holding_end, end - index * size)
            if span is not None:
                self._before_flush()
                aligned = span[0] - span[0] % PAGE_SIZE
                self._flush_chunk(index, aligned, span[1] - aligned)
        released = False
        for index in range(self._end_chunk - 1, max(first_whole, self._first_chunk) - 1, -1):
            if self._release_chunk(index):
                released = True
                chunk = self._chunks.pop(index, None)
                if chunk is not None:
                    close_mapping(chunk)
                if index == self._end_chunk - 1:
                    self._end_chunk = index
                continue
            chunk = self._chunk_for_write(index)
            span = zero_nonzero(chunk, 0)
            if span is not None:
                aligned = span[0] - span[0] % PAGE_SIZE
                dirty.append((index, aligned, span[1] - aligned))
        if released:
            self._after_release()
        self._before_flush()
        if dirty:
            # One call for them all where the store can (a single file's fdatasync).
            self._flush_spans(dirty)
        # Everything past the end is clean now: evict what the zeroing scan read.
        self.prepare_end(end)

    def prepare_end(self, end: int) -> None:
        # From the 2 MiB boundary below the end: the folio holding the end is
        # evicted too, and sealed bytes further below keep their readahead.
        self._check_open()
        self._forget_plan()
        size = self.chunk_size
        first = max(end // size, self._first_chunk)
        self._released_below = min(self._released_below, first)
        self._release_quiet_below = 0
        if self.writable:
            self._writable_from = first
        for index in range(first, self._end_chunk):
            chunk = self._mapped(index)
            if chunk is None:
                continue
            local = max(0, end - index * size)
            start = local - local % LARGEST_FOLIO
            self._evict_clean(index, chunk, start)
            advise_writing(chunk, start)

    def drop_before(self, offset: int) -> int:
        self._check_open()
        return self._head_lsn

    def nonzero_extent(self, start: int) -> tuple[int, int] | None:
        self._check_open()
        position = max(start, self._head_lsn)
        capacity = self.capacity
        first = last = -1
        while position < capacity:
            chunk, base, limit = self._locate(position)
            bounds = nonzero_bounds(chunk, position - base, limit - base)
            if bounds is not None:
                if first < 0:
                    first = base + bounds[0]
                last = base + bounds[1]
            position = limit
        return None if first < 0 else (first, last)

    @property
    def units_created(self) -> int:
        return self._units_created

    def close(self) -> None:
        if self._closed:
            return
        if self._pipeline is not None:
            # The spare's file goes too: a zero file past the end is no log data,
            # but the next open would only remove it again.
            self._pipeline.stop()
        if self._warmer is not None:
            self._warmer.wait()
        self._forget_plan()
        self._closed = True
        chunks = list(self._chunks.values())
        self._chunks.clear()
        for chunk in chunks:
            close_mapping(chunk)
        self._close_resources()
