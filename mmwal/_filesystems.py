"""Whether preallocation reserves space on the log's file system, and making it so.

mmwal writes through shared mappings of preallocated files, so a write that needs
a new block on a full disk is a SIGBUS, not an ``OSError``. ``posix_fallocate``
reserves the blocks a first write needs on file systems that overwrite in place
(ext4, XFS, tmpfs). A copy-on-write file system writes every overwrite to a new
block, so there the reservation holds nothing:

- btrfs: a file with copy-on-write turned off (NOCOW, ``chattr +C``) overwrites in
  place. Each new file mmwal maps is made NOCOW while still empty, before a block
  is allocated, and the flag is read back; an existing file must carry it.
  (A snapshot of the subvolume shares the blocks again until they are rewritten.)
- ZFS, bcachefs, NILFS2: no per-file way out.

Where safety cannot be made to hold, a writable open is refused with
``UnsafeFileSystemError`` unless the caller accepts the risk
(``WalConfig(allow_copy_on_write=True)``). XFS shares extents only between
reflinked copies (``cp --reflink``); the files mmwal creates are never shared, so
XFS is not refused (a log restored as reflinked copies is the caller's to know).
Read-only opens write nothing and are never refused.
"""

from __future__ import annotations

import os

from ._errors import UnsafeFileSystemError
from ._syscalls import Syscalls

__all__ = ["BTRFS_MAGIC", "COPY_ON_WRITE_FILE_SYSTEMS", "SpaceReservation"]

BTRFS_MAGIC = 0x9123683E

#: statfs magic numbers of the copy-on-write file systems, and their names.
COPY_ON_WRITE_FILE_SYSTEMS = {
    BTRFS_MAGIC: "btrfs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0x3434: "nilfs2",
}


class SpaceReservation:
    """Checks one log's files for space that preallocation really reserves."""

    def __init__(self, path: str, syscalls: Syscalls, *, allow_copy_on_write: bool) -> None:
        """Look at the file system holding ``path``; refuse one with no way to reserve."""
        self._syscalls = syscalls
        self._allow = allow_copy_on_write
        magic = syscalls.file_system_magic(path)
        #: The copy-on-write file system holding the log, or None.
        self.file_system = COPY_ON_WRITE_FILE_SYSTEMS.get(magic)
        if self.file_system not in {None, "btrfs"}:
            self._refuse(path, "preallocation cannot reserve the blocks an overwrite needs")

    def _refuse(self, path: str, why: str) -> None:
        if not self._allow:
            assert self.file_system is not None
            raise UnsafeFileSystemError(os.fspath(path), self.file_system, why)

    def prepare_new_file(self, fd: int, path: str) -> None:
        """Make a new, empty file safe to preallocate and map (btrfs: NOCOW), or refuse."""
        if self.file_system != "btrfs":
            return
        try:
            self._syscalls.set_no_copy_on_write(fd)
            done = self._syscalls.no_copy_on_write(fd)
        except OSError as error:
            done = False
            reason = f"turning copy-on-write off failed ({error.strerror or error})"
        else:
            reason = "turning copy-on-write off did not take"
        if not done:
            self._refuse(path, reason)

    def check_existing_path(self, path: str) -> None:
        """Do ``check_existing_file`` on the file at ``path`` (opened only on btrfs)."""
        if self.file_system != "btrfs":
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.check_existing_file(fd, path)
        finally:
            os.close(fd)

    def check_existing_file(self, fd: int, path: str) -> None:
        """Refuse an existing file that writes through a mapping could SIGBUS on."""
        if self.file_system != "btrfs":
            return
        if not self._syscalls.no_copy_on_write(fd):
            self._refuse(
                path,
                "the file was created without NOCOW (chattr +C), so its preallocated "
                "blocks are not reserved for overwrites",
            )
