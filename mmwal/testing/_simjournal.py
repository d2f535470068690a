"""``PowerLossSimulator``: ``Syscalls`` that follow every write-back to a simulated disk.

The real ``FileStore`` and ``SegmentStore`` run unchanged over real files in a
directory: those files are the page cache. Every call through the ``Syscalls``
seam (opening a file for writing, mapping, allocating, ``msync``, ``fsync``,
directory fsync, removal, rename) is done for real and journaled here, and the
simulator keeps the durable state beside it (``_simdisk.Disk``):

- ``msync`` of a range writes back the whole pages it touches;
- ``fdatasync`` of a file writes back all its data and commits no metadata
  (a file's bytes past its durable size stay unseen until its size is durable);
- ``fsync`` of a file writes back all its data and its size, and commits the
  metadata the file system's order says it commits (``_simdisk``);
- ``fsync_directory`` commits the creations, removals and renames in it;
- creating, removing, renaming and growing files are metadata changes, pending
  until committed.

``msync``, ``fsync`` and directory fsync are not passed to the kernel: what is
durable is what the simulator says, and the real disk is not worn for it.

``crash_image`` returns one state a power loss at this moment could leave
(``_simimage``); ``crash_hook`` is called at the start of every seam call, so a
test can take images at the Nth call of a sync, a truncation or a recovery.
Nothing of the stores' logic is copied here: a bug in their order of calls shows
up in the images.

Not simulated: writes that bypass the seam into files the stores did not open
through it, hard links, ``O_TRUNC`` (mmwal never truncates a file), and the
creation of the log's own directory (an image always has it).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import mmap
import os
import random
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from mmwal._chunked import ChunkedStore
from mmwal._syscalls import Syscalls, mapping_address

from ._simdisk import Disk, Inode, MetadataOp, MetadataOrder
from ._simimage import CrashImage, FateChooser, Layout, Options, PageFate, render

__all__ = ["PowerLossSimulator"]


def _fixed_rng() -> random.Random:
    """Return a seeded generator, for images whose every choice is forced anyway."""
    return random.Random(0)  # noqa: S311 - a simulation's choices, not cryptography


@dataclasses.dataclass(frozen=True)
class _Mapping:
    # Weak: a store lets go of a mapping by dropping it (its descriptor closes with
    # it); a strong reference here kept every such descriptor open, so a long
    # campaign ran out of them.
    mapping: weakref.ReferenceType[mmap.mmap]
    address: int
    length: int
    inode: int
    offset: int

    def live(self) -> mmap.mmap | None:
        """Return the mapping while it is mapped, else None."""
        mapping = self.mapping()
        return None if mapping is None or mapping.closed else mapping


class PowerLossSimulator(Syscalls):
    """A simulated disk under the real stores: what they write back, and what a crash leaves.

    ``root`` is the simulated directory (files already in it count as durable);
    ``layout`` says which store ``open_store`` opens there. ``space`` simulates a
    small disk: an allocation past it raises ``OSError(ENOSPC)`` and changes
    nothing.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        layout: Layout,
        *,
        page_size: int = 4096,
        sector_size: int = 512,
        metadata: MetadataOrder = "ordered",
        space: int | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.layout = layout
        self.options = Options(page_size, sector_size, metadata)
        self.space = space
        self.disk = Disk(metadata)
        #: Called with the call's name at the start of every seam call.
        self.crash_hook: Callable[[str], None] | None = None
        #: Seam calls so far.
        self.calls = 0
        self._lock = threading.RLock()
        self._numbers = itertools.count()
        self._inodes: dict[int, Inode] = {}
        self._by_path: dict[str, int] = {}
        self._by_key: dict[tuple[int, int], int] = {}
        self._mappings: list[_Mapping] = []
        self._adopt_existing()

    # -- set-up ---------------------------------------------------------------------

    @classmethod
    def from_image(cls, image: CrashImage, directory: str | os.PathLike[str]) -> PowerLossSimulator:
        """Write ``image`` into the new ``directory``; return a simulator whose disk holds it."""
        image.write_to(directory)
        options = image.options
        return cls(
            directory,
            image.layout,
            page_size=options.page_size,
            sector_size=options.sector_size,
            metadata=options.metadata,
        )

    @classmethod
    def _open_image(cls, image: CrashImage, directory: Path, writable: bool) -> ChunkedStore:
        return cls.from_image(image, directory).open_store(writable=writable)

    def open_store(self, *, writable: bool = True) -> ChunkedStore:
        """Open the layout's real store in ``root``, its seam calls coming here."""
        return self.layout.open_store(self.root, self, writable=writable)

    def _adopt_existing(self) -> None:
        for directory, _subdirectories, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                number = self._new_inode(path)
                inode = self._inodes[number]
                inode.durable = bytearray(inode.cached())
                self.disk.durable.entries[path] = number
                self.disk.durable.sizes[number] = len(inode.durable)
                status = os.stat(path)
                self._by_key[(status.st_dev, status.st_ino)] = number

    def _new_inode(self, path: str) -> int:
        number = next(self._numbers)
        self._inodes[number] = Inode(number, path)
        self._by_path[path] = number
        return number

    def _resolve(self, fd: int) -> Inode:
        status = os.fstat(fd)
        number = self._by_key.get((status.st_dev, status.st_ino))
        if number is None:
            raise ValueError(f"descriptor {fd} was not opened through the simulator")
        return self._inodes[number]

    def _step(self, name: str) -> None:
        self.calls += 1
        if name not in ("open", "map"):
            # The versions pages hold when something is written back or renamed
            # are those the kernel may have written back on its own meanwhile.
            # (Opening and mapping write nothing: skipping them keeps a store's
            # open from reading every file once per file.)
            self._remember()
        hook = self.crash_hook
        if hook is not None:
            hook(name)

    def _remember(self) -> None:
        page = self.options.page_size
        for number in set(self._by_path.values()):
            inode = self._inodes[number]
            inode.remember(inode.cached(), page)

    def _write_back(self, inode: Inode, offset: int, data: bytes) -> None:
        """Make ``data`` at ``offset`` of ``inode`` durable (what msync and fsync do to data)."""
        inode.write_back(offset, data, self.options.page_size)

    def _expected_size(self, number: int) -> int:
        return self.disk.expected().sizes.get(number, 0)

    # -- the seam -------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if flags & os.O_TRUNC:
            raise ValueError("O_TRUNC is not simulated (mmwal never truncates a file)")
        path = os.path.abspath(path)
        with self._lock:
            self._step("open")
            existed = os.path.lexists(path)
            fd = super().open(path, flags, mode)
            status = os.fstat(fd)
            key = (status.st_dev, status.st_ino)
            if not existed:
                number = self._new_inode(path)
                self.disk.journal(MetadataOp("create", path, number))
                self._by_key[key] = number
            elif key not in self._by_key:
                # A file put there behind the simulator's back: take it as durable.
                number = self._new_inode(path)
                inode = self._inodes[number]
                inode.durable = bytearray(inode.cached())
                self.disk.durable.entries[path] = number
                self.disk.durable.sizes[number] = len(inode.durable)
                self._by_key[key] = number
            return fd

    def map(self, fd: int, length: int, offset: int, *, writable: bool) -> mmap.mmap:
        with self._lock:
            self._step("map")
            inode = self._resolve(fd)
            mapping = super().map(fd, length, offset, writable=writable)
            self._mappings = [m for m in self._mappings if m.live() is not None]
            if writable:
                address = mapping_address(mapping)
                self._mappings.append(
                    _Mapping(weakref.ref(mapping), address, length, inode.number, offset)
                )
            return mapping

    def allocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            self._step("allocate")
            inode = self._resolve(fd)
            size = self._expected_size(inode.number)
            wanted = max(size, offset + length)
            if self.space is not None and wanted > size:
                used = sum(self.disk.expected().sizes.get(n, 0) for n in self._by_path.values())
                if used + wanted - size > self.space:
                    message = f"{os.strerror(errno.ENOSPC)} (simulated)"
                    raise OSError(errno.ENOSPC, message, inode.path)
            super().allocate(fd, offset, length)
            if wanted > size:
                self.disk.journal(MetadataOp("size", inode=inode.number, size=wanted))

    def msync(self, address: int, length: int) -> None:
        with self._lock:
            self._step("msync")
            if length <= 0:
                return
            found = next(
                (
                    m
                    for m in self._mappings
                    if m.address <= address < m.address + m.length and m.live() is not None
                ),
                None,
            )
            mapping = None if found is None else found.live()
            if found is None or mapping is None:
                raise OSError(errno.ENOMEM, "msync: not a mapped address (simulated)")
            page = self.options.page_size
            local = address - found.address
            low = local - local % page
            high = min(found.length, -(-(local + length) // page) * page)
            self._write_back(self._inodes[found.inode], found.offset + low, mapping[low:high])

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._step("fsync")
            inode = self._resolve(fd)
            content = inode.cached()
            size = len(content)
            self._write_back(inode, 0, content)
            if self._expected_size(inode.number) != size:
                self.disk.journal(MetadataOp("size", inode=inode.number, size=size))
            self.disk.commit_file(inode.number)

    def fdatasync(self, fd: int) -> None:
        # Every page of the file, however it was dirtied (a mapping or pwrite: the
        # files here are the page cache). Metadata: none is committed. A real
        # fdatasync commits the size when it changed; the stores never rely on
        # that (a file they grow is fsynced before its data is flushed), and a
        # simulator that grants less finds a store that does.
        with self._lock:
            self._step("fdatasync")
            inode = self._resolve(fd)
            content = inode.cached()
            self._write_back(inode, 0, content)

    def fsync_directory(self, path: str) -> None:
        with self._lock:
            self._step("fsync_directory")
            self.disk.commit_directory(os.path.abspath(path))

    def remove(self, path: str) -> None:
        path = os.path.abspath(path)
        with self._lock:
            self._step("remove")
            number = self._by_path.get(path)
            final = self._inodes[number].cached() if number is not None else None
            super().remove(path)
            if number is None:
                return
            del self._by_path[path]
            inode = self._inodes[number]
            inode.path, inode.final = None, final
            self.disk.journal(MetadataOp("remove", path, number))

    def replace(self, source: str, target: str) -> None:
        source, target = os.path.abspath(source), os.path.abspath(target)
        with self._lock:
            self._step("replace")
            moved = self._by_path.get(source)
            replaced = self._by_path.get(target)
            final = self._inodes[replaced].cached() if replaced is not None else None
            super().replace(source, target)
            if replaced is not None:
                gone = self._inodes[replaced]
                gone.path, gone.final = None, final
                del self._by_path[target]
            if moved is None:
                return
            del self._by_path[source]
            self._by_path[target] = moved
            self._inodes[moved].path = target
            self.disk.journal(MetadataOp("rename", source, moved, target))

    # -- crash images ---------------------------------------------------------------------

    @property
    def pending_metadata(self) -> int:
        """How many metadata changes (creations, removals, renames, sizes) are not durable."""
        return len(self.disk.pending)

    def crash_image(
        self,
        rng: random.Random,
        *,
        fate: FateChooser | None = None,
        metadata_ops: int | None = None,
        grown: bool | None = None,
    ) -> CrashImage:
        """Return one image a power loss at this moment could leave on disk.

        ``fate(file, page_number)`` may force what happens to a changed page (None
        from it, or no ``fate``, lets ``rng`` choose); ``metadata_ops`` forces how
        many pending metadata changes survive (a prefix of the journal); ``grown``
        whether files grown by plain writes keep their growth.
        """
        with self._lock:
            self._remember()
            pending = self.disk.pending
            if metadata_ops is not None:
                count = max(0, metadata_ops)
                state = self.disk.survivors(lambda ops: ops[:count])
            elif self.options.metadata == "ordered":
                count = rng.randint(0, len(pending))
                state = self.disk.survivors(lambda ops: ops[:count])
            else:
                state = self.disk.survivors(lambda ops: [op for op in ops if rng.random() < 0.5])
            files = render(
                state, self._inodes, self.root, self.options, rng, fate=fate, grown=grown
            )
            return CrashImage(files, self.layout, self.options, type(self)._open_image)

    def crash_images(self, rng: random.Random, count: int) -> list[CrashImage]:
        """Return ``count`` independent crash images of this moment."""
        return [self.crash_image(rng) for _ in range(count)]

    def durable_image(self) -> CrashImage:
        """Return the image with no page written back by chance and no pending metadata."""
        return self.crash_image(
            _fixed_rng(), fate=lambda _f, _p: PageFate.OLD, metadata_ops=0, grown=False
        )

    def cache_image(self) -> CrashImage:
        """Return what a crash of the process alone leaves: everything the kernel holds."""
        with self._lock:
            return self.crash_image(
                _fixed_rng(),
                fate=lambda _f, _p: PageFate.NEW,
                metadata_ops=len(self.disk.pending),
                grown=True,
            )
