"""The wal-db 1.x on-disk format, described once: framing, head file, segment names.

Everything here is a pure function over bytes-like objects; nothing does I/O.

Record frame (integers little-endian)::

    offset  size  field
    0       4     crc32c   CRC-32C of bytes 4 .. 8+length (the length field, then the payload)
    4       4     length   payload length in bytes
    8       len   payload

A log is one byte address space; a record's LSN is the offset of its frame, the
first record is LSN 0 and the next one starts at ``lsn + 8 + length``. An all-zero
header never checks (the CRC-32C of four zero bytes is 0x48674BC7), so zero-filled
preallocated space reads as the end of the log.

Head file (``head``, 12 bytes)::

    0       8     head_lsn  the first LSN still in the log
    8       4     crc32c    CRC-32C of bytes 0 .. 8

Segment files are named by their index, zero-padded to 20 digits, plus ``.wal``;
segment ``k`` of size ``S`` holds log bytes ``[k*S, (k+1)*S)``.

Recovery point (mmwal's own, not wal-db's: ``recovery`` in a segment directory,
``<file>.recovery`` beside a single file; wal-db ignores both names), 48 bytes::

    0       8     magic      b"mmwalRP1"
    8       8     end        every log byte below it is durable; a record boundary
    16      8     last_lsn   the LSN of the record that ends at ``end``
    24      4     last_crc   that record's CRC field
    28      4     last_length  that record's length field (``end - last_lsn - 8``)
    32      8     unit_size  the store's unit (segment size) when it was written
    40      4     reserved   zero
    44      4     crc32c     CRC-32C of bytes 0 .. 44
"""

from __future__ import annotations

import array
import enum
import mmap
import os
import struct
from typing import NamedTuple

from ._crc import crc32c

try:
    from . import _speedups
except ImportError:  # pragma: no cover - the extension is optional
    _speedups = None  # type: ignore[assignment]

if os.environ.get("MMWAL_PURE_PYTHON"):
    # Run the reference walk in Python even where the C walk is built.
    _speedups = None  # type: ignore[assignment]

#: Whether frames are walked by the C extension (``mmwal._speedups``).
SPEEDUPS = _speedups is not None


__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "HEAD_FILE",
    "HEAD_FILE_NAME",
    "HEAD_FILE_SIZE",
    "LENGTH",
    "RECOVERY_FILE_NAME",
    "RECOVERY_POINT_SIZE",
    "SEGMENT_NAME_DIGITS",
    "SEGMENT_SUFFIX",
    "SPEEDUPS",
    "Record",
    "RecoveryPoint",
    "Scan",
    "Stop",
    "decode_batch",
    "decode_head_file",
    "decode_recovery_point",
    "diagnose",
    "encode_frame",
    "encode_frames",
    "encode_head_file",
    "encode_recovery_point",
    "frame_crc",
    "frame_size",
    "parse_segment_name",
    "scan_frames",
    "segment_name",
    "walk_frames",
]

HEADER = struct.Struct("<II")
HEADER_SIZE = 8
LENGTH = struct.Struct("<I")
HEAD_FILE = struct.Struct("<QI")
_HEAD_LSN = struct.Struct("<Q")
HEAD_FILE_SIZE = 12
HEAD_FILE_NAME = "head"
SEGMENT_NAME_DIGITS = 20
SEGMENT_SUFFIX = ".wal"

assert HEADER.size == HEADER_SIZE
assert LENGTH.size == HEADER_SIZE - 4
assert HEAD_FILE.size == HEAD_FILE_SIZE

RECOVERY_FILE_NAME = "recovery"
RECOVERY_POINT_SIZE = 48
_RECOVERY_MAGIC = b"mmwalRP1"
_RECOVERY_BODY = struct.Struct("<8sQQIIQI")
_RECOVERY_CRC = struct.Struct("<I")
assert _RECOVERY_BODY.size + _RECOVERY_CRC.size == RECOVERY_POINT_SIZE

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_pack_length = LENGTH.pack

# The CRC covers the length field before the payload. Continuing the CRC from the
# value over those four bytes avoids joining them to the payload; the values for
# the lengths a log actually uses are cached (bounded, so hostile lengths cannot
# grow it without limit).
_LENGTH_CRC_CACHE_LIMIT = 65536
_length_crc: dict[int, int] = {}


