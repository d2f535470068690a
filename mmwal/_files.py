"""File helpers the mmap stores share: locking, and mapping a file range."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import sys

from ._errors import WalLockedError
from ._syscalls import Syscalls, mapping_address

__all__ = [
    "LARGEST_FOLIO",
    "advise_reading",
    "advise_writing",
    "close_mapping",
    "drop_resident",
    "evict_clean",
    "lock_exclusively",
    "map_range",
    "open_directory",
    "prefault_anonymous",
    "read_small_file",
    "replace_file_durably",
]

# MADV_POPULATE_WRITE (Linux 5.14); Python 3.11's mmap does not name it.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)

#: The largest page-cache folio a file mapping's readahead builds (a PMD, 2 MiB
#: on x86-64). Folios are aligned to their size, so a range starting on a
#: multiple of this never cuts one.
LARGEST_FOLIO = 2 << 20


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


# madvise through ctypes releases the GIL; ``mmap.madvise`` holds it, and giving
# back a resident 64 MiB chunk takes milliseconds (1.9 ms measured), during which
# no other thread could append.
_madvise = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int


def _advise(mapping: mmap.mmap, option: int | None, start: int, length: int | None) -> None:
    if option is None or mapping.closed:
        return
    span = len(mapping) - start if length is None else length
    if span <= 0:
        return
    try:
        address = mapping_address(mapping)
    except TypeError:  # a read-only mapping exports no writable buffer
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(option, start, span)
        return
    _madvise(address + start, min(span, len(mapping) - start), option)


def advise_writing(mapping: mmap.mmap, start: int = 0) -> None:
    """Make faults in ``mapping`` from ``start`` on read no page ahead (``MADV_RANDOM``).

    Why: since Linux 6.16 ext4 gives files large folios, and fault readahead grows
    them to 2 MiB as faults run sequentially. A store through a mapping dirties
    its whole folio, so each ``msync`` of a small commit would write 2 MiB
    (measured: 2,048 KiB per 256 B commit). Without readahead a fault gets an
    order-0 folio and a commit writes the pages it touched, as ``pwrite`` does.
    A hint: where the kernel refuses it, nothing changes but the bytes written.
    """
    _advise(mapping, getattr(mmap, "MADV_RANDOM", None), start, None)


def advise_reading(mapping: mmap.mmap) -> None:
    """Let faults in ``mapping`` read ahead again: for chunks no write will touch."""
    _advise(mapping, getattr(mmap, "MADV_NORMAL", None), 0, None)


def evict_clean(mapping: mmap.mmap, fd: int, file_offset: int, start: int) -> None:
    """Drop the clean page-cache folios of ``mapping`` from ``start`` to its end.

    Large folios that readahead built there (by recovery's scan, by an earlier
    process) would make each later commit into them write the whole folio; once
    evicted, faults under ``advise_writing`` bring pages back as order-0 folios.
    ``start`` must be a multiple of ``LARGEST_FOLIO`` so no folio is cut (the
    kernel keeps a folio the range only partly covers). Dirty folios and folios
    another process maps stay; nothing readable changes.
    """
    span = len(mapping) - start
    if span <= 0 or sys.platform != "linux":
        return
    drop_resident(mapping, start, span)
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, file_offset + start, span, os.POSIX_FADV_DONTNEED)


def prefault_anonymous(mapping: mmap.mmap) -> None:
    """Fault in a new chunk of anonymous memory with one call instead of a fault a page.

    Never for a file mapping: there it dirties every page, and the kernel writes
    the whole preallocated chunk back as zeros (64 MiB a segment, measured; the
    first sync after a roll waited 152 ms for them).
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, ValueError):
        mapping.madvise(_MADV_POPULATE_WRITE)


def drop_resident(mapping: mmap.mmap, start: int = 0, length: int | None = None) -> None:
    """Unmap the resident pages of a shared file mapping; the page cache keeps them.

    Reads fault them back in from the page cache. Only for file mappings: on
    anonymous memory the same call would discard the bytes.
    """
    _advise(mapping, getattr(mmap, "MADV_DONTNEED", None), start, length)


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


def close_mapping(mapping: mmap.mmap) -> None:
    """Unmap ``mapping`` now, or when the last view into it is released.

    CPython refuses to close a mapping while views of it are exported (a reader's
    ``memoryview``): dropping the reference instead leaves the unmap to the last
    view's release, so no view ever points at unmapped memory. A file removed
    meanwhile stays readable through the mapping.
    """
    with contextlib.suppress(BufferError):
        mapping.close()
