"""Syscalls that record what the stores ask of the kernel, for the tests that pin it."""

from __future__ import annotations

from mmwal import Syscalls


class MsyncRecorder(Syscalls):
    """Real syscalls that remember the address and length of every msync."""

    def __init__(self) -> None:
        self.msyncs: list[tuple[int, int]] = []

    def msync(self, address: int, length: int) -> None:
        self.msyncs.append((address, length))
        super().msync(address, length)
