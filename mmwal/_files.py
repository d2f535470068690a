"""File helpers the mmap stores share: locking, mapping, and creating files safely.

Rules for every file mmwal creates (segments, the single file, the head file and
its temporary, side files, quarantine files, repair's files):

- It is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` through ``Syscalls.open``:
  a file or symlink planted under that name makes the creation fail (or, for
  names mmwal may vary, moves on to the next free name); nothing is followed and
  nothing outside the log is written.
- Its mode is ``file_mode`` (default ``0o600``, as PostgreSQL keeps its WAL, less
  the process umask): a log holds application data.
- A file that replaces another (the head file, a side file) is written under a
  unique temporary name (``<name>.<16 hex digits>.tmp``), made durable, renamed
  into place, and the directory is fsynced. A temporary a crash left behind is
  removed at the next writable open (``remove_leftover_temporaries``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import sys

from ._errors import WalLockedError
from ._syscalls import Syscalls, mapping_address

__all__ = [
    "DEFAULT_FILE_MODE",
    "LARGEST_FOLIO",
    "KeptDescriptor",
    "advise_reading",
    "advise_writing",
    "check_file_mode",
    "close_descriptors",
    "close_mapping",
    "create_file",
    "create_unique_file",
    "directory_mode",
    "drop_resident",
    "evict_clean",
    "lock_apart",
    "lock_exclusively",
    "map_range",
    "open_directory",
    "populate_read",
    "prefault_anonymous",
    "read_small_file",
    "remove_leftover_temporaries",
    "replace_file",
    "replace_file_durably",
]

DEFAULT_FILE_MODE = 0o600
"""The mode of every file mmwal creates unless told otherwise: owner read and write."""

# The random part of a temporary's name: 8 bytes, 16 lowercase hex digits.
_TOKEN_BYTES = 8

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# MADV_POPULATE_READ and _WRITE (Linux 5.14); Python 3.11's mmap names neither.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
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


def lock_apart(syscalls: Syscalls, fd: int, path: str) -> int:
    """Take the writer lock on a descriptor of its own for ``fd``'s file; return it.

    Every mapping keeps a duplicate of the descriptor it was made from (CPython's
    ``mmap``), and an ``flock`` lasts while any descriptor of its open file
    description does: taken on a mapped descriptor, the lock would outlive the
    store for as long as a mapping does (a background job's export for a few
    milliseconds, a reader's view). A description that is never mapped ends when
    the store closes it. Raises ``WalLockedError``, or ``OSError`` if ``path``
    no longer names ``fd``'s file.
    """
    lock_fd = syscalls.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        opened, locking = os.fstat(fd), os.fstat(lock_fd)
        if (opened.st_dev, opened.st_ino) != (locking.st_dev, locking.st_ino):
            raise OSError(errno.ESTALE, "the file was replaced while it was opened", path)
        lock_exclusively(lock_fd, path)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd


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


def populate_read(address: int, length: int) -> bool:
    """Fault ``length`` bytes of a file mapping at ``address`` in for reading.

    The pages come into the page cache clean and mapped read-only: nothing is
    dirtied, so nothing is written back for them. Runs without the GIL. The
    caller keeps the range mapped (a buffer export) for the call. Returns
    whether the kernel did it; a refusal (before Linux 5.14, a range no longer
    mapped) changes nothing.
    """
    done: int = _madvise(address, length, _MADV_POPULATE_READ)
    return done == 0


def drop_resident(mapping: mmap.mmap, start: int = 0, length: int | None = None) -> None:
    """Unmap the resident pages of a shared file mapping; the page cache keeps them.

    Reads fault them back in from the page cache. Only for file mappings: on
    anonymous memory the same call would discard the bytes.
    """
    _advise(mapping, getattr(mmap, "MADV_DONTNEED", None), start, length)


def check_file_mode(mode: int) -> int:
    """Return ``mode`` if it is a permission mode a log file may have, else raise ``ValueError``.

    The owner must be able to read and write; nothing but permission bits.
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o777 or ~mode & 0o600:
        raise ValueError(
            f"file_mode must be permission bits including owner read and write "
            f"(such as 0o600 or 0o640), got {mode!r}"
        )
    return mode


def directory_mode(file_mode: int) -> int:
    """Return the mode for a directory mmwal creates: ``file_mode`` plus search where read is."""
    return file_mode | (file_mode & 0o444) >> 2


def create_file(syscalls: Syscalls, path: str, mode: int, *, flags: int = os.O_RDWR) -> int:
    """Create ``path``, which must not exist (not even as a symlink); return its descriptor.

    Raises ``FileExistsError`` when anything is there already.
    """
    return syscalls.open(path, flags | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


def create_unique_file(syscalls: Syscalls, base: str, mode: int) -> tuple[str, int]:
    """Create the first free name of ``base``, ``base.1``, ``base.2``, ...; return it and its fd.

    A file or symlink already under a name is left alone and the next name tried.
    """
    path = base
    for attempt in range(1, 10_000):
        try:
            return path, create_file(syscalls, path, mode, flags=os.O_WRONLY)
        except FileExistsError:
            path = f"{base}.{attempt}"
    raise FileExistsError(errno.EEXIST, "no free name for a new file", base)


def replace_file(syscalls: Syscalls, directory: str, name: str, data: bytes, mode: int) -> None:
    """Replace ``directory/name`` with ``data``, crash-safely.

    Writes a new file under a unique temporary name (created as every mmwal file
    is), fsyncs it, renames it over ``name`` and fsyncs the directory. Crash cost:
    a crash leaves the old file or the new one, and perhaps an unused temporary
    (a name neither mmwal nor wal-db reads).
    """
    temporary = os.path.join(directory, f"{name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
    fd = create_file(syscalls, temporary, mode, flags=os.O_WRONLY)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            syscalls.fsync(fd)
        finally:
            os.close(fd)
        syscalls.replace(temporary, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            syscalls.remove(temporary)
        raise
    syscalls.fsync_directory(directory)


def remove_leftover_temporaries(syscalls: Syscalls, directory: str, names: list[str]) -> None:
    """Remove the temporaries ``replace_file`` left in ``directory`` when a crash cut it short.

    Only regular files named exactly as ``replace_file`` names the temporary of
    one of ``names`` (``<name>.<16 lowercase hex digits>.tmp``) are removed; a
    symlink under such a name is left alone (and never followed), as is every
    other name. Call it only with the log's writer lock held: no other process
    is then writing a temporary. Crash cost: none (a removal a crash undoes
    leaves the temporary for the next open).
    """
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(rf"(?:{alternatives})\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")
    with os.scandir(directory) as entries:
        leftovers = [
            entry.path
            for entry in entries
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
        ]
    for path in leftovers:
        with contextlib.suppress(FileNotFoundError):
            syscalls.remove(path)


def replace_file_durably(
    path: str, data: bytes, syscalls: Syscalls, mode: int = DEFAULT_FILE_MODE
) -> None:
    """Put ``data`` at ``path`` atomically and durably: a crash leaves the old file or the new.

    ``replace_file`` for a path: a fresh temporary under a unique name, fsynced,
    renamed over ``path``, the directory fsynced, all through ``syscalls``.
    """
    directory, name = os.path.split(os.path.abspath(path))
    replace_file(syscalls, directory, name, data, mode)


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


class KeptDescriptor:
    """The one segment descriptor a store keeps between flushes (fdatasync needs one)."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = -1

    def replace(self, fd: int) -> None:
        """Keep ``fd`` (-1: none) and close the one kept before."""
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)


def close_descriptors(directory_fd: int, kept: KeptDescriptor) -> None:
    """Close a store's directory descriptor and the descriptor it kept (at close or collection)."""
    try:
        kept.replace(-1)
    finally:
        os.close(directory_fd)
