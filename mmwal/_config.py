"""Options of a log: the record size limit and what recovery does with damage."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._syscalls import DEFAULT_SYNC_METHOD, check_sync_method

__all__ = ["DEFAULT_MAX_RECORD_SIZE", "RecoveryPolicy", "WalConfig"]

DEFAULT_MAX_RECORD_SIZE = 64 * 1024 * 1024

# The length field is a u32, so no frame can claim more.
_LENGTH_FIELD_MAX = 0xFFFF_FFFF


class RecoveryPolicy(enum.Enum):
    """What opening and iterating do when a record fails its check.

    ``STOP_AT_FIRST_ERROR`` (the default, and wal-db's behaviour): on open, the first
    bad frame past the recovery point is the end of the log and everything after it
    is discarded (quarantined); a bad frame below the point is damage: a writable
    open that meets it raises ``CorruptionError``, and iteration that reaches it
    raises ``CorruptionError``.

    ``SKIP_BAD_RECORDS``: a damaged record whose length is plausible is stepped over
    and reported, and the intact records after it are kept. Crash cost: a record
    torn by a crash that lies before intact records is kept as a skipped record, and
    intact records that were written back out of order after a torn one (which the
    default policy discards as ghosts) come back. Choose it for bit-rot tolerance on
    media you trust to write in order, not as a crash-recovery mode.
    """

    STOP_AT_FIRST_ERROR = "stop_at_first_error"
    SKIP_BAD_RECORDS = "skip_bad_records"


@dataclass(frozen=True, slots=True)
class WalConfig:
    """Options of one open log.

    ``max_record_size`` bounds every payload ``append`` accepts. A length above it
    on disk never drives an allocation: the frame is checked in place first, and
    is a record when its CRC checks (so opening a log with a smaller limit than it
    was written with reads its larger records), else the end of the log.

    ``allow_copy_on_write`` lets a writable open go ahead on a copy-on-write file
    system where mmwal cannot make preallocation hold (ZFS, bcachefs, NILFS2, or
    btrfs files without NOCOW). Crash cost: on such a file system a full disk can
    crash the process with SIGBUS in the middle of an append instead of raising
    ``OSError``; records synced before it stay durable.

    ``sync_method`` is how ``sync`` makes the flushed range of a file durable:
    ``"fdatasync"`` (the default: every dirty page of the file, the range among
    them; a segmented log keeps one descriptor open for it) or ``"msync"``
    (``msync(MS_SYNC)`` of the range). Crash cost: the same for both, nothing
    ``sync`` returned for is lost. ``fdatasync`` cost less per commit where
    measured (Linux 6.18, ext4; docs/DESIGN.md). On macOS both are ``msync``
    then ``F_FULLFSYNC``.
    """

    max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    recovery_policy: RecoveryPolicy = RecoveryPolicy.STOP_AT_FIRST_ERROR
    allow_copy_on_write: bool = False
    sync_method: str = DEFAULT_SYNC_METHOD

    def __post_init__(self) -> None:
        if isinstance(self.max_record_size, bool) or not isinstance(self.max_record_size, int):
            raise TypeError(
                f"max_record_size must be an int, not {type(self.max_record_size).__name__}"
            )
        if not 0 <= self.max_record_size <= _LENGTH_FIELD_MAX:
            raise ValueError(
                f"max_record_size must be between 0 and {_LENGTH_FIELD_MAX} "
                f"(the length field is a u32), got {self.max_record_size}"
            )
        check_sync_method(self.sync_method)
        if not isinstance(self.recovery_policy, RecoveryPolicy):
            raise TypeError(
                f"recovery_policy must be a RecoveryPolicy, not {self.recovery_policy!r}"
            )
