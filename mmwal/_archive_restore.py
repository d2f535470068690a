"""Restoring archived segments into a segmented log directory.

Rules kept here:

- The log is assembled in a fresh sibling directory, made durable (files, head
  file, directory), and renamed onto ``directory`` only when complete: a crash
  never leaves a half-restored log where a log is expected.
- An existing log (a non-empty ``directory``) is never written to.
- Every downloaded file is checked against its manifest entry (size, CRC-32C).
- ``up_to_lsn`` must be a record start within the archived records; the restore
  never returns a shorter prefix than asked.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import uuid
from collections.abc import Callable

from ._crc import crc32c
from ._errors import CorruptionError, InvalidLSNError
from ._format import HEAD_FILE_NAME, HEADER, HEADER_SIZE, encode_head_file, segment_name
from ._manifest import ArchivedSegment

__all__ = ["restore_segments"]

_READ_CHUNK = 8 << 20
# Segments fetched by one call: fsspec backends that can (s3fs) fetch them at
# once; progress is reported per batch.
_FETCH_BATCH = 4


def _file_crc(path: str, buffer: bytearray) -> tuple[int, int]:
    """Return the size and CRC-32C of the file at ``path``, read through ``buffer``."""
    view = memoryview(buffer)
    value = 0
    size = 0
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            value = crc32c(view[:count], value)
            size += count
    return size, value


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Files:
    """Log bytes read back from the restored segment files (mapped while walking)."""

    def __init__(self, directory: str, segment_size: int) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self._maps: dict[int, mmap.mmap | None] = {}

    def _map(self, index: int) -> mmap.mmap | None:
        if index not in self._maps:
            try:
                with open(os.path.join(self.directory, segment_name(index)), "rb") as file:
                    self._maps[index] = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError):  # missing, or empty
                self._maps[index] = None
        return self._maps[index]

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        position, end = offset, offset + length
        while position < end:
            index, within = divmod(position, self.segment_size)
            step = min(end - position, self.segment_size - within)
            mapping = self._map(index)
            if mapping is None:
                break
            part = mapping[within : within + step]
            parts.append(part)
            position += len(part)
            if len(part) < step:
                break
        return b"".join(parts)

    def close(self) -> None:
        for mapping in self._maps.values():
            if mapping is not None:
                mapping.close()


def _walk(files: _Files, start: int, target: int, end: int) -> tuple[int, int]:
    """Hop record headers from the record start ``start`` towards ``target``.

    Returns ``(previous, position)``: the last record start before ``target``
    and the first record boundary at or after it, or where the frames within
    ``[start, end)`` stop when that comes first. Headers only, and no length
    limit: the restored files match the CRC-32C of segments whose every frame
    was checked when they were pushed, and a header read allocates nothing.
    """
    previous = position = start
    while position < target:
        header = files.read(position, HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            break
        _, length = HEADER.unpack(header)
        following = position + HEADER_SIZE + length
        if following > end:
            break
        previous, position = position, following
    return previous, position


def _download_all(
    entries: list[ArchivedSegment],
    fetch: Callable[[list[ArchivedSegment], list[str]], None],
    staging: str,
    progress: Callable[[int], object] | None,
) -> None:
    buffer = bytearray(_READ_CHUNK)
    for first in range(0, len(entries), _FETCH_BATCH):
        batch = entries[first : first + _FETCH_BATCH]
        paths = [os.path.join(staging, segment_name(entry.index)) for entry in batch]
        fetch(batch, paths)
        for entry, path in zip(batch, paths, strict=True):
            _check_download(entry, path, buffer, progress)


def _check_download(
    entry: ArchivedSegment,
    path: str,
    buffer: bytearray,
    progress: Callable[[int], object] | None,
) -> None:
    """Refuse a downloaded segment that differs from its entry; make it durable."""
    size, value = _file_crc(path, buffer)
    if (size, value) != (entry.size, entry.crc32c):
        raise CorruptionError(
            entry.start_lsn,
            f"archived segment {entry.index} arrived as {size} bytes with CRC-32C "
            f"{value:#010x}; its manifest entry says {entry.size}, {entry.crc32c:#010x}",
            path=path,
            hint="the object changed after it was published, or the download was "
            "damaged; try again, and push the log to a new archive if it persists",
        )
    _fsync(path)
    if progress is not None:
        progress(size)


def _check_target(directory: str) -> None:
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(
            f"{directory} exists and is not an empty directory; a restore never writes "
            f"into an existing log (hint: restore into a new directory)"
        )


def restore_segments(
    entries: list[ArchivedSegment],
    *,
    fetch: Callable[[list[ArchivedSegment], list[str]], None],
    directory: str,
    up_to_lsn: int | None,
    progress: Callable[[int], object] | None,
) -> int:
    """Restore the contiguous ``entries`` into ``directory``; return the restored end."""
    _check_target(directory)
    size = entries[0].segment_size
    head = entries[0].first_lsn
    archived_end = entries[-1].end_lsn
    if up_to_lsn is not None:
        if isinstance(up_to_lsn, bool) or not isinstance(up_to_lsn, int):
            raise TypeError(f"up_to_lsn is an int, not {type(up_to_lsn).__name__}")
        if up_to_lsn < head:
            raise InvalidLSNError(up_to_lsn, "is below the archive's head", after=head)
        if up_to_lsn > archived_end:
            raise InvalidLSNError(
                up_to_lsn, f"lies past the archived bytes, which end at {archived_end}"
            )
        # The segments holding the records before ``up_to_lsn``; at least the head's.
        last = max(entries[0].index, -(-up_to_lsn // size) - 1)
        entries = [entry for entry in entries if entry.index <= last]
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(
        parent, f".{os.path.basename(os.path.abspath(directory))}.restoring-{uuid.uuid4().hex[:12]}"
    )
    os.mkdir(staging)
    try:
        _download_all(entries, fetch, staging, progress)
        files = _Files(staging, size)
        end_of_bytes = entries[-1].end_lsn
        # Walk from the last first_lsn at or before the target: at most a segment
        # (or one record) of headers.
        target = end_of_bytes if up_to_lsn is None else up_to_lsn
        start = max(entry.first_lsn for entry in entries if entry.first_lsn <= target)
        try:
            previous, end = _walk(files, start, target, end_of_bytes)
        finally:
            files.close()
        if up_to_lsn is not None:
            if end != up_to_lsn:
                raise InvalidLSNError(
                    up_to_lsn,
                    "is not a record start in the archive",
                    before=previous if previous < up_to_lsn else None,
                    after=end if end > up_to_lsn else None,
                )
            _cut(staging, entries[-1], up_to_lsn)
        if head:
            head_path = os.path.join(staging, HEAD_FILE_NAME)
            with open(head_path, "wb") as head_file:
                head_file.write(encode_head_file(head))
                head_file.flush()
                os.fsync(head_file.fileno())
        _fsync(staging)
        _check_target(directory)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty, checked just now
        os.rename(staging, directory)
        _fsync(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return end


def _cut(staging: str, last: ArchivedSegment, up_to_lsn: int) -> None:
    """Zero the last restored segment from ``up_to_lsn`` on, as recovery would."""
    offset = up_to_lsn - last.start_lsn
    if offset >= last.size:
        return
    path = os.path.join(staging, segment_name(last.index))
    with open(path, "r+b") as file:
        file.seek(offset)
        remaining = last.size - offset
        zeros = bytes(min(remaining, _READ_CHUNK))
        while remaining:
            step = min(remaining, len(zeros))
            file.write(zeros[:step])
            remaining -= step
        file.flush()
        os.fsync(file.fileno())
