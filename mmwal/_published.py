"""The ends a writer publishes for followers in other processes: a small state file.

A writer maps ``mmwal-ends`` (in a segmented log's directory) or
``<file>.mmwal-ends`` (beside a single-file log) and writes there, at every
flush and every truncation, how far the log is written and durable, its head,
and the cuts ``truncate_after`` made. Followers map it read-only and look at it
at every poll: reading it costs a copy of 192 bytes and a CRC, no system call.

The file is not part of the wal-db format (no ``.wal`` suffix, not ``head``), so
wal-db ignores it, and nothing depends on it: a log without it (wal-db's, or one
whose file was lost) is followed by checking frames alone. Layout (little-endian),
two slots of 192 bytes at offsets 0 and 192 in a 4096-byte file::

    0    4   magic     b"MWPE"
    4    4   version   1
    8    8   sequence  which update this is; the slot is sequence % 2
    16   8   written   the end of the records the writer had copied in
    24   8   durable   the end of what its last flush made durable
    32   8   head      the first LSN of the log
    40   8   epoch     how many truncate_after cuts were ever made
    48   128 cuts      the last 8 cuts: (epoch, new end) pairs, oldest first
    176  4   crc32c    of bytes 0 .. 176

and at offset 512 a native u64, outside the slots: the truncation counter. The
writer bumps it before every truncation changes a byte, after the slot naming
the truncation is written; a reader compares it before yielding each record
(one aligned load), and reads the slots again when it moved.

Rules kept here:

- Torn updates are detected: a reader takes the valid slot with the highest
  sequence; a slot being rewritten fails its CRC and the other one is used.
- Distrusted when it disagrees with the log: followers still check every frame
  by its CRC and never read past what the frames say; the file only says how far
  is durable and what was cut.
- Created, allocated, mapped and removed through the store's ``Syscalls`` seam
  (so faults can be injected into it), with ``O_CREAT | O_EXCL | O_NOFOLLOW``
  and the log's ``file_mode``, as every file mmwal creates; a name taken by
  anything but a state file of the right size, ours, with no permission beyond
  ``file_mode`` (a symlink, a foreign file) is removed and created afresh. It is
  never shrunk (a follower may have it mapped).
- A failure to create or write it never fails the writer: following then falls
  back to checking frames.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import stat
import struct
import time
from typing import TYPE_CHECKING, NamedTuple

from ._chunked import ChunkedStore
from ._crc import crc32c
from ._files import close_mapping, create_file
from ._format import SPEEDUPS
from ._store import Store
from ._syscalls import Syscalls

__all__ = ["CUTS_KEPT", "ENDS_FILE_NAME", "Ends", "EndsPublisher", "EndsReader", "ends_path"]

_log = logging.getLogger("mmwal")

ENDS_FILE_NAME = "mmwal-ends"
CUTS_KEPT = 8
_MAGIC = b"MWPE"
_VERSION = 1
_FILE_SIZE = 4096
_SLOT_SIZE = 192
_COUNTER_OFFSET = 512
_BODY = struct.Struct(f"<4sIQQQQQ{2 * CUTS_KEPT}Q")
_CRC = struct.Struct("<I")
# The words of a slot that change at every flush: sequence, written, durable, head.
_MOVING = struct.Struct("<QQQQ")
_MOVING_OFFSET = 8
_SLOT_BYTES = _BODY.size + _CRC.size
assert _BODY.size + _CRC.size <= _SLOT_SIZE
# How long a follower waits before it looks for a missing state file again.
_REOPEN_SECONDS = 0.5


class Ends(NamedTuple):
    """One published state: the writer's ends, head and recent cuts."""

    sequence: int
    written: int
    durable: int
    head: int
    epoch: int
    cuts: tuple[tuple[int, int], ...]


def ends_path(store: Store) -> str | None:
    """Return where the state file of the log in ``store`` lives, or None (no path)."""
    if isinstance(store, ChunkedStore):
        return store._side_path(ENDS_FILE_NAME)
    return None


def python_put_ends_slot(  # noqa: PLR0917 (the C function's signature)
    mapping: mmap.mmap | bytearray,
    slot: bytearray,
    position: int,
    sequence: int,
    written: int,
    durable: int,
    head: int,
) -> None:
    """Pack a flush's four words and the CRC into ``slot``; copy it to ``mapping``.

    The reference of ``_speedups.put_ends_slot`` (``_afterflush.c``).
    """
    _MOVING.pack_into(slot, _MOVING_OFFSET, sequence, written, durable, head)
    _CRC.pack_into(slot, len(slot) - _CRC.size, crc32c(memoryview(slot)[: -_CRC.size]))
    mapping[position : position + len(slot)] = slot


