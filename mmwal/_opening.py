"""Opening a log: checks before it, and the retries of a read-only segmented open.

The checks say what is at the path and whether the sizes can work. Each turns a
failure that would otherwise come late or bare (``ENOSPC`` at the first append,
``OverflowError`` from ``mmap``, a ``FileExistsError`` with no word about what
exists) into an error at open that says what is wrong and what to do. None of
them changes anything on disk.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._config import WalConfig
from ._segstore import SegmentStore

if TYPE_CHECKING:
    from ._archive import Archive
    from ._wal import Wal

__all__ = ["check_segment_size", "check_single_file_path", "explain_permission", "open_segmented"]

# How often a read-only open of a segmented log starts again when a live writer's
# truncation removed a segment under it.
_READ_ONLY_OPEN_ATTEMPTS = 100


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    scaled = float(count)
    units = ["KiB", "MiB", "GiB", "TiB"]
    scaled /= 1024
    while scaled >= 1024 and len(units) > 1:
        scaled /= 1024
        units.pop(0)
    return f"{scaled:.1f} {units[0]}"


def _existing_ancestor(path: str) -> str:
    """Return ``path`` or its nearest ancestor that exists (where a new log would go)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_segment_size(directory: str, segment_size: int | None, *, writable: bool) -> None:
    """Refuse a ``segment_size`` the file system holding ``directory`` cannot back.

    A segment is one file of exactly ``segment_size`` bytes, reserved whole with
    ``posix_fallocate`` when it is created: larger than the largest file the file
    system allows, or than the file system itself, it can never be created
    (``ValueError``); larger than the free space, the first segment of a new log
    cannot be created (``OSError`` ``ENOSPC``, raised here rather than at the first
    append).
    """
    if segment_size is None or isinstance(segment_size, bool) or not isinstance(segment_size, int):
        return  # inferred from the files, or a type error the store reports
    if segment_size <= 0:
        return  # the store names the rule
    if segment_size > sys.maxsize:
        raise ValueError(
            f"segment_size={segment_size} is larger than this platform can map "
            f"({sys.maxsize} bytes) (hint: segments of 64 MiB to 1 GiB are usual)"
        )
    where = _existing_ancestor(directory)
    with contextlib.suppress(OSError, ValueError):
        bits = os.pathconf(where, "PC_FILESIZEBITS")
        if 0 < bits < 64 and segment_size > (1 << (bits - 1)) - 1:
            raise ValueError(
                f"segment_size={segment_size} exceeds the largest file the file system "
                f"holding {where} allows (hint: use a smaller segment_size)"
            )
    try:
        stats = os.statvfs(where)
    except OSError:
        return
    total = stats.f_blocks * stats.f_frsize
    if segment_size > total:
        raise ValueError(
            f"segment_size={segment_size} ({_size(segment_size)}) is larger than the whole "
            f"file system holding {where} ({_size(total)}); every segment is a file of "
            f"exactly that size (hint: segments of 64 MiB to 1 GiB are usual)"
        )
    free = stats.f_bavail * stats.f_frsize
    if writable and segment_size > free and not _has_segments(directory):
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: segment_size={segment_size} ({_size(segment_size)}) "
            f"is more than the {_size(free)} free on the file system holding {where}, so "
            f"the first segment cannot be created (hint: free space or use a smaller "
            f"segment_size)",
            directory,
        )


def _has_segments(directory: str) -> bool:
    try:
        return any(name.endswith(".wal") for name in os.listdir(directory))
    except OSError:
        return False


def check_single_file_path(path: str) -> None:
    """Refuse to treat a single-file log as a directory of segments, saying what is there."""
    if os.path.isfile(path):
        raise FileExistsError(
            errno.EEXIST,
            f"File exists: {path} is a file ({os.path.getsize(path)} bytes, a single-file "
            f"log if mmwal wrote it), not a directory of segments (hint: open it without "
            f"segment_size, or choose a directory path for a segmented log)",
            path,
        )


@contextlib.contextmanager
def explain_permission(path: str, *, writable: bool) -> Iterator[None]:
    """Add to a ``PermissionError`` of a writable open that ``readonly=True`` may work."""
    try:
        yield
    except PermissionError as error:
        if not writable or not os.path.exists(path):
            raise
        raise PermissionError(
            error.errno,
            f"{error.strerror}: cannot open {path} for writing (hint: open it with "
            f"readonly=True to read the log without writing; a writer needs write "
            f"permission on the log and its directory)",
            error.filename,
        ) from error


def open_segmented(
    wal_type: type[Wal],
    directory: str | os.PathLike[str],
    segment_size: int | None,
    config: WalConfig | None,
    *,
    readonly: bool,
    archive: Archive | None,
    file_mode: int,
) -> Wal:
    """Open or create the segmented log in ``directory``; see ``Wal.open_segmented``."""
    location = os.fspath(directory)
    check_single_file_path(location)
    check_segment_size(location, segment_size, writable=not readonly)
    for attempt in itertools.count(1):
        with explain_permission(location, writable=not readonly):
            store = SegmentStore(
                location,
                segment_size,
                writable=not readonly,
                allow_copy_on_write=config is not None and config.allow_copy_on_write,
                file_mode=file_mode,
                sync_method=(config or WalConfig()).sync_method,
            )
        try:
            wal = wal_type(store, config)
        except FileNotFoundError:
            # A live writer's truncate_before removed a segment this read-only
            # open was about to read (segments are mapped when first read):
            # take the view again, as SegmentStore does for its listing.
            if not readonly or attempt == _READ_ONLY_OPEN_ATTEMPTS:
                raise
            continue
        break
    if archive is not None:
        from ._archiver import Archiver  # noqa: PLC0415 - imports this module

        try:
            wal._archiver = Archiver(wal, archive)
        except BaseException:
            wal.close()
            raise
    return wal
