"""Files a store keeps beside the log: side files (the recovery point) and quarantines.

Neither holds log bytes the log reads back: a side file is a few dozen bytes
replaced whole and durably, a quarantine a durable copy of bytes about to be
zeroed. A store with no files (memory) keeps neither, and says so (None, False).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._files import create_unique_file, read_small_file, replace_file_durably

if TYPE_CHECKING:
    from ._syscalls import Syscalls

__all__ = ["FilesBeside"]


class FilesBeside:
    """``quarantine`` and the side-file calls of ``Store``, over two path hooks."""

    # Side files are a few dozen bytes; more than this is not one of ours.
    _SIDE_FILE_LIMIT = 4096

    if TYPE_CHECKING:
        syscalls: Syscalls
        file_mode: int
        writable: bool

        def _check_open(self) -> None: ...
        def read(self, offset: int, length: int) -> bytes: ...

    def _quarantine_base(self, offset: int) -> str | None:
        """Return the path a quarantine of bytes from ``offset`` goes to, or None."""
        del offset
        return None

    def _side_path(self, name: str) -> str | None:
        """Return the path of the side file ``name``, or None for a store with no files."""
        del name
        return None

    def quarantine(self, start: int, end: int) -> str | None:
        base = self._quarantine_base(start)
        if base is None:
            return None
        path, fd = create_unique_file(self.syscalls, base, self.file_mode)
        try:
            position = start
            while position < end:
                step = min(end - position, 1 << 20)
                os.write(fd, self.read(position, step))
                position += step
            self.syscalls.fsync(fd)
        finally:
            os.close(fd)
        self.syscalls.fsync_directory(os.path.dirname(os.path.abspath(path)))
        return path

    def load_side_file(self, name: str) -> bytes | None:
        path = self._side_path(name)
        return None if path is None else read_small_file(path, self._SIDE_FILE_LIMIT)

    def save_side_file(self, name: str, data: bytes) -> bool:
        self._check_open()
        path = self._side_path(name)
        if path is None or not self.writable:
            return False
        replace_file_durably(path, data, self.syscalls, self.file_mode)
        return True

    def remove_side_file(self, name: str) -> None:
        self._check_open()
        path = self._side_path(name)
        if path is None or not self.writable:
            return
        try:
            self.syscalls.remove(path)
        except FileNotFoundError:
            return
        self.syscalls.fsync_directory(os.path.dirname(os.path.abspath(path)))