class PythonEndsPublisherBase:
    """The fields a flush changes and ``flushed``: the reference of the C ``EndsPublisherBase``."""

    _mapping: mmap.mmap
    _slot: bytearray
    _said: tuple[int, ...] | None
    _sequence: int
    _stride: int

    def flushed(self, end: int, head: int) -> None:
        """Publish a flush that made everything below ``end`` written and durable.

        ``publish(written=end, durable=end, head=head)`` with fewer steps, for the
        commit path: the caller (the flush leader, holding the one-flusher token)
        knows the file is open, and the ends moved since the last update.
        """
        self._said = None  # the next ``publish`` writes whatever it is given
        sequence = self._sequence = self._sequence + 1
        position = (sequence & 1) * self._stride
        python_put_ends_slot(self._mapping, self._slot, position, sequence, end, end, head)


if TYPE_CHECKING or SPEEDUPS:
    from ._speedups import EndsPublisherBase, put_ends_slot
else:
    EndsPublisherBase = PythonEndsPublisherBase
    put_ends_slot = python_put_ends_slot


def _flat_cuts(cuts: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> list[int]:
    flat = [value for cut in cuts[-CUTS_KEPT:] for value in cut]
    return flat + [0] * (2 * CUTS_KEPT - len(flat))


def _encode(ends: Ends) -> bytes:
    body = _BODY.pack(
        _MAGIC,
        _VERSION,
        ends.sequence,
        ends.written,
        ends.durable,
        ends.head,
        ends.epoch,
        *_flat_cuts(ends.cuts),
    )
    return body + _CRC.pack(crc32c(body))


def _decode(slot: bytes) -> Ends | None:
    body = slot[: _BODY.size]
    (crc,) = _CRC.unpack_from(slot, _BODY.size)
    if crc32c(body) != crc:
        return None
    magic, version, sequence, written, durable, head, epoch, *flat = _BODY.unpack(body)
    if magic != _MAGIC or version != _VERSION or not head <= durable <= written:
        return None
    cuts = tuple(
        (flat[i], flat[i + 1]) for i in range(0, len(flat), 2) if flat[i] and flat[i] <= epoch
    )
    return Ends(sequence, written, durable, head, epoch, cuts)


def _latest(mapping: mmap.mmap) -> Ends | None:
    best: Ends | None = None
    for offset in (0, _SLOT_SIZE):
        ends = _decode(mapping[offset : offset + _SLOT_SIZE])
        if ends is not None and (best is None or ends.sequence > best.sequence):
            best = ends
    return best


def _is_state_file(fd: int, file_mode: int) -> bool:
    info = os.fstat(fd)
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_size == _FILE_SIZE
        and info.st_uid == os.geteuid()
        and not stat.S_IMODE(info.st_mode) & ~file_mode
    )


def _open_for_writing(path: str, syscalls: Syscalls, file_mode: int) -> int:
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            fd = create_file(syscalls, path, file_mode)
        except FileExistsError:
            pass
        else:
            try:
                syscalls.allocate(fd, 0, _FILE_SIZE)
            except BaseException:
                os.close(fd)
                # An empty file would be taken back at the next open anyway.
                with contextlib.suppress(OSError):
                    syscalls.remove(path)
                raise
            return fd
        try:
            fd = syscalls.open(path, flags)
        except OSError:
            fd = -1  # a symlink (ELOOP), a directory, a file gone meanwhile
        if fd >= 0:
            if _is_state_file(fd, file_mode):
                return fd
            os.close(fd)
        # Not a state file we wrote: take the name back (removing a symlink never
        # touches its target) and create our own.
        with contextlib.suppress(FileNotFoundError):
            syscalls.remove(path)
    raise FileExistsError(f"{path} keeps being replaced")