def _crc_after_length(length: int) -> int:
    value = _length_crc.get(length)
    if value is None:
        value = crc32c(_pack_length(length))
        if len(_length_crc) < _LENGTH_CRC_CACHE_LIMIT:
            _length_crc[length] = value
    return value


class Record(NamedTuple):
    """One record of a log: where its frame starts and its payload.

    ``data`` is ``bytes``, except from the zero-copy reads (``copy=False``), which
    yield a read-only ``memoryview`` into the mapping instead.
    """

    lsn: int
    data: bytes

    @property
    def end(self) -> int:
        """The LSN just past this record: where the next one starts, to resume from."""
        return self.lsn + HEADER_SIZE + len(self.data)


def frame_size(payload_length: int) -> int:
    """Return the bytes a frame of ``payload_length`` occupies in the log."""
    return HEADER_SIZE + payload_length


def frame_crc(payload: bytes | bytearray | memoryview | mmap.mmap) -> int:
    """Return the CRC-32C a frame of ``payload`` carries: over the length, then the payload."""
    return crc32c(payload, _crc_after_length(len(payload)))


def _encode_frame_python(payload: bytes) -> bytes:
    """Return the frame of ``payload``: header then payload."""
    length = len(payload)
    seed = _length_crc.get(length)
    if seed is None:
        seed = _crc_after_length(length)
    return _pack_header(crc32c(payload, seed), length) + payload


def _encode_frames_python(payloads: list[bytes]) -> bytes:
    """Return the frames of ``payloads`` back to back, as repeated appends lay them out."""
    parts: list[bytes] = []
    add = parts.append
    for payload in payloads:
        length = len(payload)
        add(_pack_header(crc32c(payload, _crc_after_length(length)), length))
        add(payload)
    return b"".join(parts)


if _speedups is not None:
    encode_frame = _speedups.encode_frame
    encode_frames = _speedups.encode_frames
else:
    encode_frame = _encode_frame_python
    encode_frames = _encode_frames_python


class Stop(enum.Enum):
    """Why a scan stopped before its limit."""

    SHORT_HEADER = "the buffer ends inside a header"
    SHORT_PAYLOAD = "the buffer ends inside the payload"
    ZERO_HEADER = "an all-zero header (the end of the log)"
    BAD_LENGTH = "implausible length"
    BAD_CRC = "checksum mismatch"


class Scan(NamedTuple):
    """The outcome of ``scan_frames``.

    ``end`` is the log offset just past the last good frame; ``stop`` is ``None``
    when the scan reached its limit exactly, else why it stopped at ``end``;
    ``length`` is the length field of the frame at ``end`` when one could be read.
    """

    records: list[Record]
    end: int
    stop: Stop | None
    length: int


def diagnose(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    pos: int,
    limit: int,
    max_record_size: int,
) -> tuple[Stop, int]:
    """Say why the frame at ``buf[pos]`` is not a good frame ending within ``limit``."""
    if pos + HEADER_SIZE > limit:
        return Stop.SHORT_HEADER, 0
    crc, length = _unpack_header(buf, pos)
    if length > max_record_size:
        return Stop.BAD_LENGTH, length
    if pos + HEADER_SIZE + length > limit:
        return Stop.SHORT_PAYLOAD, length
    if crc == 0 and length == 0:
        return Stop.ZERO_HEADER, 0
    return Stop.BAD_CRC, length


def decode_batch(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int,
    limit: int,
    *,
    base: int = 0,
    max_record_size: int,
    max_records: int,
    max_bytes: int = -1,
) -> tuple[list[Record], int]:
    """Decode up to ``max_records`` good frames of ``buf[start:limit]``.

    Returns the records and the log offset where decoding stopped: at the first
    frame that is not good (``diagnose`` says why), at ``limit``, after
    ``max_records`` frames, or once ``max_bytes`` bytes of frames were decoded
    (a negative bound means no bound).
    """
    if _speedups is None:
        return _decode_batch_python(
            buf, start, limit, base, max_record_size, max_records, max_bytes
        )
    records, stop, _ = _speedups.scan(
        buf, start, limit, base, max_record_size, Record, max_records, max_bytes
    )
    assert records is not None
    return records, base + stop


