"""The seam for faults and crashes: every call that changes what a crash leaves goes here.

Stores take a ``Syscalls`` object and call nothing else to open a file for
writing, map it, allocate, flush, fsync, remove or rename, so a test can pass a
subclass that fails on purpose (ENOSPC on the third allocation, EIO on the next
flush) instead of hoping the disk does, and the power-loss simulator
(``mmwal.testing``) can keep its own record of what reached the disk.

The platform's choices are made here too, from ``Syscalls.platform``, so a test
can fake another platform and see which calls it would make: on macOS a flush of
a mapping is msync followed by ``F_FULLFSYNC`` on the file (msync and fsync there
leave the data in the drive's cache), and every fsync is ``F_FULLFSYNC``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import struct
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

__all__ = [
    "DEFAULT_SYNC_METHOD",
    "PAGE_SIZE",
    "SYNC_METHODS",
    "FlushPlan",
    "Syscalls",
    "check_sync_method",
    "fdatasync_plan",
    "mapping_address",
]

PAGE_SIZE = mmap.PAGESIZE

FlushPlan: TypeAlias = tuple[int, Callable[[int], None] | None]
"""``(fd, sync)``: ``sync(fd)`` is a whole flush; ``sync`` None is ``os.fdatasync``."""

#: How a file store makes a flushed range durable: ``msync`` of the range or
#: ``fdatasync`` of the file (every dirty page of it, the range among them).
#: Both keep the same contract; ``fdatasync``, the default, costs less per commit
#: on Linux (``perf/commit_syscalls.py``, ``perf.bench`` commit states;
#: docs/DESIGN.md, "Costs that remain"). macOS uses msync then ``F_FULLFSYNC``
#: either way.
SYNC_METHODS = ("fdatasync", "msync")
DEFAULT_SYNC_METHOD = "fdatasync"


def check_sync_method(method: object) -> str:
    """Return ``method`` if it names a sync method, else raise ``ValueError``."""
    if not isinstance(method, str) or method not in SYNC_METHODS:
        raise ValueError(f"sync_method must be one of {', '.join(SYNC_METHODS)}; got {method!r}")
    return method


_MS_SYNC = getattr(mmap, "MS_SYNC", 4)
_F_FULLFSYNC = 51  # <sys/fcntl.h> on macOS; not exposed by every Python's fcntl

# ctypes calls through a CDLL release the GIL for the length of the call, unlike
# mmap.flush, so other threads keep appending while the kernel writes pages back.
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_msync = _libc.msync
_msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_msync.restype = ctypes.c_int

# statfs(2) for the file system's magic number (``f_type``, the first field of
# struct statfs on Linux); the buffer is larger than the struct on any ABI.
_statfs = getattr(_libc, "statfs", None)
if _statfs is not None:
    _statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    _statfs.restype = ctypes.c_int
_STATFS_BUFFER_SIZE = 512

# <linux/fs.h>: inode flags, and the one that turns copy-on-write off (btrfs).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_NOCOW_FL = 0x00800000
_FLAGS = struct.Struct("=i")


def mapping_address(mapping: mmap.mmap) -> int:
    """Return the address of the first byte of a writable mapping."""
    # from_buffer exports the buffer only while the ctypes object lives; it dies
    # with this expression, so the mapping can still be closed later.
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


class Syscalls:
    """The operations whose failure decides durability; subclass to inject faults.

    Every method raises ``OSError`` on failure and never retries. ``platform``
    (``sys.platform`` by default) selects the platform's flush calls; a test sets
    it to check another platform's selection.
    """

    platform: str = sys.platform

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """Open ``path`` with ``os.open`` ``flags``; return the descriptor.

        Every file a store writes to is opened here (created, or opened for
        writing), so what it holds can be followed to the disk.
        """
        return os.open(path, flags, mode)

    def map(self, fd: int, length: int, offset: int, *, writable: bool) -> mmap.mmap:
        """Map ``length`` bytes of ``fd`` from ``offset`` (a multiple of the page size)."""
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, length, access=access, offset=offset)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk blocks for ``[offset, offset+length)``, extending the file.

        After this returns, touching the range through a mapping cannot SIGBUS for
        lack of space: a full disk surfaces here, as ``OSError(ENOSPC)``.
        """
        if length <= 0:
            return
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, offset, length)
            return
        # macOS has no posix_fallocate: write zeros, which allocates for real.
        zeros = bytes(min(length, 1 << 20))
        position = offset
        while position < offset + length:
            step = min(len(zeros), offset + length - position)
            written = os.pwrite(fd, zeros[:step], position)
            position += written

    def msync(self, address: int, length: int) -> None:
        """Write back ``length`` bytes of a mapping at page-aligned ``address``; wait for it."""
        if length <= 0:
            return
        if _msync(address, length, _MS_SYNC) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"msync: {os.strerror(code)}")

    def sync_mapping(self, address: int, length: int, fd: int | None, path: str) -> None:
        """Make ``length`` mapped bytes at page-aligned ``address`` of a file durable.

        msync(MS_SYNC) writes the pages back. On macOS that leaves them in the
        drive's cache, so ``F_FULLFSYNC`` on the file follows: on ``fd``, or on
        ``path`` opened for it when the store keeps no descriptor.
        """
        self.msync(address, length)
        if self.platform != "darwin" or length <= 0:
            return
        if fd is not None:
            self.full_fsync(fd)
            return
        opened = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.full_fsync(opened)
        finally:
            os.close(opened)

    def fdatasync(self, fd: int) -> None:
        """Write back every dirty page of a file and the size needed to read it; wait.

        Pages dirtied through a shared mapping count as much as those ``pwrite``
        dirtied: one page cache holds both (Linux).
        """
        os.fdatasync(fd)

    def sync_file_data(self, fd: int, address: int, length: int, path: str) -> None:
        """Make a mapped file's data durable: all of it, ``length`` bytes at ``address`` among it.

        ``fdatasync`` of the file on Linux, which writes back every dirty page of
        it however it was dirtied, so the mapped range too; per commit it costs
        less than ``msync`` of the range (``perf/commit_syscalls.py``). Where there
        is no ``fdatasync`` (macOS), ``sync_mapping``: msync, then ``F_FULLFSYNC``.
        """
        self.sync_file_ranges(fd, [(address, length)], path)

    def sync_file_ranges(self, fd: int, ranges: Sequence[tuple[int, int]], path: str) -> None:
        """Make a mapped file's data durable: all of it, each ``(address, length)`` among it.

        One ``fdatasync`` of the file on Linux, however many mappings of it the
        ranges lie in. Where there is none (macOS), msync of each range, then one
        ``F_FULLFSYNC`` of the file for all of them.
        """
        if self.platform != "darwin" and hasattr(os, "fdatasync"):
            self.fdatasync(fd)
            return
        for address, length in ranges:
            self.msync(address, length)
        if self.platform == "darwin" and any(length > 0 for _, length in ranges):
            self.full_fsync(fd)

    def fsync(self, fd: int) -> None:
        """Make a file's data and metadata durable (F_FULLFSYNC on macOS)."""
        if self.platform == "darwin":
            self.full_fsync(fd)
            return
        os.fsync(fd)

    def full_fsync(self, fd: int) -> None:
        """Flush a file through the drive's cache: ``fcntl(F_FULLFSYNC)`` (macOS only)."""
        fcntl.fcntl(fd, _F_FULLFSYNC)

    def file_system_magic(self, path: str) -> int:
        """Return the magic number of the file system holding ``path`` (statfs f_type).

        Looks at the nearest existing ancestor when ``path`` does not exist yet.
        Returns 0 where statfs reports no such number (not Linux).
        """
        if _statfs is None or not sys.platform.startswith("linux"):
            return 0
        path = os.path.abspath(path)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        buffer = ctypes.create_string_buffer(_STATFS_BUFFER_SIZE)
        if _statfs(os.fsencode(path), buffer) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"statfs: {os.strerror(code)}", path)
        return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF

    def no_copy_on_write(self, fd: int) -> bool:
        """Return whether a file has copy-on-write turned off (btrfs NOCOW, chattr +C)."""
        flags = _FLAGS.unpack(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(_FLAGS.size)))[0]
        return bool(flags & _FS_NOCOW_FL)

    def set_no_copy_on_write(self, fd: int) -> None:
        """Turn copy-on-write off for an empty file (btrfs NOCOW), before it has blocks."""
        flags = _FLAGS.unpack(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(_FLAGS.size)))[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, _FLAGS.pack(flags | _FS_NOCOW_FL))

    def fsync_directory(self, path: str) -> None:
        """Make the creation, removal and renaming of entries in ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            try:
                os.fsync(fd)
            except OSError as error:
                # Some filesystems cannot fsync a directory and say so with EINVAL;
                # their directory updates are synchronous or nothing can be done.
                if error.errno not in (errno.EINVAL, errno.EBADF):
                    raise
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        """Remove a file; the caller fsyncs the directory before depending on it."""
        os.remove(path)

    def replace(self, source: str, target: str) -> None:
        """Rename ``source`` over ``target`` atomically."""
        os.replace(source, target)


def fdatasync_plan(syscalls: Syscalls, fd: int) -> FlushPlan | None:
    """Return ``(fd, sync)`` when ``syscalls.sync_file_data(fd, ...)`` is one ``fdatasync(fd)``.

    None for ``fd < 0`` (msync), on macOS, and for a ``Syscalls`` that overrides
    the choice (``sync_file_data`` or ``sync_file_ranges``); ``sync`` is None for
    the plain ``os.fdatasync`` (the log then calls it in C), else the
    ``Syscalls``' own ``fdatasync`` (one that injects faults). A store's
    ``flush_plan`` hands it out (``Store.flush_plan``).
    """
    kind = type(syscalls)
    own = vars(syscalls)
    if (
        fd < 0
        or not hasattr(os, "fdatasync")
        or syscalls.platform == "darwin"
        or kind.sync_file_data is not Syscalls.sync_file_data
        or kind.sync_file_ranges is not Syscalls.sync_file_ranges
        or "sync_file_data" in own
        or "sync_file_ranges" in own
    ):
        return None
    plain = kind.fdatasync is Syscalls.fdatasync and "fdatasync" not in own
    return (fd, None if plain else syscalls.fdatasync)
