"""File helpers the mmap stores share: locking, and mapping a file range."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import sys

from ._errors import WalLockedError
from ._syscalls import Syscalls

__all__ = [
    "drop_resident",
    "lock_exclusively",
    "map_range",
    "open_directory",
    "prefault",
    "read_small_file",
    "replace_file_durably",
]

# MADV_POPULATE_WRITE (Linux 5.14): fault a whole new chunk in with one call
# instead of one page fault per page on the append path. Python 3.11's mmap
# does not name it.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def lock_exclusively(fd: int, path: str) -> None:
    """Take the single-writer lock on ``fd`` at once, or raise ``WalLockedError``.

    The lock is an ``flock`` on the open file description: it is released when the
    descriptor is closed or the process dies, so a killed writer never leaves a
    stale lock behind.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WalLockedError(path) from None
        raise


def map_range(fd: int, length: int, offset: int, *, writable: bool) -> mmap.mmap:
    """Map ``length`` bytes of ``fd`` from ``offset`` (a multiple of the page size)."""
    access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
    return mmap.mmap(fd, length, access=access, offset=offset)


def open_directory(path: str) -> int:
    """Open a directory for locking and fsync."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def prefault(mapping: mmap.mmap) -> None:
    """Fault in a new, writable chunk ahead of the appends that will fill it.

    A hint only: kernels without MADV_POPULATE_WRITE refuse it and appends fault
    the pages in one at a time instead. The pages were reserved on disk before
    (``Syscalls.allocate``), so this cannot hit a full disk.
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, ValueError):
        mapping.madvise(_MADV_POPULATE_WRITE)


def drop_resident(mapping: mmap.mmap) -> None:
    """Unmap the resident pages of a shared file mapping; the page cache keeps them.

    Reads fault them back in from the page cache. Only for file mappings: on
    anonymous memory the same call would discard the bytes.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        mapping.madvise(mmap.MADV_DONTNEED)


# A file mmwal creates beside the log: only its owner may read it, and a name
# planted as a symlink (or left by a crash) is never followed or reused.
_SIDE_FILE_MODE = 0o600
_CREATE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def replace_file_durably(path: str, data: bytes, syscalls: Syscalls) -> None:
    """Put ``data`` at ``path`` atomically and durably: a crash leaves the old file or the new.

    Rules: the temporary is created fresh (``O_EXCL|O_NOFOLLOW``, mode 0o600),
    written, fsynced, renamed over ``path``, and the directory fsynced, all through
    ``syscalls``. A temporary a crash left behind is removed first.
    """
    temporary = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        syscalls.remove(temporary)
    fd = os.open(temporary, _CREATE_FLAGS, _SIDE_FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            syscalls.fsync(fd)
        finally:
            os.close(fd)
        syscalls.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            syscalls.remove(temporary)
        raise
    syscalls.fsync_directory(os.path.dirname(os.path.abspath(path)))


def read_small_file(path: str, limit: int) -> bytes | None:
    """Return up to ``limit`` bytes of the regular file at ``path``; None if it is absent.

    A symlink or anything else that cannot be opened as a plain file reads as absent.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
