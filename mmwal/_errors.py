"""The exceptions mmwal raises: one base class, each saying what happened and what to do."""

from __future__ import annotations

__all__ = [
    "ArchiveConflictError",
    "CorruptionError",
    "InvalidLSNError",
    "RecordTooLargeError",
    "UnsafeFileSystemError",
    "WalBrokenError",
    "WalClosedError",
    "WalError",
    "WalLockedError",
    "WalReadOnlyError",
    "WalTruncatedError",
]


class WalError(Exception):
    """Base class of every error mmwal raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # The default rebuilds an exception as ``cls(*args)``, but ``args`` holds
        # the formatted message, not the constructor's arguments: rebuild it from
        # its state instead, so errors cross process boundaries intact.
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(cls: type[WalError], args: tuple[object, ...], state: dict[str, object]) -> WalError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class RecordTooLargeError(WalError, ValueError):
    """A payload is longer than the log's ``max_record_size``; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"record of {size} bytes exceeds max_record_size={limit}; nothing was written "
            f"(hint: split the record, or open the log with a larger "
            f"WalConfig(max_record_size=...))"
        )


class CorruptionError(WalError):
    """Bytes that should hold a record do not; ``offset`` says where, ``reason`` why."""

    def __init__(
        self,
        offset: int,
        reason: str,
        *,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.offset = offset
        self.reason = reason
        self.path = path
        self.hint = hint
        where = f"at log offset {offset}" + (f" in {path}" if path else "")
        message = f"corrupt log {where}: {reason}"
        if hint:
            message += f" (hint: {hint})"
        super().__init__(message)


class WalClosedError(WalError):
    """The log (or the log an iterator reads) was closed by its owner."""

    def __init__(self, what: str = "log") -> None:
        self.what = what
        super().__init__(f"the {what} is closed (hint: open the log again to keep using it)")


class WalLockedError(WalError):
    """Another writer holds the log's lock; only one writer may have a log open."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is locked by another writer (hint: close the other Wal, or wait for "
            f"the process holding it to exit; one writer per log)"
        )


class WalBrokenError(WalError):
    """A flush or write failed, so durability is in doubt; the log refuses further writes.

    The failing ``OSError`` is the ``__cause__``. Do not retry: the kernel may have
    dropped the dirty pages already, so a later successful flush proves nothing.
    Reopen the log, which runs recovery and tells what is really on disk.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"the log is broken: {operation} failed, so what reached the disk is unknown "
            f"(hint: close it and reopen the log, which runs recovery)"
        )


class WalReadOnlyError(WalError):
    """The log was opened read-only; appending and truncating are refused."""

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(
            f"{location} is open read-only (hint: open it without readonly=True to write; "
            f"only one writer may have it open)"
        )


class InvalidLSNError(WalError, ValueError):
    """An LSN a caller passed is not one the call can take; nothing changed.

    A caller's mistake, not damage: ``lsn`` is what was passed, ``before`` and
    ``after`` the nearest LSNs the call would take (``None`` where there is none).
    """

    def __init__(
        self,
        lsn: int,
        reason: str,
        *,
        before: int | None = None,
        after: int | None = None,
    ) -> None:
        self.lsn = lsn
        self.reason = reason
        self.before = before
        self.after = after
        nearest = [
            f"{name} {value}"
            for name, value in (("before", before), ("after", after))
            if value is not None
        ]
        message = f"LSN {lsn} {reason}"
        if nearest:
            message += f" (nearest valid LSNs: {', '.join(nearest)})"
        super().__init__(message + "; nothing was changed")


class WalTruncatedError(WalError):
    """A reader's position was removed by ``truncate_before`` or ``truncate_after``.

    ``lsn`` is the position the reader was at (the next record it would have read).
    Records it already yielded were real; the rest of what it would have read is gone.
    """

    def __init__(self, lsn: int, what: str = "the log was truncated") -> None:
        self.lsn = lsn
        self.what = what
        super().__init__(
            f"LSN {lsn} is no longer in the log: {what} (hint: start a new iterator "
            f"from head_lsn, or from a position read after the truncation)"
        )


class ArchiveConflictError(WalError):
    """The archive holds a different history than the log being pushed; nothing changed.

    ``index`` is the segment where the two part ways, ``reason`` how. Like
    PostgreSQL's ``archive_command``, a push never overwrites an archived segment
    with different bytes: the archive belongs to another log, or this log was
    rewritten (``truncate_after`` below an archived segment) or lost segments the
    archive still needs.
    """

    def __init__(self, index: int, reason: str, url: str) -> None:
        self.index = index
        self.reason = reason
        self.url = url
        super().__init__(
            f"archive {url} conflicts with the log at segment {index}: {reason}; the "
            f"archive was left as it was (hint: push this log to a new archive URL, or "
            f"restore the archive to continue its history)"
        )


class UnsafeFileSystemError(WalError):
    """The log's file system cannot reserve space for writes through a mapping.

    On a copy-on-write file system (btrfs, ZFS, bcachefs, NILFS2) an overwrite
    needs a new block, so preallocation reserves nothing and a full disk would
    crash the process with SIGBUS mid-append. ``path`` is the file or directory,
    ``file_system`` its type; nothing was written.
    """

    def __init__(self, path: str, file_system: str, why: str) -> None:
        self.path = path
        self.file_system = file_system
        self.why = why
        super().__init__(
            f"{path} is on {file_system}, a copy-on-write file system: {why}, so a full "
            f"disk could crash the process with SIGBUS (hint: put the log on a file "
            f"system that overwrites in place, such as ext4 or XFS, or open it with "
            f"WalConfig(allow_copy_on_write=True) to accept that risk); nothing was written"
        )
