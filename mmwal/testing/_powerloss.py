"""A power-loss simulator: every disk image a machine crash could leave.

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
  earlier ``write``, ``flush``, ``discard_after`` or crash image; the log's fast
  path copies into a piece directly, so not every intermediate version is seen),
  or torn: each 512-byte sector (``sector_size``) from one version or another.
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
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import itertools
import mmap
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from mmwal._chunked import ChunkedStore
from mmwal._config import WalConfig
from mmwal._errors import CorruptionError
from mmwal._filestore import FileStore
from mmwal._format import (
    HEAD_FILE_NAME,
    decode_head_file,
    encode_head_file,
    parse_segment_name,
    segment_name,
)
from mmwal._segstore import SegmentStore
from mmwal._store import Buffer
from mmwal._wal import Wal

__all__ = [
    "LOG_FILE_NAME",
    "CrashImage",
    "MetadataOrder",
    "PageFate",
    "PowerLossStore",
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

    __slots__ = ("cache", "durable", "history", "index", "serial")

    _serials = itertools.count()

    def __init__(self, index: int, cache: mmap.mmap, durable: bytearray) -> None:
        self.index = index
        self.serial = next(self._serials)  # unlike id(), never reused
        self.cache: mmap.mmap | bytes = cache
        self.durable = durable
        # page number -> earlier page-cache versions since the page was last flushed
        self.history: dict[int, list[bytes]] = {}


@dataclasses.dataclass
class _Metadata:
    """The durable directory state, or a copy of it being built into an image."""

    entries: dict[int, _Unit]  # segmented: index -> file whose name is durable
    allocated: set[int]  # serials of units whose size is durable
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
            meta.allocated.add(unit.serial)
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
        self._disk.allocated.add(unit.serial)
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

    def _forget_chunk(self, index: int) -> None:
        # A growth that failed part way gives back what it made: a segment file is
        # removed (as pending as its creation), a window stays allocated.
        with self._lock:
            unit = self._units.pop(index)
            if self.options.segment_size is not None:
                unit.cache = bytes(self.chunk_size)
                self._pending.append(_Op("remove", unit))

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
        self._check_open()
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
                if not allocated_only or unit.serial in meta.allocated:
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
            if not self.closed:
                self._remember(self._head_lsn, self.capacity)
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
