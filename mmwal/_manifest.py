"""The archive's layout and its manifest entries: names and bytes, no I/O.

An archive is a prefix (a directory, a bucket and key prefix) holding::

    segments/<index>-<token>.wal   one upload of segment <index>, under a key of its own
    manifest/<index>.json          the entry that publishes one of them, written last

A segment is in the archive exactly when its manifest entry is, and the entry
names the one object (verified before the entry was written) that holds it.
Every upload goes to a key no other upload uses, so an upload cut short never
touches a published object, and publishing needs no copy; objects no entry
names are leftovers of pushes cut short, removed by a later push. Each entry
carries a CRC-32C of its own fields, so a torn or edited entry is refused
instead of believed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ._crc import crc32c
from ._errors import CorruptionError
from ._format import parse_segment_name, segment_name

__all__ = [
    "MANIFEST_DIR",
    "SEGMENTS_DIR",
    "ArchivedSegment",
    "decode_entry",
    "encode_entry",
    "entry_name",
    "object_name",
    "parse_entry_name",
    "parse_object_name",
]

SEGMENTS_DIR = "segments"
MANIFEST_DIR = "manifest"
_ENTRY_SUFFIX = ".json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    """One segment in an archive, as its manifest entry describes it.

    ``first_lsn`` is the first record start at or after the segment's first byte
    (the log's head, for the first segment archived from a log whose head lies
    inside it); it may lie in a later segment when one record spans this one.
    ``next_record_lsn`` is the first record start at or after the segment's end.
    ``size`` and ``crc32c`` are those of the segment file's bytes; ``object_name``
    is the name of the object holding them, under ``segments/``.
    """

    index: int
    first_lsn: int
    size: int
    crc32c: int
    segment_size: int
    next_record_lsn: int
    object_name: str

    @property
    def start_lsn(self) -> int:
        """The log offset of the segment's first byte."""
        return self.index * self.segment_size

    @property
    def end_lsn(self) -> int:
        """The log offset just past the segment's last byte."""
        return self.start_lsn + self.size


def entry_name(index: int) -> str:
    """Return the manifest entry name of segment ``index``."""
    return segment_name(index).removesuffix(".wal") + _ENTRY_SUFFIX


def parse_entry_name(name: str) -> int | None:
    """Return the segment index a manifest entry name stands for, or ``None``."""
    if not name.endswith(_ENTRY_SUFFIX):
        return None
    return parse_segment_name(name.removesuffix(_ENTRY_SUFFIX) + ".wal")


def object_name(index: int, token: str) -> str:
    """Return the object name of one upload of segment ``index``."""
    return f"{segment_name(index).removesuffix('.wal')}-{token}.wal"


def parse_object_name(name: str) -> int | None:
    """Return the segment index an object name stands for, or ``None``."""
    index, separator, _ = name.partition("-")
    if not separator or not name.endswith(".wal"):
        return None
    return parse_segment_name(index + ".wal")


def _fields_crc(fields: dict[str, object]) -> int:
    return crc32c(json.dumps(fields, sort_keys=True).encode())


def encode_entry(segment: ArchivedSegment) -> bytes:
    """Return the bytes of the manifest entry of ``segment``."""
    fields = asdict(segment)
    document = {"format": _FORMAT, **fields, "entry_crc32c": _fields_crc(fields)}
    return json.dumps(document, sort_keys=True).encode()


def decode_entry(data: bytes, where: str) -> ArchivedSegment:
    """Parse a manifest entry; a torn, edited or foreign one is ``CorruptionError``."""
    try:
        document = json.loads(data)
        if document.pop("format") != _FORMAT:
            raise ValueError("unknown format")
        stored_crc = document.pop("entry_crc32c")
        segment = ArchivedSegment(
            index=int(document["index"]),
            first_lsn=int(document["first_lsn"]),
            size=int(document["size"]),
            crc32c=int(document["crc32c"]),
            segment_size=int(document["segment_size"]),
            next_record_lsn=int(document["next_record_lsn"]),
            object_name=str(document["object_name"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptionError(
            0,
            f"unreadable archive manifest entry ({error})",
            path=where,
            hint="an entry mmwal did not write, or a torn copy of one; remove it and "
            "push again to publish the segment anew",
        ) from None
    fields = asdict(segment)
    if (
        stored_crc != _fields_crc(fields)
        or document != fields
        or parse_object_name(segment.object_name) != segment.index
    ):
        raise CorruptionError(
            segment.start_lsn,
            "archive manifest entry fails its checksum",
            path=where,
            hint="the entry was edited or damaged; remove it and push again",
        )
    return segment
