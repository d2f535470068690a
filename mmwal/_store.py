"""The store protocol: where a log's bytes live, with no idea what they mean.

A store presents one byte address space, the log's, from ``head_lsn`` up to
``capacity``. Bytes never written read as zero. Stores never interpret records:
the log decides what to write, what to flush and where the end is; the store
maps, copies, flushes, grows and cuts.

Rules every store keeps (``mmwal.testing.StoreTests`` checks them):

- ``write`` is a copy into memory (a mapping, the page cache); it is not durable
  and cannot fail for lack of space once ``ensure_capacity`` covered the range.
- ``flush(start, end)`` returns only when ``[start, end)`` is on stable storage,
  together with every file creation and removal done before it.
- ``ensure_capacity`` either backs the whole range or raises ``OSError`` and
  leaves the store as it was.
- ``discard_after`` and ``drop_before`` are durable when they return.
- ``save_side_file`` replaces a small file beside the log whole and durably (a
  crash leaves the old or the new one); side files never hold log bytes, and a
  store may keep none.
- Growth runs while a flush runs: ``ensure_capacity`` (new segments, windows,
  chunks) may run concurrently with ``flush`` of earlier bytes, and with
  ``release`` and the side-file calls; the log's flush leader holds no lock while
  appends grow the log. A flush owes nothing for growth that started after it:
  the next flush covers the new bytes and the files that hold them.
- Direct writes into pieces are a capability a store declares
  (``writes_into_pieces``). A store that declares it hands out pieces that take
  slice assignment, and bytes written that way are the store's bytes (``read``,
  ``flush`` and a reopen see them, as after ``write``). A store that does not is
  only ever written through ``write``.
- Thread safety: ``write``, ``read`` and ``piece`` may run concurrently with each
  other, with ``flush`` and with ``ensure_capacity``; the log serialises
  ``ensure_capacity`` with itself, and ``discard_after``, ``drop_before`` and
  ``close`` against everything else.
"""

from __future__ import annotations

import abc
import mmap
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ._syscalls import FlushPlan

__all__ = ["Buffer", "Store"]

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
"""A contiguous piece of the log's bytes, as ``Store.piece`` hands it out."""


