"""The local side of archiving: a segmented log's files, and which of them are sealed.

A segment is sealed when every byte of it is log data that will not change: it
is full, every frame from its first record start to its end checks, the frame
that crosses into the next segment is complete and checks as well (else a crash
recovery could still cut it and zero this segment's tail), and all of that is
durable. Only sealed segments are archived.

Rules kept here:

- Segments below the head file's segment are not log data (a ``truncate_before``
  cut short leaves them): they are never offered for archiving.
- The files are read with ``pread``, never through a writer's mappings, so a
  writer may append, flush and close meanwhile.
- For an open ``Wal`` durability is its ``durable_lsn``; for a directory that a
  writer in another process may hold, each file is fsynced before it is read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ._crc import crc32c
from ._errors import CorruptionError
from ._format import (
    HEAD_FILE_NAME,
    HEADER,
    HEADER_SIZE,
    LENGTH,
    Stop,
    decode_head_file,
    parse_segment_name,
    scan_frames,
    segment_name,
)
from ._segment_size import infer_segment_size
from ._segstore import SegmentStore
from ._store import Buffer
from ._wal import Wal

__all__ = ["LocalLog", "OpenSegment"]

_SHORT = (Stop.SHORT_HEADER, Stop.SHORT_PAYLOAD)
# How much of a frame longer than ``max_record_size`` one read holds while its CRC
# is checked (each read opens, and for a directory fsyncs, the file).
_CHECK_BLOCK = 1 << 20


Held = tuple[int, Buffer]
"""A segment already open: its index and its bytes."""


@dataclass(frozen=True)
class OpenSegment:
    """A segment file held open: its descriptor and a read-only mapping of all of it."""

    fd: int
    data: mmap.mmap


def _read_head(directory: str) -> int:
    try:
        with open(os.path.join(directory, HEAD_FILE_NAME), "rb") as head_file:
            return decode_head_file(head_file.read(64))
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class LocalLog:
    """A segmented log on local disk, as archiving sees it."""

    directory: str
    segment_size: int
    head_lsn: int
    #: Segments must end at or below this to count as durable (``None``: fsync them).
    durable_limit: int | None
    max_record_size: int
    #: The open log this describes, if any (its head moves as it truncates).
    wal: Wal | None = None

    @classmethod
    def of_wal(cls, wal: Wal) -> LocalLog:
        """Describe an open segmented ``wal``; its ``durable_lsn`` bounds what is sealed."""
        store = wal.store
        if not isinstance(store, SegmentStore):
            raise ValueError(
                f"only a segmented log can be archived, not {store.location} "
                f"(hint: open a directory with mmwal.open(path, segment_size=...))"
            )
        return cls(
            store.path,
            store.segment_size,
            wal.head_lsn,
            wal.durable_lsn,
            wal.config.max_record_size,
            wal,
        )

    @classmethod
    def of_directory(cls, directory: str | os.PathLike[str], max_record_size: int) -> LocalLog:
        """Describe the segmented log in ``directory`` without opening (or locking) it."""
        path = os.fspath(directory)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no segmented log directory at {path}")
        head = _read_head(path)
        sizes = []
        for name in sorted(os.listdir(path)):
            if parse_segment_name(name) is None:
                continue
            with contextlib.suppress(FileNotFoundError):  # removed by a truncation since
                sizes.append((name, os.path.getsize(os.path.join(path, name))))
        segment_size = infer_segment_size(sizes, None)
        return cls(path, segment_size, head, None, max_record_size)

    def described_again(self) -> LocalLog:
        """Return this log as it is now (its head may have moved since)."""
        if self.wal is not None:
            return LocalLog.of_wal(self.wal)
        return LocalLog.of_directory(self.directory, self.max_record_size)

    def segment_path(self, index: int) -> str:
        """Return the path of segment ``index``."""
        return os.path.join(self.directory, segment_name(index))

    def indices(self) -> list[int]:
        """Return the indices of the segment files at or above the head's segment."""
        first = self.head_lsn // self.segment_size
        return sorted(
            index
            for name in os.listdir(self.directory)
            if (index := parse_segment_name(name)) is not None and index >= first
        )

    @contextlib.contextmanager
    def opened_segment(self, index: int) -> Iterator[OpenSegment | None]:
        """Open segment ``index`` read-only (durable first); ``None`` if missing or empty.

        The file stays open while the block runs and every read of it (the scan,
        the checksum, the upload) goes through this descriptor, never the path
        again: a truncation that removes the file meanwhile cannot change what
        is read, nor make a later read fail halfway.
        """
        try:
            fd = os.open(self.segment_path(index), os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            if self.durable_limit is None:
                os.fsync(fd)
            size = os.fstat(fd).st_size
            if not size:
                yield None
                return
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            try:
                yield OpenSegment(fd, mapping)
            finally:
                mapping.close()
        finally:
            os.close(fd)

    def head_segment_now(self) -> int:
        """Return the index of the segment holding the log's head as it is now."""
        if self.wal is not None:
            return self.wal.head_lsn // self.segment_size
        return _read_head(self.directory) // self.segment_size

    def read(self, offset: int, length: int, held: Held | None = None) -> bytes | None:
        """Return log bytes ``[offset, offset+length)``, or ``None`` where a file lacks them.

        ``held`` is a segment already open (its index and bytes): its part is
        taken from those bytes, not read from its path again, which a truncation
        may have removed since.
        """
        size = self.segment_size
        parts: list[bytes] = []
        position, end = offset, offset + length
        while position < end:
            index, within = divmod(position, size)
            step = min(end - position, size - within)
            part: bytes | None
            if held is not None and index == held[0]:
                part = bytes(held[1][within : within + step])
            else:
                part = self._pread(index, within, step)
            if part is None or len(part) < step:
                return None
            parts.append(part)
            position += step
        return b"".join(parts)

    def _pread(self, index: int, offset: int, length: int) -> bytes | None:
        try:
            fd = os.open(self.segment_path(index), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if self.durable_limit is None:
                os.fsync(fd)
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def seal(self, index: int, data: Buffer, first_lsn: int) -> int | None:
        """Return the first record start past segment ``index`` if it is sealed, else ``None``.

        ``data`` is the segment's bytes and ``first_lsn`` the first record start at
        or after its first byte. A frame that fails its check below a durable
        limit is damage (``CorruptionError``); in a directory it is where the
        written log ends, and the segment is simply not sealed.
        """
        size = self.segment_size
        base = index * size
        end = base + size
        if len(data) != size or (self.durable_limit is not None and end > self.durable_limit):
            return None
        if first_lsn >= end:
            # One record spans the whole segment; its frame was checked, complete
            # and durable, when the segment holding its start was sealed.
            return first_lsn
        position = first_lsn
        while True:
            scan = scan_frames(
                data,
                position - base,
                size,
                base=base,
                max_record_size=self.max_record_size,
                collect=False,
            )
            if scan.stop is not Stop.BAD_LENGTH:
                break
            # A frame longer than the limit is a record when its CRC checks, as at
            # open; one that crosses into the next segment is checked below.
            following = self._long_frame_end(scan.end, (index, data))
            if following is None or following >= end:
                break
            position = following
        if scan.stop is None:
            return scan.end
        if scan.stop in _SHORT or scan.stop is Stop.BAD_LENGTH:
            following = self._crossing_frame_end(scan.end, (index, data))
            if following is not None and (
                self.durable_limit is None or following <= self.durable_limit
            ):
                return following
            if self.durable_limit is None:
                return None
        elif self.durable_limit is None:
            return None
        raise CorruptionError(
            scan.end,
            f"a frame below the durable end fails its check ({scan.stop.value})",
            path=self.segment_path(index),
            hint="run python -m mmwal verify on the log; damaged segments are not archived",
        )

    def _long_frame_end(self, position: int, held: Held) -> int | None:
        """Return the end of the frame at ``position`` if it is complete and checks.

        Reads it a block at a time: a frame longer than ``max_record_size`` is
        checked without allocating what its length field says.
        """
        header = self.read(position, HEADER_SIZE, held)
        if header is None:
            return None
        crc, length = HEADER.unpack(header)
        value = crc32c(LENGTH.pack(length))
        at = position + HEADER_SIZE
        end = at + length
        while at < end:
            block = self.read(at, min(end - at, _CHECK_BLOCK), held)
            if block is None:
                return None
            value = crc32c(block, value)
            at += len(block)
        return end if value == crc else None

    def _crossing_frame_end(self, position: int, held: Held) -> int | None:
        """Return the end of the frame at ``position`` if it is complete and checks."""
        header = self.read(position, HEADER_SIZE, held)
        if header is None:
            return None
        _, length = HEADER.unpack(header)
        if length > self.max_record_size:
            return self._long_frame_end(position, held)
        frame = self.read(position, HEADER_SIZE + length, held)
        if frame is None:
            return None
        scan = scan_frames(
            frame,
            0,
            len(frame),
            base=position,
            max_record_size=self.max_record_size,
            collect=False,
            max_records=1,
        )
        return scan.end if scan.stop is None and scan.end == position + len(frame) else None
