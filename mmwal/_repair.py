"""``repair``: the explicit way forward for a log that opening refuses.

Opening never wipes what it cannot read. ``repair`` is what a person runs after
reading the refusal: it keeps every byte it cannot make part of the log in a
quarantine file (or renames a segment so it no longer counts), keeps every
record it can, and reports each thing it did. It never runs implicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._config import WalConfig
from ._filestore import FileStore
from ._format import (
    HEAD_FILE_NAME,
    decode_head_file,
    encode_head_file,
    parse_segment_name,
    scan_frames,
    segment_name,
)
from ._recovery import recover
from ._segstore import SegmentStore, infer_segment_size
from ._store import Store
from ._syscalls import Syscalls

__all__ = ["RepairReport", "repair"]

QUARANTINE_SUFFIX = ".quarantine"

# The largest length a frame can carry (a u32 field).
_LENGTH_FIELD_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class RepairReport:
    """What ``repair`` did: the log's head and end after it, and every action."""

    path: str
    head: int
    end: int
    quarantined: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def repair(
    path: str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    config: WalConfig | None = None,
) -> RepairReport:
    """Make the log at ``path`` open again, keeping what is readable and quarantining the rest.

    For a segmented log, segments after a gap in the numbering are renamed with a
    ``.quarantine`` suffix, and a head that lies in a missing segment is moved to
    the first record found in the first segment present. Then, for any log, the
    bytes from the first frame that fails its check to the last nonzero byte are
    copied to a quarantine file beside the log and zeroed, durably.

    Crash cost: none; each step is durable before the next, and a crash during
    repair leaves a log that ``repair`` can be run on again.
    """
    config = config if config is not None else WalConfig()
    location = os.fspath(path)
    actions: list[str] = []
    quarantined: list[str] = []
    syscalls = Syscalls()
    store: Store
    if os.path.isdir(location):
        _repair_segment_files(
            location,
            segment_size,
            config=config,
            syscalls=syscalls,
            actions=actions,
            quarantined=quarantined,
        )
        store = SegmentStore(location, segment_size, syscalls=syscalls)
    else:
        store = FileStore(location, syscalls=syscalls)
    try:
        report = recover(store, config, refuse_foreign=False)
        if report.discarded_bytes:
            reason = report.stop.value if report.stop else "end of store"
            actions.append(
                f"kept {report.discarded_bytes} bytes from LSN {report.end}, past the last "
                f"intact record ({reason}), in {report.quarantine_path} and zeroed them"
            )
            if report.quarantine_path is not None:
                quarantined.append(report.quarantine_path)
        if not actions:
            actions.append("nothing to repair: the log opens as it is")
        return RepairReport(location, report.head, report.end, quarantined, actions)
    finally:
        store.close()


def _repair_segment_files(
    directory: str,
    segment_size: int | None,
    *,
    config: WalConfig,
    syscalls: Syscalls,
    actions: list[str],
    quarantined: list[str],
) -> None:
    """Rename segments after a gap; move a head that lies in a missing segment."""
    indices = sorted(
        index for name in os.listdir(directory) if (index := parse_segment_name(name)) is not None
    )
    if not indices:
        return
    paths = [os.path.join(directory, segment_name(index)) for index in indices]
    size = infer_segment_size(
        [(os.path.basename(p), os.path.getsize(p)) for p in paths], segment_size
    )
    contiguous = 1
    while contiguous < len(indices) and indices[contiguous] == indices[contiguous - 1] + 1:
        contiguous += 1
    for path in paths[contiguous:]:
        target = path + QUARANTINE_SUFFIX
        syscalls.replace(path, target)
        quarantined.append(target)
        actions.append(f"renamed {os.path.basename(path)}, which lies after a gap, to {target}")
    if contiguous < len(indices):
        syscalls.fsync_directory(directory)
    head_path = os.path.join(directory, HEAD_FILE_NAME)
    try:
        with open(head_path, "rb") as head_file:
            head = decode_head_file(head_file.read(64))
    except FileNotFoundError:
        head = 0
    first = indices[0]
    if head // size >= first:
        return
    present = indices[:contiguous]
    new_head = _first_frame(directory, present, size, config)
    if new_head is None:
        # No record to start from: keep the segments aside, start empty after them.
        for index in present:
            source = os.path.join(directory, segment_name(index))
            syscalls.replace(source, source + QUARANTINE_SUFFIX)
            quarantined.append(source + QUARANTINE_SUFFIX)
        new_head = (present[-1] + 1) * size
        actions.append(
            f"no intact record starts in {segment_name(first)}: renamed the segments "
            f"present to *{QUARANTINE_SUFFIX}"
        )
    temporary = head_path + ".tmp"
    with open(temporary, "wb") as head_file:
        head_file.write(encode_head_file(new_head))
        head_file.flush()
        syscalls.fsync(head_file.fileno())
    syscalls.replace(temporary, head_path)
    syscalls.fsync_directory(directory)
    actions.append(
        f"the segment holding the head (LSN {head}) is missing: wrote a head file naming "
        f"LSN {new_head}, the first intact record in {segment_name(first)}"
    )


def _first_frame(directory: str, indices: list[int], size: int, config: WalConfig) -> int | None:
    """Return the first offset in the first segment at which an intact frame starts.

    A record may begin in a missing segment and end in the first one present, so
    the first segment may start mid-record: every offset is tried in turn. A frame
    is looked for within the first two segments; None when there is none.
    """
    first = indices[0]
    data = b""
    for index in indices[:2]:
        with open(os.path.join(directory, segment_name(index)), "rb") as segment:
            data += segment.read()
    del config  # every frame in memory is checked whole, whatever today's limit
    for offset in range(min(size, len(data))):
        scan = scan_frames(
            data,
            offset,
            len(data),
            max_record_size=_LENGTH_FIELD_MAX,
            collect=False,
            max_records=1,
        )
        if scan.stop is None and scan.end > offset:
            return first * size + offset
    return None