class EndsPublisher(EndsPublisherBase):
    """The writer's side: updates the state file; never fails the writer.

    ``flushed`` (every flush's update) is the base's: in C with the extension.
    """

    def __init__(self, mapping: mmap.mmap, last: Ends | None) -> None:
        self._mapping = mapping
        self._stride = _SLOT_SIZE
        self._counter = memoryview(mapping)[_COUNTER_OFFSET : _COUNTER_OFFSET + 8].cast("Q")
        self._sequence = last.sequence if last is not None else 0
        self._epoch = last.epoch if last is not None else 0
        self._cuts: list[tuple[int, int]] = list(last.cuts) if last is not None else []
        self._flat = _flat_cuts(self._cuts)
        # The next slot's bytes, body and CRC: what changes only with a cut is
        # packed here once per cut, what changes at every flush in place.
        self._slot = bytearray(_SLOT_BYTES)
        self._pack_constant_words()
        # What the file says now (written, durable, head, epoch; the cuts change
        # only with the epoch): an update that would say the same is not written
        # (an open and close of an unchanged log leave the file as it was).
        self._said = None if last is None else tuple(last[1:5])

    @classmethod
    def for_store(cls, store: Store) -> EndsPublisher | None:
        """Open or create the state file of the log in ``store``; None if it has none."""
        path = ends_path(store)
        if path is None or not isinstance(store, ChunkedStore):
            return None
        return cls.create(path, store.syscalls, store.file_mode)

    @classmethod
    def create(cls, path: str, syscalls: Syscalls, file_mode: int) -> EndsPublisher | None:
        """Open or create the state file at ``path``; None (and a debug log) if impossible.

        Every call that creates, allocates, maps or removes it goes through
        ``syscalls``; a new file gets ``file_mode``.
        """
        try:
            fd = _open_for_writing(path, syscalls, file_mode)
            try:
                mapping = syscalls.map(fd, _FILE_SIZE, 0, writable=True)
            finally:
                os.close(fd)
        except OSError as error:
            _log.debug("not publishing ends for followers at %s: %s", path, error)
            return None
        return cls(mapping, _latest(mapping))

    def _pack_constant_words(self) -> None:
        _BODY.pack_into(self._slot, 0, _MAGIC, _VERSION, 0, 0, 0, 0, self._epoch, *self._flat)

    def publish(self, *, written: int, durable: int, head: int) -> None:
        """Write the writer's current ends into the next slot."""
        mapping = self._mapping
        if mapping.closed:
            return
        said = (written, durable, head, self._epoch)
        if said == self._said:
            return
        self._said = said
        self._write_slot(written, durable, head)

    def _write_slot(self, written: int, durable: int, head: int) -> None:
        # Runs after every flush, on the commit path: four words packed, one CRC,
        # one copy into the mapping, in one call (``_encode`` makes the same bytes).
        sequence = self._sequence = self._sequence + 1
        position = (sequence & 1) * self._stride
        put_ends_slot(self._mapping, self._slot, position, sequence, written, durable, head)

    def cut(self, new_end: int, *, written: int, durable: int, head: int) -> None:
        """Publish a ``truncate_after`` cut at ``new_end``, before any byte changes."""
        self._epoch += 1
        self._cuts = [*self._cuts[-(CUTS_KEPT - 1) :], (self._epoch, new_end)]
        self._flat = _flat_cuts(self._cuts)
        self._pack_constant_words()
        self.publish(written=written, durable=min(durable, new_end), head=head)
        self.announce()

    def announce(self) -> None:
        """Bump the truncation counter: followers read the slots again before going on."""
        if not self._mapping.closed:
            self._counter[0] = (self._counter[0] + 1) % (1 << 64)

    def close(self) -> None:
        """Unmap the state file (it stays, for followers and the next writer)."""
        self._counter.release()
        close_mapping(self._mapping)


class EndsReader:
    """A follower's side: maps the state file read-only, when there is one."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._mapping: mmap.mmap | None = None
        #: The writer's truncation counter, a view into the mapping (None without one).
        self.counter: memoryview | None = None
        self._identity: tuple[int, int] | None = None
        self._next_attempt = 0.0
        # The last state decoded, and the slot sequences it was decoded from: an
        # idle poll compares two words instead of decoding the slots again.
        self._cached: Ends | None = None
        self._sequences: memoryview | None = None
        self._cached_key: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        path = self._path
        if path is None:
            return
        self._next_attempt = time.monotonic() + _REOPEN_SECONDS
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != _FILE_SIZE:
                return
            mapping = mmap.mmap(fd, _FILE_SIZE, access=mmap.ACCESS_READ)
        except OSError:
            return
        finally:
            os.close(fd)
        # The old mapping is not closed: a walk may still hold its counter view;
        # it goes with the last reference.
        self._mapping = mapping
        self.counter = memoryview(mapping)[_COUNTER_OFFSET : _COUNTER_OFFSET + 8].cast("Q")
        self._sequences = memoryview(mapping)[: 2 * _SLOT_SIZE].cast("Q")
        self._cached = None
        self._identity = (info.st_dev, info.st_ino)

    def read(self) -> Ends | None:
        """Return the latest state the writer published, or None when there is none."""
        if self._mapping is None or time.monotonic() >= self._next_attempt:
            self._recheck()
        mapping = self._mapping
        if mapping is None or self._sequences is None:
            return None
        # Each slot's sequence is its second word; a slot being rewritten changes
        # it, so an unchanged pair means the slots say what they said.
        key = (self._sequences[1], self._sequences[_SLOT_SIZE // 8 + 1])
        if key == self._cached_key and self._cached is not None:
            return self._cached
        for _ in range(4):
            ends = _latest(mapping)
            if ends is not None:
                # Kept only when the newest slot was whole: one caught mid-write
                # is decoded again at the next look.
                if ends.sequence == max(key):
                    self._cached, self._cached_key = ends, key
                return ends
        return None

    def _recheck(self) -> None:
        """Map the state file if it appeared, or again if a writer replaced it."""
        self._next_attempt = time.monotonic() + _REOPEN_SECONDS
        if self._mapping is not None and self._path is not None:
            try:
                info = os.stat(self._path, follow_symlinks=False)
            except OSError:
                return
            if (info.st_dev, info.st_ino) == self._identity:
                return
        self._open()

    def close(self) -> None:
        """Unmap the state file (once no walk holds its counter view)."""
        if self.counter is not None:
            self.counter.release()
            self.counter = None
        if self._sequences is not None:
            self._sequences.release()
            self._sequences = None
        if self._mapping is not None:
            close_mapping(self._mapping)
            self._mapping = None
