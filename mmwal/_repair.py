"""``repair``: the explicit way forward for a log that opening refuses.

Opening never wipes what it cannot read. ``repair`` is what a person runs after
reading the refusal: it keeps every byte it cannot make part of the log in a
quarantine file (or renames a segment so it no longer counts), keeps every
record it can, and reports each thing it did. It never runs implicitly.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from ._config import WalConfig
from ._errors import CorruptionError
from ._files import DEFAULT_FILE_MODE, check_file_mode, read_small_file, replace_file
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
from ._segment_size import infer_segment_size
from ._segstore import SegmentStore
from ._store import Store
from ._syscalls import Syscalls
from ._verify import verify

__all__ = ["RepairReport", "repair"]

QUARANTINE_SUFFIX = ".quarantine"

# The largest length a frame can carry (a u32 field).
_LENGTH_FIELD_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class RepairReport:
    """What ``repair`` did: the log's head and end after it, and every action.

    For a dry run of a segmented log that needs its files renamed, ``head`` and
    ``end`` are -1: they depend on the renaming, which a dry run does not do.
    """

    path: str
    head: int
    end: int
    quarantined: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    #: Whether this reports what a dry run would have done (nothing was changed).
    dry_run: bool = False


def repair(
    path: str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    config: WalConfig | None = None,
    dry_run: bool = False,
    force: bool = False,
    file_mode: int = DEFAULT_FILE_MODE,
) -> RepairReport:
    """Make the log at ``path`` open again, keeping what is readable and quarantining the rest.

    For a segmented log, segments after a gap in the numbering are renamed with a
    ``.quarantine`` suffix, and a head that lies in a missing segment is moved to
    the first record found in the first segment present. Then, for any log, the
    bytes from the first frame that fails its check to the last nonzero byte are
    copied to a quarantine file beside the log and zeroed, durably.

    A file that holds bytes but no record mmwal could keep (not a log: a JSON
    file, a database, a log whose first record is damaged) is refused with
    ``CorruptionError`` and left as it is, unless ``force=True``: repairing it would
    move every byte to quarantine and leave an empty log in its place.
    ``dry_run=True`` changes nothing and reports what repair would do.

    Crash cost: none; each step is durable before the next, and a crash during
    repair leaves a log that ``repair`` can be run on again. Files it creates get
    ``file_mode`` (``0o600`` unless told otherwise); a name already taken (a file
    or a symlink) is never overwritten or followed: the next free name is used.
    """
    config = config if config is not None else WalConfig()
    check_file_mode(file_mode)
    location = os.fspath(path)
    if not os.path.exists(location):
        raise FileNotFoundError(errno.ENOENT, f"no log at {location} to repair", location)
    actions: list[str] = []
    quarantined: list[str] = []
    syscalls = Syscalls()
    segmented = os.path.isdir(location)
    if not force:
        _refuse_what_is_not_a_log(location, segment_size, config)
    store: Store
    if segmented:
        _repair_segment_files(
            location,
            segment_size,
            config=config,
            syscalls=syscalls,
            actions=actions,
            quarantined=quarantined,
            dry_run=dry_run,
            file_mode=file_mode,
        )
        if dry_run and actions:
            actions.append("then would check the records again (not shown: it depends on those)")
            return RepairReport(location, -1, -1, quarantined, actions, dry_run=True)
        store = SegmentStore(
            location,
            segment_size,
            syscalls=syscalls,
            writable=not dry_run,
            allow_copy_on_write=config.allow_copy_on_write,
            file_mode=file_mode,
        )
    else:
        store = FileStore(
            location,
            syscalls=syscalls,
            writable=not dry_run,
            allow_copy_on_write=config.allow_copy_on_write,
            file_mode=file_mode,
        )
    try:
        # Counted before recovery zeroes them: the intact records past each damage.
        intact_after = _intact_after_damage(location, segment_size, config)
        report = recover(store, config, refuse_foreign=False)
        if report.discarded_bytes:
            reason = report.stop.value if report.stop else "end of store"
            lost = intact_after.get(report.end, 0)
            where = (
                f"a damaged record ({reason}) and the {lost} intact records after it"
                if lost
                else f"past the last intact record ({reason})"
            )
            if dry_run:
                actions.append(
                    f"would keep {report.discarded_bytes} bytes from LSN {report.end}, "
                    f"{where}, in a quarantine file beside the log and zero them"
                )
            else:
                actions.append(
                    f"kept {report.discarded_bytes} bytes from LSN {report.end}, {where}, "
                    f"in {report.quarantine_path} and zeroed them"
                )
            if report.quarantine_path is not None:
                quarantined.append(report.quarantine_path)
        if not actions:
            actions.append("nothing to repair: the log opens as it is")
        return RepairReport(
            location, report.head, report.end, quarantined, actions, dry_run=dry_run
        )
    finally:
        store.close()


def _intact_after_damage(
    location: str, segment_size: int | None, config: WalConfig
) -> dict[int, int]:
    """Map each damaged record's LSN to the number of intact records after it.

    Repair cuts the log at the first damage: the records after it leave the log
    with it (into the quarantine file), and its report must say so. Empty when
    the log cannot be read at all.
    """
    try:
        found = verify(location, segment_size=segment_size, config=config)
    except (CorruptionError, OSError, ValueError):
        return {}
    return {damage.lsn: damage.intact_after for damage in found.damage}


def _refuse_what_is_not_a_log(location: str, segment_size: int | None, config: WalConfig) -> None:
    """Raise ``CorruptionError`` if repair would keep no record of nonzero bytes.

    That is what opening refuses as "not a log" (no valid record at the head,
    nonzero bytes beyond what a crash explains). Checked on a read-only store, so
    it changes nothing; a directory the read-only open cannot take (a missing
    segment) is left to the repair steps.
    """
    try:
        store: Store = (
            SegmentStore(location, segment_size, writable=False)
            if os.path.isdir(location)
            else FileStore(location, writable=False)
        )
    except (CorruptionError, ValueError):
        return
    try:
        try:
            recover(store, config)
        except CorruptionError as refusal:
            report = recover(store, config, refuse_foreign=False)
            if report.end == report.head and report.discarded_bytes:
                raise CorruptionError(
                    refusal.offset,
                    f"repair would keep no record and move all {report.discarded_bytes} "
                    f"nonzero bytes to quarantine, leaving an empty log: this is not an "
                    f"mmwal/wal-db log, or its first record is damaged",
                    path=location,
                    hint="nothing was changed; check the path and max_record_size, and "
                    "pass force=True (--force) only if it is a log whose start is damaged",
                ) from refusal
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
    dry_run: bool = False,
    file_mode: int,
) -> None:
    """Rename segments after a gap; move a head that lies in a missing segment.

    With ``dry_run``, only say what would be done.
    """
    would = "would rename" if dry_run else "renamed"
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
        target = _free_name(path + QUARANTINE_SUFFIX)
        if not dry_run:
            syscalls.replace(path, target)
        quarantined.append(target)
        actions.append(f"{would} {os.path.basename(path)}, which lies after a gap, to {target}")
    if contiguous < len(indices) and not dry_run:
        syscalls.fsync_directory(directory)
    head_path = os.path.join(directory, HEAD_FILE_NAME)
    data = read_small_file(head_path, 64)
    head = 0 if data is None else decode_head_file(data)
    first = indices[0]
    if head // size >= first:
        return
    present = indices[:contiguous]
    new_head = _first_frame(directory, present, size, config)
    if new_head is None:
        # No record to start from: keep the segments aside, start empty after them.
        for index in present:
            source = os.path.join(directory, segment_name(index))
            target = _free_name(source + QUARANTINE_SUFFIX)
            if not dry_run:
                syscalls.replace(source, target)
            quarantined.append(target)
        new_head = (present[-1] + 1) * size
        actions.append(
            f"no intact record starts in {segment_name(first)}: {would} the segments "
            f"present to *{QUARANTINE_SUFFIX}"
        )
    if dry_run:
        actions.append(
            f"the segment holding the head (LSN {head}) is missing: would write a head file "
            f"naming LSN {new_head}, the first intact record in {segment_name(first)}"
        )
        return
    replace_file(syscalls, directory, HEAD_FILE_NAME, encode_head_file(new_head), file_mode)
    actions.append(
        f"the segment holding the head (LSN {head}) is missing: wrote a head file naming "
        f"LSN {new_head}, the first intact record in {segment_name(first)}"
    )


def _free_name(base: str) -> str:
    """Return the first of ``base``, ``base.1``, ... that nothing (not even a symlink) has."""
    path = base
    attempt = 0
    while os.path.lexists(path):
        attempt += 1
        path = f"{base}.{attempt}"
    return path


def _first_frame(directory: str, indices: list[int], size: int, config: WalConfig) -> int | None:
    """Return the first offset in the first segment at which an intact frame starts.

    A record may begin in a missing segment and end in the first one present, so
    the first segment may start mid-record: every offset is tried in turn. A frame
    is looked for within the first two segments; None when there is none.
    """
    first = indices[0]
    data = b""
    for index in indices[:2]:
        data += read_small_file(os.path.join(directory, segment_name(index)), size) or b""
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
