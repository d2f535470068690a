"""Crash images: the files a power loss leaves, built from the simulated disk, opened for real.

A ``CrashImage`` is a set of files (path relative to the simulated directory, and
contents) plus the ``Layout`` that says which real store opens them. It is built
from the durable state of a ``Disk`` and, for every page that changed since it
was last written back, a ``PageFate``:

- ``OLD``: the durable contents, as last written back;
- ``NEW``: what the page cache held at the crash;
- ``EARLIER``: a version the page held in between (the kernel writes dirty pages
  back when it likes, so any of them may have reached the disk);
- ``TORN``: each sector (``sector_size``, 512 bytes) from one version or another;
  sectors are atomic, pages are not. This makes ghosts: a torn page in the middle
  and intact later pages.

A file's size is what its surviving metadata says; a file that grew by writes
(not by an allocation) may keep or lose the growth. Pages past a file's size are
not in the image.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from mmwal._chunked import ChunkedStore
from mmwal._config import WalConfig
from mmwal._filestore import FileStore
from mmwal._segstore import SegmentStore
from mmwal._syscalls import DEFAULT_SYNC_METHOD, Syscalls
from mmwal._wal import Wal

from ._simdisk import Inode, MetadataOrder, Namespace

__all__ = [
    "LOG_FILE_NAME",
    "SEGMENT_DIRECTORY",
    "CrashImage",
    "FateChooser",
    "Layout",
    "Options",
    "PageFate",
    "render",
]

LOG_FILE_NAME = "wal.log"
"""The name of a single-file log inside a simulated directory."""

SEGMENT_DIRECTORY = "wal"
"""The name of a segmented log's directory inside a simulated directory."""


class PageFate(enum.Enum):
    """What a crash leaves on disk for one page that changed since it was last written back."""

    OLD = "the durable contents, as last written back"
    NEW = "the page cache's contents at the crash"
    EARLIER = "a version between the two, written back by the kernel meanwhile"
    TORN = "each sector independently from one of two versions"


FateChooser = Callable[[str, int], "PageFate | None"]
"""``fate(file, page_number) -> PageFate | None``; ``file`` is relative to the simulated
directory (``wal/00000000000000000000.wal``, ``wal.log``); None lets the rng choose."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which real store a simulated directory holds: segments (``segment_size``) or one file.

    A segmented log is the directory ``SEGMENT_DIRECTORY``; a single file is
    ``LOG_FILE_NAME``, mapped ``window_size`` bytes at a time.
    """

    segment_size: int | None = None
    window_size: int = 64 * 1024
    #: How the store makes a flush durable (``WalConfig.sync_method``).
    sync_method: str = DEFAULT_SYNC_METHOD

    @property
    def segmented(self) -> bool:
        """Whether the log is a directory of segments."""
        return self.segment_size is not None

    @property
    def unit(self) -> int:
        """The size of one segment or window."""
        return self.segment_size if self.segment_size is not None else self.window_size

    def path(self, root: str | os.PathLike[str]) -> str:
        """Return the path of the log inside the simulated directory ``root``."""
        name = SEGMENT_DIRECTORY if self.segmented else LOG_FILE_NAME
        return os.path.join(os.fspath(root), name)

    def open_store(
        self, root: str | os.PathLike[str], syscalls: Syscalls, *, writable: bool = True
    ) -> ChunkedStore:
        """Open the real store over the log in ``root``, its calls going to ``syscalls``."""
        if self.segment_size is not None:
            return SegmentStore(
                self.path(root),
                self.segment_size,
                writable=writable,
                syscalls=syscalls,
                sync_method=self.sync_method,
            )
        return FileStore(
            self.path(root),
            window_size=self.window_size,
            writable=writable,
            syscalls=syscalls,
            sync_method=self.sync_method,
        )

    def __str__(self) -> str:
        method = "" if self.sync_method == DEFAULT_SYNC_METHOD else f", {self.sync_method}"
        if self.segment_size is not None:
            return f"segments of {self.segment_size} B{method}"
        return f"one file, {self.window_size} B windows{method}"