def _decode_batch_python(  # noqa: PLR0917 - the hot loop takes its inputs positionally
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int,
    limit: int,
    base: int,
    max_record_size: int,
    max_records: int,
    max_bytes: int = -1,
) -> tuple[list[Record], int]:
    """Do what ``decode_batch`` does, in Python: the reference the C walk must match."""
    # The hot loop of every replay without the C walk: each name is bound
    # locally, and every way a frame can fail leads to the same ``break``.
    records: list[Record] = []
    add = records.append
    unpack = _unpack_header
    seeds = _length_crc
    seed_for = _crc_after_length
    check = crc32c
    make = tuple.__new__
    record_type = Record
    copy = not isinstance(buf, bytes | mmap.mmap)
    header_limit = limit - HEADER_SIZE
    pos = start
    byte_limit = limit if max_bytes < 0 else start + max_bytes
    while pos <= header_limit and pos < byte_limit and len(records) != max_records:
        crc, length = unpack(buf, pos)
        payload_start = pos + HEADER_SIZE
        end = payload_start + length
        if length > max_record_size or end > limit:
            break
        seed = seeds.get(length)
        if seed is None:
            seed = seed_for(length)
        payload = buf[payload_start:end]
        if check(payload, seed) != crc:
            break
        add(make(record_type, (base + pos, bytes(payload) if copy else payload)))
        pos = end
    return records, base + pos


def walk_frames(  # noqa: PLR0917 - one call per batch, all of it state
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int,
    limit: int,
    base: int,
    max_record_size: int,
    max_records: int,
    max_bytes: int,
) -> tuple[bytes, bytes, bytes, int]:
    """Check the good frames of ``buf[start:limit]`` without copying a payload.

    Returns ``(lsns, offsets, lengths, stop)``: native int64 arrays as bytes, one
    value per good frame (its LSN ``base + offset``, the buffer offset of its
    payload, its payload length), and the buffer offset where the walk stopped,
    bounded as ``decode_batch`` is.
    """
    if _speedups is None:
        return _walk_frames_python(buf, start, limit, base, max_record_size, max_records, max_bytes)
    return _speedups.frames(buf, start, limit, base, max_record_size, max_records, max_bytes)


def _walk_frames_python(  # noqa: PLR0917 - the reference takes the C call's arguments
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int,
    limit: int,
    base: int,
    max_record_size: int,
    max_records: int,
    max_bytes: int,
) -> tuple[bytes, bytes, bytes, int]:
    """Do what ``walk_frames`` does, in Python: the reference the C walk must match."""
    lsns = array.array("q")
    offsets = array.array("q")
    lengths = array.array("q")
    unpack = _unpack_header
    seed_for = _crc_after_length
    check = crc32c
    start = max(start, 0)
    limit = min(limit, len(buf))
    header_limit = limit - HEADER_SIZE
    pos = start
    with memoryview(buf) as whole, whole.cast("B") as view:
        while (
            len(lsns) != max_records
            and pos <= header_limit
            and (max_bytes < 0 or pos - start < max_bytes)
        ):
            crc, length = unpack(view, pos)
            payload_start = pos + HEADER_SIZE
            end = payload_start + length
            if length > max_record_size or end > limit:
                break
            if check(view[payload_start:end], seed_for(length)) != crc:
                break
            lsns.append(base + pos)
            offsets.append(payload_start)
            lengths.append(length)
            pos = end
    return lsns.tobytes(), offsets.tobytes(), lengths.tobytes(), pos


def _verify(
    view: memoryview,
    pos: int,
    limit: int,
    max_record_size: int,
    max_records: int,
) -> tuple[int, int]:
    """Check good frames from ``pos`` without copying; return ``(stop, frames checked)``."""
    if _speedups is not None:
        _, stop, walked = _speedups.scan(
            view, pos, limit, 0, max_record_size, None, max_records, -1
        )
        return stop, walked
    return _verify_python(view, pos, limit, max_record_size, max_records)


def _verify_python(
    view: memoryview,
    pos: int,
    limit: int,
    max_record_size: int,
    max_records: int,
) -> tuple[int, int]:
    """Do what ``_verify`` does, in Python: the reference the C walk must match."""
    unpack = _unpack_header
    seeds = _length_crc
    seed_for = _crc_after_length
    check = crc32c
    header_limit = limit - HEADER_SIZE
    checked = 0
    while checked != max_records and pos <= header_limit:
        crc, length = unpack(view, pos)
        start = pos + HEADER_SIZE
        end = start + length
        if length > max_record_size or end > limit:
            break
        seed = seeds.get(length)
        if seed is None:
            seed = seed_for(length)
        if check(view[start:end], seed) != crc:
            break
        pos = end
        checked += 1
    return pos, checked


