"""mmwal: a write-ahead log on memory-mapped, preallocated segment files.

The on-disk format is the frozen 1.x format of the Rust crate wal-db. Start with
``mmwal.open(path)``; see ``Wal`` for the durability contract.
"""

import os

from . import codecs as codecs  # mmwal.codecs.Json() after a bare import mmwal
from ._archive import Archive, ArchivedSegment
from ._batches import RecordBatch
from ._config import RecoveryPolicy, WalConfig
from ._errors import (
    ArchiveConflictError,
    CorruptionError,
    InvalidLSNError,
    RecordTooLargeError,
    UnsafeFileSystemError,
    WalBrokenError,
    WalClosedError,
    WalError,
    WalLockedError,
    WalReadOnlyError,
    WalTruncatedError,
)
from ._filestore import FileStore
from ._format import Record
from ._iteration import WalIterator
from ._memstore import MemStore
from ._reading import RecoveryReport
from ._repair import RepairReport, repair
from ._segstore import SegmentStore
from ._store import Store
from ._syscalls import Syscalls
from ._typed import TypedRecord, TypedWal
from ._verify import Damage, VerifyReport, verify
from ._wal import Wal, WalStats

__all__ = [
    "Archive",
    "ArchiveConflictError",
    "ArchivedSegment",
    "CorruptionError",
    "Damage",
    "FileStore",
    "InvalidLSNError",
    "MemStore",
    "Record",
    "RecordBatch",
    "RecordTooLargeError",
    "RecoveryPolicy",
    "RecoveryReport",
    "RepairReport",
    "SegmentStore",
    "Store",
    "Syscalls",
    "TypedRecord",
    "TypedWal",
    "UnsafeFileSystemError",
    "VerifyReport",
    "Wal",
    "WalBrokenError",
    "WalClosedError",
    "WalConfig",
    "WalError",
    "WalIterator",
    "WalLockedError",
    "WalReadOnlyError",
    "WalStats",
    "WalTruncatedError",
    "open",
    "repair",
    "verify",
]

__version__ = "0.1.0"


def open(  # noqa: A001 - the natural name, as io.open and gzip.open
    path: str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    config: WalConfig | None = None,
    readonly: bool = False,
    archive: Archive | None = None,
    file_mode: int = 0o600,
) -> Wal:
    """Open or create a log: a directory or a ``segment_size`` means segmented.

    A path ending in a separator (``"orders/"``) names a directory, created if
    missing. Otherwise ``path`` is a single-file log. See ``Wal.open`` and
    ``Wal.open_segmented`` for what opening does and what a crash costs;
    ``archive`` (segmented logs only) archives sealed segments as they come.
    New files get ``file_mode`` (default ``0o600``: only the owner reads a log).
    """
    if (
        segment_size is not None
        or os.path.isdir(path)
        or _names_a_directory(path)
        or archive is not None
    ):
        return Wal.open_segmented(
            path, segment_size, config, readonly=readonly, archive=archive, file_mode=file_mode
        )
    return Wal.open(path, config, readonly=readonly, file_mode=file_mode)


def _names_a_directory(path: str | os.PathLike[str]) -> bool:
    location = os.fspath(path)
    return location.endswith((os.sep, os.altsep or os.sep))