class Store(abc.ABC):
    """Where a log's bytes live: one address space of bytes, no records."""

    #: Where the store is (a path, or a description for stores with no path);
    #: errors name it.
    location: str = "<store>"

    #: Whether the store may be written; a read-only store never changes a byte.
    writable: bool = True

    #: Whether the log may copy bytes straight into the buffers ``piece`` returns
    #: (slice assignment) instead of calling ``write``. Off unless a store says
    #: so: a store whose pieces are copies, or that must see every write (to
    #: encrypt, count or forward it), gets every frame through ``write``.
    writes_into_pieces: bool = False

    #: ``(low, high, plan)`` or None: a store may publish what ``flush_plan``
    #: answers, so a commit reads one attribute instead of calling it (a call
    #: made cold, after the thread slept in the last flush, costs microseconds).
    #: While it is set, ``flush_plan(start, end)`` answers ``plan`` for every
    #: ``low <= start < end <= high``; a store clears it when anything that
    #: answer rests on changes (before a change no flush runs alongside, after
    #: one that may run alongside a flush, such as growth). None, the default,
    #: means: ask.
    plan_window: tuple[int, int, FlushPlan] | None = None

    @property
    @abc.abstractmethod
    def head_lsn(self) -> int:
        """The first log offset the store holds (0 unless a prefix was dropped)."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """The log offset just past the last byte the store backs."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Whether ``close`` has run."""

    @abc.abstractmethod
    def piece(self, offset: int) -> tuple[Buffer, int, int]:
        """Return ``(buffer, base, limit)``: a contiguous buffer holding ``offset``.

        ``buffer[i]`` is log offset ``base + i``, valid for offsets below ``limit``.
        Slicing the buffer copies; it holds no export, so it never blocks a close.
        When the store declares ``writes_into_pieces``, a writable store's buffer
        takes slice assignment: the log copies a frame that fits one piece
        straight into it, as ``write`` would. Otherwise the log only reads it.
        Raises ``ValueError`` for an offset outside ``[head_lsn, capacity)``.
        """

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset``, across pieces; clipped at ``capacity``."""

    @abc.abstractmethod
    def write(self, offset: int, data: Buffer) -> None:
        """Copy ``data`` to ``offset``; the range must lie within ``capacity``."""

    @abc.abstractmethod
    def ensure_capacity(self, end: int) -> None:
        """Back every offset below ``end``; on ``OSError`` nothing changed.

        May run while a ``flush`` of earlier bytes runs (see the module's rules).
        """

    @abc.abstractmethod
    def flush(self, start: int, end: int) -> None:
        """Make ``[start, end)`` and all earlier metadata changes durable.

        Crash cost: what ``flush`` has not covered may be lost, or reach the disk
        only in part, pages in any order. Raises ``OSError``; never retries.
        Growth (``ensure_capacity``) may run meanwhile; what it adds is the next
        flush's to make durable.
        """

    @abc.abstractmethod
    def discard_after(self, end: int) -> None:
        """Zero every byte from ``end`` on, durably; release space wholly past it."""

    @abc.abstractmethod
    def drop_before(self, offset: int) -> int:
        """Durably forget whole storage units below the one holding ``offset``.

        Returns the new ``head_lsn``. Stores that cannot drop a prefix return the
        current head unchanged.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Unmap and release every resource; closing twice is harmless. Does not flush."""

    @abc.abstractmethod
    def nonzero_extent(self, start: int) -> tuple[int, int] | None:
        """Return ``(first, last + 1)`` of the nonzero bytes at or after ``start``, or None."""

    def flush_plan(self, start: int, end: int) -> FlushPlan | None:
        """Return ``(fd, sync)`` when ``sync(fd)`` alone is ``flush(start, end)``, else None.

        ``sync`` is None for ``os.fdatasync`` itself (the log then calls it in C,
        the GIL released), or the store's own function (a ``Syscalls`` that
        injects faults). None, the default, means: call ``flush``. A store
        answers with a plan only when that one call is all ``flush`` would do
        (nothing owed before it, such as a new file's or a directory's
        ``fsync``), so a crash costs exactly what ``flush`` says it costs; and
        only when ``release(end)`` would do nothing, so the log does not call it
        (growth while the flush runs may give it work: the next flush's
        ``release`` does it).
        """
        del start, end
        return None

    def release(self, end: int) -> None:
        """Hint that bytes below ``end`` are durable and will not be written again.

        A store may give back the memory that holds them (a file mapping drops its
        resident pages; the page cache keeps them). Changes nothing readable.
        """
        del end

    def prepare_end(self, end: int) -> None:
        """Hint that the log ends at ``end`` and appends (here or by a writer) go there.

        A file store evicts the clean page cache past ``end`` and maps that range
        without readahead, so appends there dirty small folios: a commit then
        writes back the pages it touched, not the 2 MiB folios readahead builds.
        A read-only store does the same, so a reader never builds large folios
        ahead of the writer. Changes nothing readable; costs no durability.
        """
        del end

    def quarantine(self, start: int, end: int) -> str | None:
        """Keep a durable copy of ``[start, end)`` beside the log, before it is zeroed.

        Returns where the copy is, or None for a store with nowhere to keep it.
        """
        del start, end
        return None

    @property
    def unit_size(self) -> int:
        """The size of the files the log is split into (segments); 0 for one file or memory.

        It fixes where log bytes lie on disk, so a recovery point records it.
        """
        return 0

    def load_side_file(self, name: str) -> bytes | None:
        """Return the small file ``name`` kept beside the log, or None when there is none.

        Side files (the recovery point) are optional: a store with no place for
        them keeps none, and the log then reads the log itself.
        """
        del name
        return None

    def save_side_file(self, name: str, data: bytes) -> bool:
        """Replace the small file ``name`` beside the log; return False if nowhere to keep it.

        Crash cost: none once it returns; a crash during it leaves the old file
        or the new one, never a mix. Raises ``OSError``.
        """
        del name, data
        return False

    def remove_side_file(self, name: str) -> None:
        """Remove the small file ``name`` beside the log, durably; absent is fine."""
        del name

    @property
    def units_created(self) -> int:
        """How many storage units (segments, windows) this store has created."""
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"