@dataclasses.dataclass(frozen=True)
class Options:
    """How the simulated hardware behaves: its page and sector sizes, its metadata order."""

    page_size: int = 4096
    sector_size: int = 512
    metadata: MetadataOrder = "ordered"

    def __post_init__(self) -> None:
        for name in ("page_size", "sector_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.page_size % self.sector_size:
            raise ValueError("page_size must be a multiple of sector_size")
        if self.metadata not in ("ordered", "any"):
            raise ValueError(f"metadata must be 'ordered' or 'any', got {self.metadata!r}")


StoreOpener = Callable[["CrashImage", Path, bool], ChunkedStore]
"""Write an image into a directory and open its store over a new simulator."""


@dataclasses.dataclass(frozen=True, eq=False)
class CrashImage:
    """The files a crash left behind, and how to open them with the real stores.

    ``files`` maps paths relative to the simulated directory to their contents.
    ``open_store`` and ``open`` write them into a new directory and open them with
    the normal code, over a new simulator of the same kind, which keeps simulating
    (take further crash images from ``store.syscalls``).
    """

    files: Mapping[str, bytes]
    layout: Layout
    options: Options
    opener: StoreOpener

    def write_to(self, directory: str | os.PathLike[str]) -> Path:
        """Write the files into ``directory`` (created if missing); return the log's path."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        if self.layout.segmented:
            (root / SEGMENT_DIRECTORY).mkdir(exist_ok=True)
        for name, data in self.files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return Path(self.layout.path(root))

    def open_store(
        self, directory: str | os.PathLike[str], *, writable: bool = True
    ) -> ChunkedStore:
        """Write the files into the new ``directory`` and open the real store over them."""
        return self.opener(self, Path(directory), writable)

    def open(self, directory: str | os.PathLike[str], config: WalConfig | None = None) -> Wal:
        """Write the files into the new ``directory`` and open the log (recovery runs)."""
        return Wal.with_store(self.open_store(directory), config)

    def __repr__(self) -> str:
        listing = ", ".join(f"{name}:{len(data)}" for name, data in sorted(self.files.items()))
        return f"<CrashImage {self.layout} [{listing}]>"


def render(
    state: Namespace,
    inodes: Mapping[int, Inode],
    root: str,
    options: Options,
    rng: random.Random,
    *,
    fate: FateChooser | None = None,
    grown: bool | None = None,
) -> dict[str, bytes]:
    """Return the files of a crash image: ``state``'s entries, each page given a fate.

    ``grown`` says whether a file that grew by writes past its metadata's size
    keeps the growth (None: the rng decides, file by file).
    """
    files: dict[str, bytes] = {}
    for path, number in sorted(state.entries.items()):
        inode = inodes[number]
        name = os.path.relpath(path, root)
        cached = inode.cached()
        size = state.sizes.get(number, 0)
        if len(cached) > size and (grown if grown is not None else rng.random() < 0.5):
            size = len(cached)
        files[name] = b"".join(
            _pages(inode, cached, size, name=name, options=options, rng=rng, fate=fate)
        )
    return files


def _pages(
    inode: Inode,
    cached: bytes,
    size: int,
    *,
    name: str,
    options: Options,
    rng: random.Random,
    fate: FateChooser | None,
) -> Iterator[bytes]:
    page = options.page_size
    for number in range(-(-size // page)):
        low = number * page
        high = min(low + page, size)
        old = inode.durable_page(low, high)
        new = _fit(cached[low:high], high - low)
        earlier = [_fit(version, high - low) for version in inode.history.get(number, [])]
        if new == old and not earlier:
            yield old
            continue
        choice = fate(name, number) if fate is not None else None
        yield _page_after_crash(choice, (old, new, earlier), options.sector_size, rng)


def _fit(data: bytes, length: int) -> bytes:
    return data[:length] + bytes(max(0, length - len(data)))


def _page_after_crash(
    choice: PageFate | None,
    versions: tuple[bytes, bytes, list[bytes]],
    sector: int,
    rng: random.Random,
) -> bytes:
    old, new, earlier = versions
    if choice is None:
        roll = rng.random()
        choice = (
            PageFate.OLD
            if roll < 0.3
            else PageFate.NEW
            if roll < 0.6
            else PageFate.EARLIER
            if roll < 0.7 and earlier
            else PageFate.TORN
        )
    if choice is PageFate.OLD:
        return old
    if choice is PageFate.NEW:
        return new
    if choice is PageFate.EARLIER:
        return rng.choice(earlier) if earlier else new
    every = [old, *earlier, new]
    first = old if rng.random() < 0.75 else rng.choice(every)
    second = new if rng.random() < 0.75 else rng.choice(every)
    return b"".join(
        (first if rng.random() < 0.5 else second)[at : at + sector]
        for at in range(0, len(old), sector)
    )