def scan_frames(
    buf: bytes | bytearray | memoryview | mmap.mmap,
    start: int,
    limit: int,
    *,
    base: int = 0,
    max_record_size: int,
    collect: bool = True,
    max_records: int = -1,
) -> Scan:
    """Walk the frames of ``buf[start:limit]`` in order, checking each one.

    ``buf[i]`` is log offset ``base + i``; LSNs in the result are log offsets.
    A length above ``max_record_size`` stops the scan before any payload byte is
    touched, so hostile bytes never drive an allocation. With ``collect`` false
    nothing is copied and ``records`` is empty (recovery only needs the end).
    ``max_records`` (when not negative) bounds how many frames one call checks.
    """
    if collect:
        records, end = decode_batch(
            buf,
            start,
            limit,
            base=base,
            max_record_size=max_record_size,
            max_records=max_records,
        )
        pos = end - base
        checked = len(records)
    else:
        records = []
        with memoryview(buf) as view:
            pos, checked = _verify(view, start, limit, max_record_size, max_records)
    if pos >= limit or checked == max_records:
        return Scan(records, base + pos, None, 0)
    stop, length = diagnose(buf, pos, limit, max_record_size)
    return Scan(records, base + pos, stop, length)


def encode_head_file(head_lsn: int) -> bytes:
    """Return the 12 bytes of a head file naming ``head_lsn``."""
    head = _HEAD_LSN.pack(head_lsn)
    return HEAD_FILE.pack(head_lsn, crc32c(head))


def decode_head_file(data: bytes) -> int:
    """Return the head LSN a head file names; missing, short or bad-CRC data means 0."""
    if len(data) < HEAD_FILE_SIZE:
        return 0
    head_lsn, crc = HEAD_FILE.unpack_from(data, 0)
    if crc32c(bytes(data[:8])) != crc:
        return 0
    return int(head_lsn)


def segment_name(index: int) -> str:
    """Return the file name of segment ``index``."""
    if index < 0:
        raise ValueError(f"segment index must not be negative, got {index}")
    return f"{index:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """Return the index a segment file name carries, or ``None`` for any other name."""
    digits = name.removesuffix(SEGMENT_SUFFIX)
    if len(digits) != SEGMENT_NAME_DIGITS or digits == name:
        return None
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


class RecoveryPoint(NamedTuple):
    """How far a log was known durable, and the record that identifies that log.

    Every byte below ``end`` was on stable storage when the point was written;
    ``end`` is where the record at ``last_lsn`` (with CRC field ``last_crc`` and
    length ``last_length``) ends. ``unit_size`` is the store's unit size then.
    """

    end: int
    last_lsn: int
    last_crc: int
    last_length: int
    unit_size: int


def encode_recovery_point(point: RecoveryPoint) -> bytes:
    """Return the bytes of a recovery point file naming ``point``."""
    if point.end != point.last_lsn + HEADER_SIZE + point.last_length:
        raise ValueError(f"a recovery point must end where its record ends: {point}")
    body = _RECOVERY_BODY.pack(
        _RECOVERY_MAGIC,
        point.end,
        point.last_lsn,
        point.last_crc,
        point.last_length,
        point.unit_size,
        0,
    )
    return body + _RECOVERY_CRC.pack(crc32c(body))


def decode_recovery_point(data: bytes) -> RecoveryPoint | None:
    """Return the point a recovery point file names; None unless it is whole and checks."""
    if len(data) != RECOVERY_POINT_SIZE:
        return None
    body = bytes(data[: _RECOVERY_BODY.size])
    (crc,) = _RECOVERY_CRC.unpack_from(data, _RECOVERY_BODY.size)
    if crc32c(body) != crc:
        return None
    magic, end, last_lsn, last_crc, last_length, unit_size, _ = _RECOVERY_BODY.unpack(body)
    if magic != _RECOVERY_MAGIC or end != last_lsn + HEADER_SIZE + last_length:
        return None
    return RecoveryPoint(end, last_lsn, last_crc, last_length, unit_size)
