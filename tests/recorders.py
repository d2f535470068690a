"""Syscalls that record what the stores ask of the kernel, for the tests that pin it."""

from __future__ import annotations

import os
import sys

from mmwal import Syscalls


class MsyncRecorder(Syscalls):
    """Real syscalls that remember the address and length of every msync."""

    def __init__(self) -> None:
        self.msyncs: list[tuple[int, int]] = []

    def msync(self, address: int, length: int) -> None:
        self.msyncs.append((address, length))
        super().msync(address, length)


def fd_path(fd: int) -> str:
    """Return the path of the file open on ``fd`` (``/proc/self/fd``)."""
    return os.readlink(f"/proc/self/fd/{fd}")


class SyncRecorder(MsyncRecorder):
    """Real syscalls that also remember the file of every fsync and F_FULLFSYNC, and each
    directory fsynced.

    ``platform`` may be faked: as ``"darwin"``, the store's flushes end in
    ``full_fsync`` (F_FULLFSYNC, which Linux lacks), recorded here and done as an
    fsync; every fsync is one too, so it is recorded in both lists.
    """

    def __init__(self, platform: str = sys.platform) -> None:
        super().__init__()
        self.platform = platform
        self.fsyncs: list[str] = []
        self.full_fsyncs: list[str] = []
        self.directory_fsyncs: list[str] = []

    def fsync(self, fd: int) -> None:
        self.fsyncs.append(fd_path(fd))
        super().fsync(fd)

    def full_fsync(self, fd: int) -> None:
        self.full_fsyncs.append(fd_path(fd))
        os.fsync(fd)

    def fsync_directory(self, path: str) -> None:
        self.directory_fsyncs.append(os.path.realpath(path))
        super().fsync_directory(path)

    def clear(self) -> None:
        """Forget every call recorded so far."""
        self.msyncs.clear()
        self.fsyncs.clear()
        self.full_fsyncs.clear()
        self.directory_fsyncs.clear()
