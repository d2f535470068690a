"""Tools to prove crash safety: a power-loss simulator and a reusable store test suite.

``PowerLossStore`` is a ``Store`` that keeps two images of the log's files: the
*page cache* (what the process sees, what ``write`` changes) and the *disk* (what
``flush`` made durable). At any moment it can produce the images a machine crash
could leave behind (``crash_image``), each openable with the normal recovery code,
either simulated (``CrashImage.open``) or as real files (``CrashImage.open_files``).

What a crash image may hold (the model, in the words of the durability contract):

- A page covered by a completed ``flush`` is exactly what was flushed.
- Every other page that changed since it was last flushed is, independently of
  every other page, the old (durable) contents, the new contents, an earlier
  version the kernel may have written back meanwhile (one the page held at an
  earlier ``write``, ``flush`` or ``discard_after``; the log's fast path copies
  into a piece directly, so not every intermediate version is seen), or torn:
  each 512-byte sector (``sector_size``) independently from one version or
  another.
- Metadata (a segment file created or removed, a window added to a single file, a
  ``head`` file renamed into place) is durable once a later ``flush`` (or the
  operation's own directory sync) committed it. Before that, the pending changes
  survive as a prefix in the order they were made (``metadata="ordered"``: what a
  journaling file system such as ext4 or XFS does) or each independently
  (``metadata="any"``: the weakest POSIX reading). A created segment that
  survives may have lost its size (an empty file) if its allocation is pending.

Layouts: ``segment_size=N`` simulates a directory of segment files of N bytes
(created fresh and zero, removed by ``discard_after`` and ``drop_before``, a
``head`` file once a prefix is dropped), exactly as ``SegmentStore`` lays them
out; ``segment_size=None`` simulates a single file grown ``window_size`` bytes at a
time, as ``FileStore`` does, named ``LOG_FILE_NAME`` in the image.

Not simulated: a crash inside one ``memcpy`` of a page that the kernel is writing
back at that instant (covered in effect by torn sectors), bit rot and misdirected
writes (the fuzz tests feed arbitrary bytes instead), lying disks that lose a
completed flush, and anything below the sector (sectors are atomic).

``StoreTests`` is a pytest suite (a plain class of ``test_*`` methods) that proves a
``Store`` keeps the protocol of ``mmwal._store``; subclass it and implement
``make_store``. It does not import pytest: skips raise ``unittest.SkipTest``.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import errno
import itertools
import mmap
import os
import random
import threading
import unittest
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

from ._chunked import ChunkedStore
from ._config import WalConfig
from ._errors import CorruptionError, WalClosedError
from ._filestore import FileStore
from ._format import (
    HEAD_FILE_NAME,
    decode_head_file,
    encode_head_file,
    parse_segment_name,
    segment_name,
)
from ._segstore import SegmentStore
from ._store import Buffer, Store
from ._wal import Wal

__all__ = [
    "LOG_FILE_NAME",
    "CrashImage",
    "MetadataOrder",
    "PageFate",
    "PowerLossStore",
    "StoreTests",
]

LOG_FILE_NAME = "wal.log"
"""The file name a single-file layout has in a ``CrashImage``."""

MetadataOrder = Literal["ordered", "any"]
"""How pending metadata changes survive a crash: as an ordered prefix, or each alone."""

_DEFAULT_WINDOW_SIZE = 64 * 1024
_HISTORY_LIMIT = 8


def _fixed_rng() -> random.Random:
    """Return a seeded generator, for images whose every choice is forced anyway."""
    return random.Random(0)  # noqa: S311 - a simulation's choices, not cryptography


class PageFate(enum.Enum):
    """What a crash leaves on disk for one page that changed since it was last flushed."""

    OLD = "the durable contents, as last flushed"
    NEW = "the page cache's contents at the crash"
    EARLIER = "a version between the two, written back by the kernel meanwhile"
    TORN = "each sector independently from one of two versions"


FateChooser = Callable[[str, int], PageFate | None]
"""``fate(file_name, page_number) -> PageFate | None``; None lets the rng choose."""


@dataclasses.dataclass(frozen=True)
class _Options:
    segment_size: int | None
    window_size: int
    page_size: int
    sector_size: int
    metadata: MetadataOrder
    disk_size: int | None


@dataclasses.dataclass(frozen=True, eq=False)
class CrashImage:
    """The files a crash left behind: file name to contents, plus the layout to open them.

    ``files`` holds segment files and ``head`` (segmented layout) or ``LOG_FILE_NAME``
    (single-file layout; absent when the file's creation never became durable).
    """

    files: Mapping[str, bytes]
    segment_size: int | None
    window_size: int = _DEFAULT_WINDOW_SIZE
    page_size: int = 4096
    sector_size: int = 512
    metadata: MetadataOrder = "ordered"

    @property
    def segmented(self) -> bool:
        """Whether the image is a directory of segments (else one file)."""
        return self.segment_size is not None

    def store(self, *, disk_size: int | None = None) -> PowerLossStore:
        """Return a ``PowerLossStore`` whose disk and page cache both hold this image."""
        return PowerLossStore.from_image(self, disk_size=disk_size)

    def open(self, config: WalConfig | None = None) -> Wal:
        """Open the image with the normal recovery code over a simulated store.

        The returned log keeps simulating: take further crash images from
        ``wal.store`` (a ``PowerLossStore``).
        """
        return Wal.with_store(self.store(), config)

    def write_to(self, directory: str | os.PathLike[str]) -> Path:
        """Write the image's files into ``directory``; return the path to open.

        That is the directory itself for a segmented image, else the log file in it.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (root / name).write_bytes(data)
        return root if self.segmented else root / LOG_FILE_NAME

    def open_files(
        self,
        directory: str | os.PathLike[str],
        config: WalConfig | None = None,
        *,
        window_size: int | None = None,
    ) -> Wal:
        """Write the image into ``directory`` and open it with the real file stores.

        A single file opens as ``FileStore(path, window_size=...)`` (the image's
        window size unless given), a segment set as ``SegmentStore``.
        """
        path = self.write_to(directory)
        if self.segment_size is not None:
            return Wal(SegmentStore(path, self.segment_size), config)
        size = self.window_size if window_size is None else window_size
        return Wal(FileStore(path, window_size=size), config)

    def __repr__(self) -> str:
        listing = ", ".join(f"{name}:{len(data)}" for name, data in sorted(self.files.items()))
        layout = f"segment_size={self.segment_size}" if self.segmented else "single file"
        return f"<CrashImage {layout} [{listing}]>"


class _Unit:
    """One chunk of the simulated files: a segment, or one window of the single file."""

    __slots__ = ("cache", "durable", "history", "index")

    def __init__(self, index: int, cache: mmap.mmap, durable: bytearray) -> None:
        self.index = index
        self.cache: mmap.mmap | bytes = cache
        self.durable = durable
        # page number -> earlier page-cache versions since the page was last flushed
        self.history: dict[int, list[bytes]] = {}


@dataclasses.dataclass
class _Metadata:
    """The durable directory state, or a copy of it being built into an image."""

    entries: dict[int, _Unit]  # segmented: index -> file whose name is durable
    allocated: set[int]  # id() of units whose size is durable
    head: int  # the head LSN the head file holds (0: none)
    file_exists: bool  # single file: its directory entry is durable
    windows: int  # single file: how many windows its durable size covers

    def copy(self) -> _Metadata:
        return _Metadata(
            dict(self.entries), set(self.allocated), self.head, self.file_exists, self.windows
        )


@dataclasses.dataclass(frozen=True)
class _Op:
    kind: Literal["create", "allocate", "remove", "head", "create_file"]
    unit: _Unit | None = None
    value: int = 0

    def apply(self, meta: _Metadata) -> None:
        unit = self.unit
        if self.kind == "create" and unit is not None:
            meta.entries[unit.index] = unit
        elif self.kind == "allocate" and unit is not None:
            meta.allocated.add(id(unit))
            meta.windows = max(meta.windows, unit.index + 1)
        elif self.kind == "remove" and unit is not None:
            if meta.entries.get(unit.index) is unit:
                del meta.entries[unit.index]
        elif self.kind == "head":
            meta.head = self.value
        elif self.kind == "create_file":
            meta.file_exists = True


class PowerLossStore(ChunkedStore):
    """A store that simulates a disk and a page cache, and the crashes between them.

    ``write`` dirties pages of the page cache (``page_size``, default 4096);
    ``flush(start, end)`` copies the page-aligned pages it covers to the disk, after
    committing pending metadata; ``discard_after`` and ``drop_before`` are durable
    when they return, as the store protocol requires. ``crash_image(rng)`` returns
    one of the images a power loss at this moment could leave; ``cache_image()``
    what a crash of the process alone leaves (everything the kernel holds).

    ``crash_hook``, when set, is called with a step name (``"flush"``,
    ``"metadata"``, ``"release"``, ``"head"``, ``"drop"``) at every point inside an
    operation where a crash would leave a distinct state, so a test can take crash
    images in the middle of a sync, a truncation or a recovery.

    ``disk_size`` simulates a small disk: growth past it raises ``OSError(ENOSPC)``
    and changes nothing.
    """

    location = "<power-loss simulation>"

    def __init__(
        self,
        *,
        segment_size: int | None = None,
        window_size: int = _DEFAULT_WINDOW_SIZE,
        page_size: int = 4096,
        sector_size: int = 512,
        metadata: MetadataOrder = "ordered",
        disk_size: int | None = None,
    ) -> None:
        for name, value in (
            ("window_size", window_size),
            ("page_size", page_size),
            ("sector_size", sector_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if metadata not in ("ordered", "any"):
            raise ValueError(f"metadata must be 'ordered' or 'any', got {metadata!r}")
        chunk_size = window_size if segment_size is None else segment_size
        super().__init__(chunk_size, None, writable=True)
        self.options = _Options(
            segment_size, window_size, page_size, sector_size, metadata, disk_size
        )
        self.crash_hook: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._units: dict[int, _Unit] = {}
        self._pending: list[_Op] = []
        self._disk = _Metadata({}, set(), 0, False, 0)
        if segment_size is None:
            self._pending.append(_Op("create_file"))

    # -- construction from an image ------------------------------------------------

    @classmethod
    def from_image(cls, image: CrashImage, *, disk_size: int | None = None) -> PowerLossStore:
        """Return a store whose disk and page cache both hold ``image``.

        Opening follows what the file stores do: a segment set with a gap or without
        the segment holding the head raises ``CorruptionError``; segments below the
        head are removed and short ones extended with zeros, durably.
        """
        store = cls(
            segment_size=image.segment_size,
            window_size=image.window_size,
            page_size=image.page_size,
            sector_size=image.sector_size,
            metadata=image.metadata,
            disk_size=disk_size,
        )
        try:
            if image.segment_size is None:
                store._load_single(image)
            else:
                store._load_segments(image)
        except BaseException:
            store.close()
            raise
        return store

    def _adopt(self, index: int, data: bytes) -> _Unit:
        size = self.chunk_size
        cache = mmap.mmap(-1, size)
        cache[: len(data)] = data
        durable = bytearray(size)
        durable[: len(data)] = data
        unit = _Unit(index, cache, durable)
        self._units[index] = unit
        self._chunks[index] = cache
        self._disk.allocated.add(id(unit))
        return unit

    def _load_single(self, image: CrashImage) -> None:
        data = image.files.get(LOG_FILE_NAME)
        if data is None:
            return  # the file never became durable: a new, empty log
        self._pending.clear()
        self._disk.file_exists = True
        size = self.chunk_size
        windows = -(-len(data) // size)
        for index in range(windows):
            self._adopt(index, data[index * size : (index + 1) * size])
        self._disk.windows = windows
        self._end_chunk = windows

    def _load_segments(self, image: CrashImage) -> None:
        size = self.chunk_size
        segments: dict[int, bytes] = {}
        for name, data in image.files.items():
            index = parse_segment_name(name)
            if index is not None:
                segments[index] = data
        for index, data in segments.items():
            if len(data) > size:
                raise ValueError(
                    f"segment {segment_name(index)} holds {len(data)} bytes, more than "
                    f"segment_size={size}"
                )
        head = decode_head_file(image.files.get(HEAD_FILE_NAME, b""))
        indices = sorted(segments)
        for previous, index in itertools.pairwise(indices):
            if index != previous + 1:
                raise CorruptionError(
                    (previous + 1) * size,
                    f"segment numbering has a gap after {segment_name(previous)}",
                    path=self.location,
                )
        head_index = head // size
        if indices and indices[0] > head_index:
            raise CorruptionError(
                head, f"the segment holding the head, {segment_name(head_index)}, is missing"
            )
        for index in indices:
            if index >= head_index:
                self._disk.entries[index] = self._adopt(index, segments[index])
        self._head_lsn = self._disk.head = head
        self._first_chunk = head_index
        live = [index for index in indices if index >= head_index]
        self._end_chunk = live[-1] + 1 if live else head_index

    # -- the chunk hooks -------------------------------------------------------------

    def _step(self, name: str) -> None:
        hook = self.crash_hook
        if hook is not None:
            hook(name)

    def _commit(self) -> None:
        with self._lock:
            for op in self._pending:
                op.apply(self._disk)
            self._pending.clear()

    def _create_chunk(self, index: int) -> mmap.mmap:
        limit = self.options.disk_size
        if limit is not None and (len(self._units) + 1) * self.chunk_size > limit:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (simulated)", self.location)
        cache = mmap.mmap(-1, self.chunk_size)
        unit = _Unit(index, cache, bytearray(self.chunk_size))
        with self._lock:
            self._units[index] = unit
            if self.options.segment_size is not None:
                self._pending.append(_Op("create", unit))
            self._pending.append(_Op("allocate", unit))
        return cache

    def _before_flush(self) -> None:
        if self._pending:
            self._step("metadata")
            self._commit()

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        self._step("flush")
        with self._lock:
            unit = self._units[index]
            cache = unit.cache
            page = self.options.page_size
            first = start // page
            last = -(-min(start + length, len(unit.durable)) // page)
            for number in range(first, last):
                low = number * page
                high = min(low + page, len(unit.durable))
                unit.durable[low:high] = cache[low:high]
                unit.history.pop(number, None)

    def _release_chunk(self, index: int) -> bool:
        if self.options.segment_size is None:
            return False
        with self._lock:
            unit = self._units.pop(index)
            unit.cache = bytes(unit.cache)
            self._pending.append(_Op("remove", unit))
        self._step("release")
        return True

    def _after_release(self) -> None:
        self._before_flush()

    # -- the store protocol ----------------------------------------------------------

    def write(self, offset: int, data: Buffer) -> None:
        with self._lock:
            self._remember(offset, offset + len(data))
            super().write(offset, data)

    def discard_after(self, end: int) -> None:
        with self._lock:
            self._remember(end, self.capacity)
            super().discard_after(end)

    def flush(self, start: int, end: int) -> None:
        with self._lock:
            # The log may copy frames straight into a piece, past ``write``: what the
            # pages hold now is a version the kernel may write back before a crash.
            self._remember(self._head_lsn, self.capacity)
        super().flush(start, end)

    def drop_before(self, offset: int) -> int:
        if self.options.segment_size is None or offset <= self._head_lsn:
            return self._head_lsn
        with self._lock:
            self._pending.append(_Op("head", value=offset))
        self._step("head")
        self._commit()
        self._head_lsn = offset
        new_first = offset // self.chunk_size
        for index in range(self._first_chunk, min(new_first, self._end_chunk)):
            chunk = self._chunks.pop(index, None)
            if chunk is None:
                continue
            with self._lock:
                unit = self._units.pop(index)
                unit.cache = bytes(chunk)
                self._pending.append(_Op("remove", unit))
            chunk.close()
            self._step("drop")
        self._first_chunk = new_first
        self._end_chunk = max(self._end_chunk, new_first)
        self._step("metadata")
        self._commit()
        return offset

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                for unit in self._units.values():
                    unit.cache = bytes(unit.cache)
            super().close()

    # -- images ------------------------------------------------------------------------

    def _remember(self, start: int, end: int) -> None:
        """Keep the current version of each page in ``[start, end)`` that differs from disk."""
        page = self.options.page_size
        size = self.chunk_size
        position = start
        while position < end:
            index = position // size
            base = index * size
            stop = min(end, base + size)
            unit = self._units.get(index)
            if unit is not None and not self.closed:
                for number in range((position - base) // page, -(-(stop - base) // page)):
                    low = number * page
                    high = min(low + page, size)
                    current = unit.cache[low:high]
                    if current == unit.durable[low:high]:
                        continue
                    versions = unit.history.setdefault(number, [])
                    if versions and versions[-1] == current:
                        continue
                    versions.append(current)
                    if len(versions) > _HISTORY_LIMIT:
                        del versions[0]
            position = stop

    @property
    def pending_metadata(self) -> int:
        """How many metadata changes (creations, removals, growth, head) are not durable."""
        return len(self._pending)

    def dirty_pages(self) -> list[tuple[str, int]]:
        """Return ``(file name, page number)`` of every page a crash may leave not as cached."""
        with self._lock:
            meta = self._disk.copy()
            for op in self._pending:
                op.apply(meta)
            result: list[tuple[str, int]] = []
            for name, unit, first_page in self._files(meta, allocated_only=False):
                page = self.options.page_size
                for number in range(-(-len(unit.durable) // page)):
                    low = number * page
                    high = min(low + page, len(unit.durable))
                    if unit.history.get(number) or unit.cache[low:high] != unit.durable[low:high]:
                        result.append((name, first_page + number))
            return result

    def _files(self, meta: _Metadata, *, allocated_only: bool) -> Iterator[tuple[str, _Unit, int]]:
        """Yield ``(file name, unit, number of the unit's first page in the file)``."""
        if self.options.segment_size is not None:
            for index in sorted(meta.entries):
                unit = meta.entries[index]
                if not allocated_only or id(unit) in meta.allocated:
                    yield segment_name(index), unit, 0
            return
        if not meta.file_exists:
            return
        pages_per_unit = -(-self.chunk_size // self.options.page_size)
        for index in range(meta.windows if allocated_only else len(self._units)):
            window = self._units.get(index)
            if window is not None:
                yield LOG_FILE_NAME, window, index * pages_per_unit

    def _page_image(
        self,
        unit: _Unit,
        number: int,
        *,
        name: str,
        file_page: int,
        rng: random.Random,
        fate: FateChooser | None,
    ) -> bytes | None:
        """Return what the disk holds for one page after a crash; None: the durable bytes."""
        page = self.options.page_size
        low = number * page
        high = min(low + page, len(unit.durable))
        old = bytes(unit.durable[low:high])
        new = unit.cache[low:high]
        earlier = unit.history.get(number, [])
        if new == old and not earlier:
            return None
        choice = fate(name, file_page) if fate is not None else None
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
        versions = [old, *earlier, new]
        first = old if rng.random() < 0.75 else rng.choice(versions)
        second = new if rng.random() < 0.75 else rng.choice(versions)
        sector = self.options.sector_size
        parts = [
            (first if rng.random() < 0.5 else second)[at : at + sector]
            for at in range(0, high - low, sector)
        ]
        return b"".join(parts)

    def crash_image(
        self,
        rng: random.Random,
        *,
        fate: FateChooser | None = None,
        metadata_ops: int | None = None,
    ) -> CrashImage:
        """Return one image a power loss at this moment could leave on disk.

        ``fate(file_name, page_number)`` may force what happens to a changed page
        (``None`` from it, or no ``fate``, lets ``rng`` choose); ``metadata_ops``
        forces how many pending metadata changes survive (in order).
        """
        with self._lock:
            pending = self._pending
            if metadata_ops is not None:
                survivors = pending[: max(0, metadata_ops)]
            elif self.options.metadata == "ordered":
                survivors = pending[: rng.randint(0, len(pending))]
            else:
                survivors = [op for op in pending if rng.random() < 0.5]
            meta = self._disk.copy()
            for op in survivors:
                op.apply(meta)
            return self._image(meta, rng, fate)

    def crash_images(self, rng: random.Random, count: int) -> list[CrashImage]:
        """Return ``count`` independent crash images of this moment."""
        return [self.crash_image(rng) for _ in range(count)]

    def durable_image(self) -> CrashImage:
        """Return the image with no unflushed page and no pending metadata surviving."""
        return self.crash_image(_fixed_rng(), fate=lambda _n, _p: PageFate.OLD, metadata_ops=0)

    def cache_image(self) -> CrashImage:
        """Return what a crash of the process alone leaves: everything the kernel holds."""
        with self._lock:
            return self.crash_image(
                _fixed_rng(),
                fate=lambda _n, _p: PageFate.NEW,
                metadata_ops=len(self._pending),
            )

    def _image(self, meta: _Metadata, rng: random.Random, fate: FateChooser | None) -> CrashImage:
        files: dict[str, bytes] = {}
        page = self.options.page_size
        if self.options.segment_size is not None:
            for index in sorted(meta.entries):
                files[segment_name(index)] = b""
            if meta.head:
                files[HEAD_FILE_NAME] = encode_head_file(meta.head)
        for name, unit, first_page in self._files(meta, allocated_only=True):
            data = bytearray(unit.durable)
            for number in range(-(-len(data) // page)):
                chosen = self._page_image(
                    unit, number, name=name, file_page=first_page + number, rng=rng, fate=fate
                )
                if chosen is not None:
                    data[number * page : number * page + len(chosen)] = chosen
            files[name] = files.get(name, b"") + bytes(data)
        if self.options.segment_size is None and meta.file_exists and LOG_FILE_NAME not in files:
            files[LOG_FILE_NAME] = b""
        options = self.options
        return CrashImage(
            files,
            options.segment_size,
            window_size=options.window_size,
            page_size=options.page_size,
            sector_size=options.sector_size,
            metadata=options.metadata,
        )


# -- the store behaviour suite ----------------------------------------------------------


_CYCLE = bytes(range(1, 252))


def _pattern(length: int, seed: int = 1) -> bytes:
    """Return ``length`` bytes with no zero byte, different for each seed."""
    shift = seed * 13 % len(_CYCLE)
    cycle = _CYCLE[shift:] + _CYCLE[:shift]
    return (cycle * (length // len(cycle) + 1))[:length]


@contextmanager
def _raises(*kinds: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except kinds:
        return
    names = " or ".join(kind.__name__ for kind in kinds)
    raise AssertionError(f"expected {names}, nothing was raised")


class StoreTests(abc.ABC):
    """The store protocol as pytest tests: subclass, implement ``make_store``, collect.

    Each test makes its stores through ``store()``, which closes them afterwards.
    Optional hooks widen the suite: ``reopen`` (a store over what the first one made
    durable) enables the durability tests, ``make_store_with_space`` the full-disk
    tests. ``drops_prefix`` says whether ``drop_before`` forgets whole units.
    """

    #: Whether ``drop_before`` really forgets a prefix (segmented stores).
    drops_prefix: ClassVar[bool] = False

    _made: list[Store]

    @abc.abstractmethod
    def make_store(self) -> Store:
        """Return a new, empty, writable store."""

    def reopen(self, store: Store) -> Store | None:
        """Close ``store`` and return a new one over what it made durable; None: unsupported."""
        del store
        return None

    def make_store_with_space(self, space: int) -> Store | None:
        """Return a new store that can back about ``space`` bytes; None: unsupported."""
        del space
        return None

    # -- plumbing -----------------------------------------------------------------------

    def setup_method(self) -> None:
        """Start with no store to close."""
        self._made = []

    def teardown_method(self) -> None:
        """Close every store the test made."""
        for store in self._made:
            store.close()

    def store(self) -> Store:
        """Return a new store from ``make_store``, closed after the test."""
        store = self.make_store()
        self._made.append(store)
        return store

    def _reopen(self, store: Store) -> Store:
        again = self.reopen(store)
        if again is None:
            raise unittest.SkipTest(f"{type(store).__name__} has no durable state to reopen")
        self._made.append(again)
        return again

    def _unit(self, store: Store) -> int:
        """Return the size of the first piece: where a write first crosses pieces."""
        store.ensure_capacity(1)
        _buffer, base, limit = store.piece(store.head_lsn)
        return limit - base

    # -- tests ----------------------------------------------------------------------------

    def test_new_store_is_empty(self) -> None:
        store = self.store()
        assert store.head_lsn == 0
        assert store.capacity >= 0
        assert not store.closed
        assert store.nonzero_extent(0) is None
        assert store.read(0, store.capacity) == bytes(store.capacity)
        assert isinstance(store.location, str)
        assert type(store).__name__ in repr(store)

    def test_ensure_capacity_backs_zeros_and_never_shrinks(self) -> None:
        store = self.store()
        for end in (1, 100, 5000, 20000):
            store.ensure_capacity(end)
            assert store.capacity >= end
            assert store.read(0, end) == bytes(end)
        grown = store.capacity
        store.ensure_capacity(10)
        store.ensure_capacity(0)
        assert store.capacity == grown

    def test_write_then_read_within_a_piece(self) -> None:
        store = self.store()
        store.ensure_capacity(64)
        store.write(3, b"hello")
        assert store.read(0, 10) == b"\0\0\0hello\0\0"
        assert store.read(3, 5) == b"hello"

    def test_write_accepts_every_buffer_kind(self) -> None:
        store = self.store()
        store.ensure_capacity(64)
        store.write(0, b"ab")
        store.write(2, bytearray(b"cd"))
        store.write(4, memoryview(b"xxef")[2:])
        assert store.read(0, 6) == b"abcdef"

    def test_write_and_read_across_pieces(self) -> None:
        store = self.store()
        unit = self._unit(store)
        end = 4 * unit + 17
        store.ensure_capacity(end)
        data = _pattern(3 * unit + 11)
        start = unit - 5
        store.write(start, data)
        assert store.read(start, len(data)) == data
        assert store.read(0, start) == bytes(start)
        assert store.read(start + len(data), 6) == bytes(6)
        # every split point reads the same bytes
        padded = data + bytes(3)
        for offset in (start, unit, unit + 1, 2 * unit - 1, start + len(data) - 1):
            assert store.read(offset, 3) == padded[offset - start : offset - start + 3]

    def test_read_is_clipped_at_capacity(self) -> None:
        store = self.store()
        store.ensure_capacity(10)
        capacity = store.capacity
        store.write(capacity - 3, b"xyz")
        assert store.read(capacity - 3, 100) == b"xyz"
        assert store.read(capacity, 10) == b""

    def test_piece_holds_the_offset_and_checks_bounds(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        capacity = store.capacity
        data = _pattern(capacity)
        store.write(0, data)
        for offset in (0, 1, unit - 1, unit, unit + 1, capacity - 1):
            buffer, base, limit = store.piece(offset)
            assert base <= offset < limit <= capacity
            assert bytes(buffer[offset - base : offset - base + 1]) == data[offset : offset + 1]
            assert bytes(buffer[0 : limit - base]) == data[base:limit]
        for outside in (capacity, capacity + 1, capacity + 10 * unit, -1):
            with _raises(ValueError):
                store.piece(outside)

    def test_flush_keeps_bytes_and_accepts_any_range(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit + 100)
        data = _pattern(2 * unit + 100)
        store.write(0, data)
        store.flush(5, 5)
        store.flush(3, 17)
        store.flush(unit - 1, unit + 1)
        store.flush(0, store.capacity)
        store.flush(0, store.capacity + 12345)
        assert store.read(0, len(data)) == data

    def test_flushed_bytes_survive_reopen(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit + 100)
        data = _pattern(2 * unit + 100, seed=3)
        store.write(0, data)
        store.flush(0, len(data))
        again = self._reopen(store)
        assert again.read(0, len(data)) == data

    def test_discard_after_zeroes_the_tail_and_keeps_the_rest(self) -> None:
        for cut in self._cuts():
            store = self.store()
            unit = self._unit(store)
            store.ensure_capacity(3 * unit)
            length = store.capacity
            data = _pattern(length, seed=cut)
            store.write(0, data)
            store.discard_after(cut)
            assert store.read(0, cut) == data[:cut], cut
            assert store.capacity >= cut
            rest = store.capacity - cut
            assert store.read(cut, rest) == bytes(rest), cut
            assert store.nonzero_extent(0) == ((0, cut) if cut else None), cut
            # growing again gives fresh zeros, never the old contents
            store.ensure_capacity(length)
            assert store.read(cut, length - cut) == bytes(length - cut), cut

    def _cuts(self) -> list[int]:
        probe = self.store()
        unit = self._unit(probe)
        return sorted({0, 1, unit - 1, unit, unit + 1, 2 * unit + 7, 3 * unit - 1})

    def test_discard_after_is_durable(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        data = _pattern(store.capacity, seed=5)
        store.write(0, data)
        store.flush(0, len(data))
        cut = unit + unit // 2 + 1
        store.discard_after(cut)
        again = self._reopen(store)
        assert again.read(0, cut) == data[:cut]
        rest = again.capacity - cut
        assert again.read(cut, rest) == bytes(rest)

    def test_drop_before(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(4 * unit)
        data = _pattern(store.capacity, seed=9)
        store.write(0, data)
        store.flush(0, len(data))
        target = 2 * unit + 3
        head = store.drop_before(target)
        assert head == store.head_lsn
        assert head <= target
        if not self.drops_prefix:
            assert head == 0
        else:
            assert head > 0
            with _raises(ValueError):
                store.piece(head - 1)
        assert store.read(head, len(data) - head) == data[head:]
        # a lower offset changes nothing
        assert store.drop_before(max(head - 1, 0)) == head
        assert store.drop_before(0) == head
        if self.drops_prefix:
            again = self._reopen(store)
            assert again.head_lsn == head
            assert again.read(head, len(data) - head) == data[head:]

    def test_nonzero_extent(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        assert store.nonzero_extent(0) is None
        store.write(5, b"\1")
        assert store.nonzero_extent(0) == (5, 6)
        far = 2 * unit + 9
        store.write(far, b"\0\2\0")
        assert store.nonzero_extent(0) == (5, far + 2)
        assert store.nonzero_extent(6) == (far + 1, far + 2)
        assert store.nonzero_extent(far + 2) is None
        assert store.nonzero_extent(store.capacity) is None

    def test_units_created_counts_growth(self) -> None:
        store = self.store()
        before = store.units_created
        unit = self._unit(store)
        store.ensure_capacity(store.capacity + 2 * unit)
        assert store.units_created >= before

    def test_close_is_idempotent(self) -> None:
        store = self.store()
        store.ensure_capacity(10)
        store.write(0, b"x")
        store.close()
        assert store.closed
        store.close()
        assert store.closed

    def test_a_closed_store_refuses_every_operation(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit)
        store.close()
        operations: list[tuple[str, Callable[[], object]]] = [
            ("piece", lambda: store.piece(0)),
            ("read", lambda: store.read(0, 1)),
            ("write", lambda: store.write(0, b"x")),
            ("ensure_capacity", lambda: store.ensure_capacity(8 * unit)),
            ("flush", lambda: store.flush(0, unit)),
            ("discard_after", lambda: store.discard_after(1)),
            ("nonzero_extent", lambda: store.nonzero_extent(0)),
        ]
        wrong: list[str] = []
        for name, operation in operations:
            try:
                operation()
            except (ValueError, WalClosedError):
                continue
            except Exception as error:  # noqa: BLE001 - reported below
                wrong.append(f"{name} raised {type(error).__name__}: {error}")
            else:
                wrong.append(f"{name} succeeded")
        assert not wrong, "a closed store must raise ValueError: " + "; ".join(wrong)

    def test_concurrent_writes_reads_and_flushes(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(4 * unit)
        size = store.capacity // 4
        errors: list[BaseException] = []

        def writer(part: int) -> None:
            try:
                data = _pattern(size, seed=part + 1)
                piece = max(97, size // 256)
                for step in range(0, size, piece):
                    store.write(part * size + step, data[step : step + piece])
                    store.read(part * size, 16)
            except BaseException as error:  # noqa: BLE001 - re-raised by the test
                errors.append(error)

        def flusher() -> None:
            try:
                for _ in range(20):
                    store.flush(0, 4 * size)
            except BaseException as error:  # noqa: BLE001 - re-raised by the test
                errors.append(error)

        threads = [threading.Thread(target=writer, args=(part,)) for part in range(4)]
        threads.append(threading.Thread(target=flusher))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for part in range(4):
            assert store.read(part * size, size) == _pattern(size, seed=part + 1)

    def test_out_of_space_changes_nothing(self) -> None:
        probe = self.store()
        unit = self._unit(probe)
        store = self.make_store_with_space(2 * unit)
        if store is None:
            raise unittest.SkipTest(f"{type(probe).__name__} cannot simulate a full disk")
        self._made.append(store)
        store.ensure_capacity(unit)
        store.write(0, b"kept")
        capacity = store.capacity
        with _raises(OSError):
            store.ensure_capacity(capacity + 8 * unit)
        assert store.capacity == capacity
        assert store.read(0, 4) == b"kept"
        store.write(capacity - 1, b"z")
        store.flush(0, capacity)
        assert store.read(capacity - 1, 1) == b"z"
