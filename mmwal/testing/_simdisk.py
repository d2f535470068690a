"""The simulated disk: what a power loss cannot take away, and the metadata still in flight.

The power-loss simulator lets the real stores work on real files (those are the
page cache: what the process sees) and keeps, beside them, a ``Disk``: for every
file (an ``Inode``) the bytes written back to stable storage, and the directory
entries and file sizes that are durable. Metadata changes the stores make
(creating, removing, renaming a file; growing one) join a journal of pending
``MetadataOp`` s and become durable when an fsync commits them.

How pending metadata survives a crash (``MetadataOrder``):

- ``"ordered"``: as a prefix of the journal, in the order the changes were made,
  as a journaling file system (ext4, XFS) commits them. An fsync of a file
  commits the journal up to the last change to that file; an fsync of a
  directory, up to the last change to an entry in it.
- ``"any"``: each change on its own (the weakest POSIX reading). An fsync of a
  file commits only that file's size; an fsync of a directory only the changes
  to its entries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Literal

__all__ = ["Disk", "Inode", "MetadataOp", "MetadataOrder", "Namespace"]

MetadataOrder = Literal["ordered", "any"]
"""How pending metadata changes survive a crash: as an ordered prefix, or each alone."""

_HISTORY_LIMIT = 8


class Inode:
    """One file, by identity: its durable bytes and the versions its pages went through.

    ``durable`` holds what was written back (a file's durable size, kept in the
    ``Namespace``, says how much of it a crash shows). ``history`` keeps, per page,
    earlier page-cache versions since the page was last written back: the kernel
    may write any of them back on its own before a crash. ``final`` is what the
    page cache held when the file lost its last name (the real file is gone then).
    """

    __slots__ = ("durable", "final", "history", "number", "path")

    def __init__(self, number: int, path: str | None, durable: bytes = b"") -> None:
        self.number = number
        self.path = path
        self.durable = bytearray(durable)
        self.history: dict[int, list[bytes]] = {}
        self.final: bytes | None = None

    def cached(self) -> bytes:
        """Return what the page cache holds for the file now."""
        if self.path is None:
            return self.final if self.final is not None else bytes(self.durable)
        try:
            with open(self.path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return b""

    def durable_page(self, low: int, high: int) -> bytes:
        """Return the durable bytes ``[low, high)``, zeros past what was written back."""
        data = bytes(self.durable[low:high])
        return data + bytes(high - low - len(data))

    def write_back(self, low: int, data: bytes, page_size: int) -> None:
        """Make ``data`` at ``low`` durable; forget the history of the pages it covers."""
        if len(self.durable) < low + len(data):
            self.durable.extend(bytes(low + len(data) - len(self.durable)))
        self.durable[low : low + len(data)] = data
        for number in range(low // page_size, -(-(low + len(data)) // page_size)):
            self.history.pop(number, None)

    def remember(self, content: bytes, page_size: int) -> None:
        """Keep each page of ``content`` that differs from the disk as a version it held."""
        if content == self.durable[: len(content)] and len(content) >= len(self.durable):
            return
        for number in range(-(-len(content) // page_size)):
            low = number * page_size
            high = min(low + page_size, len(content))
            current = content[low:high]
            if current == self.durable_page(low, high):
                continue
            versions = self.history.setdefault(number, [])
            if versions and versions[-1] == current:
                continue
            versions.append(current)
            if len(versions) > _HISTORY_LIMIT:
                del versions[0]


@dataclasses.dataclass(frozen=True)
class MetadataOp:
    """One metadata change: ``create``/``remove``/``rename`` a name, or ``size`` a file."""

    kind: Literal["create", "remove", "rename", "size"]
    path: str = ""
    inode: int = -1
    target: str = ""
    size: int = 0

    def directories(self) -> tuple[str, ...]:
        """Return the directories whose entries the change touches."""
        if self.kind == "size":
            return ()
        if self.kind == "rename":
            return (os.path.dirname(self.path), os.path.dirname(self.target))
        return (os.path.dirname(self.path),)


@dataclasses.dataclass
class Namespace:
    """Directory entries (path to inode number) and file sizes (inode number to bytes)."""

    entries: dict[str, int] = dataclasses.field(default_factory=dict)
    sizes: dict[int, int] = dataclasses.field(default_factory=dict)

    def copy(self) -> Namespace:
        """Return an independent copy."""
        return Namespace(dict(self.entries), dict(self.sizes))

    def apply(self, op: MetadataOp) -> None:
        """Apply one change."""
        if op.kind == "create":
            self.entries[op.path] = op.inode
            self.sizes.setdefault(op.inode, 0)
        elif op.kind == "remove":
            self.entries.pop(op.path, None)
        elif op.kind == "rename":
            moved = self.entries.pop(op.path, None)
            if moved is not None:
                self.entries[op.target] = moved
        else:
            self.sizes[op.inode] = op.size


class Disk:
    """The durable state and the journal of metadata changes not yet durable."""

    def __init__(self, metadata: MetadataOrder) -> None:
        if metadata not in ("ordered", "any"):
            raise ValueError(f"metadata must be 'ordered' or 'any', got {metadata!r}")
        self.metadata: MetadataOrder = metadata
        self.durable = Namespace()
        self.pending: list[MetadataOp] = []

    def journal(self, op: MetadataOp) -> None:
        """Add a change that is not durable yet."""
        self.pending.append(op)

    def expected(self) -> Namespace:
        """Return the namespace with every pending change applied: what the process sees."""
        state = self.durable.copy()
        for op in self.pending:
            state.apply(op)
        return state

    def commit_file(self, inode: int) -> None:
        """Commit what an fsync of file ``inode`` makes durable."""
        if self.metadata == "ordered":
            self._commit_through(lambda op: op.inode == inode)
        else:
            self._commit_only(lambda op: op.kind == "size" and op.inode == inode)

    def commit_directory(self, directory: str) -> None:
        """Commit what an fsync of ``directory`` makes durable."""
        if self.metadata == "ordered":
            self._commit_through(lambda op: directory in op.directories())
        else:
            self._commit_only(lambda op: directory in op.directories())

    def commit_all(self) -> None:
        """Commit every pending change."""
        self._commit_through(lambda _op: True)

    def _commit_through(self, touches: Callable[[MetadataOp], bool]) -> None:
        last = max((at for at, op in enumerate(self.pending) if touches(op)), default=-1)
        for op in self.pending[: last + 1]:
            self.durable.apply(op)
        del self.pending[: last + 1]

    def _commit_only(self, touches: Callable[[MetadataOp], bool]) -> None:
        keep: list[MetadataOp] = []
        for op in self.pending:
            if touches(op):
                self.durable.apply(op)
            else:
                keep.append(op)
        self.pending = keep

    def survivors(self, choose: Callable[[list[MetadataOp]], list[MetadataOp]]) -> Namespace:
        """Return the namespace a crash leaves: the durable one plus surviving pending changes.

        ``choose(pending)`` returns the changes that survive, in journal order;
        under ``"ordered"`` they must be a prefix.
        """
        state = self.durable.copy()
        for op in choose(self.pending):
            state.apply(op)
        return state
