"""What a bulk append through a file mapping costs before any log code runs.

``python -m perf.mapping_floor [--records N] [--size B] [--reps R] [--dir PATH]``

Three loops write N frames of ``8 + B`` bytes, one call per frame, then make
them durable, each timed in the same process, alternating, R times:

- ``mapped``: a slice copy of each frame into fresh 64 MiB preallocated
  (``posix_fallocate``) files mapped ``MADV_RANDOM``, as mmwal maps a log's tail,
  then ``msync`` of each: every new page costs a write fault (allocate, zero,
  ``page_mkwrite``) and is written back as its own 4 KiB folio;
- ``mapped-resident``: the same copies into pages already faulted in (and
  still dirty, so writable): the copy and the loop alone, no fault;
- ``mapped-large-folios``: the copies of ``mapped`` into files mapped
  ``MADV_NORMAL``: the fault readahead builds large folios (fewer, larger
  faults and write-backs; the mapping mmwal gave up because one 256-byte commit
  into such a folio writes all of it back);
- ``mapped-populate-ahead``: the copies of ``mapped``, while a second thread
  runs ``MADV_POPULATE_WRITE`` (through ctypes, without the GIL) over the pages
  up to 8 MiB ahead of the copies, as a populate-ahead window in a store would:
  the faults move to the other core, and the pages it dirties beyond the end
  are preallocated space written back as zeros;
- ``plain``: ``write`` of each frame to a file opened ``"ab"`` with a 1 MiB
  buffer, then ``fdatasync`` (the ``plainfile`` engine's I/O, without its CRC).

The frames are prebuilt, so no checksum or header is computed: what remains is
what the kernel charges each way. ``mapped`` less ``mapped-resident`` is the
fault cost per record. Then what mmwal's append path adds on the CPU, over a
``MemStore`` already faulted in (no fault, no disk): ``wal.append`` and
``wal.append_many`` (batches of 1,024) as a writer's handle binds them (the C
path when the extension is built) and ``Wal.append(wal, ...)``, the Python path,
each appending the payloads of the same frames. docs/BENCHMARKS.md ("The append
path in C") uses both.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import tempfile
import time
from pathlib import Path

from mmwal import MemStore, Wal
from perf._background import BackgroundLoop

SEGMENT = 64 << 20
PLAIN_BUFFER = 1 << 20


def _frames(size: int, count: int) -> list[bytes]:
    pool = [os.urandom(8 + size) for _ in range(1024)]
    return [pool[i % len(pool)] for i in range(count)]


#: Linux's ``MADV_POPULATE_WRITE`` (5.14; the mmap module of Python 3.11 lacks it).
MADV_POPULATE_WRITE = 23
#: How far ahead of the copies ``mapped-populate-ahead`` keeps pages populated.
POPULATE_AHEAD = 8 << 20


class _Populator(BackgroundLoop):
    """Populate (fault in, writable) ``mapping`` ahead of ``position`` on a thread."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self.position = 0
        self._mapping = mapping
        super().__init__()

    def _run(self) -> None:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        anchor = ctypes.c_char.from_buffer(self._mapping)
        try:
            base = ctypes.addressof(anchor)
            populated = 0
            while populated < SEGMENT and not self._done:
                wanted = min(SEGMENT, (self.position + POPULATE_AHEAD) & ~(mmap.PAGESIZE - 1))
                if wanted <= populated:
                    time.sleep(0.0002)
                    continue
                if madvise(base + populated, wanted - populated, MADV_POPULATE_WRITE) != 0:
                    raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE)")
                populated = wanted
        finally:
            del anchor  # the mapping can be closed once no ctypes view exports it


def _copy(mapping: mmap.mmap, frames: list[bytes], populator: _Populator | None) -> None:
    """Copy ``frames`` back to back from the mapping's start, telling ``populator`` where."""
    size = len(frames[0])
    position = 0
    if populator is None:
        for frame in frames:
            end = position + size
            mapping[position:end] = frame
            position = end
        return
    for count, frame in enumerate(frames):
        end = position + size
        mapping[position:end] = frame
        position = end
        if not count & 255:
            populator.position = position


def _mapped(directory: Path, frames: list[bytes], how: str) -> tuple[float, float]:
    """Return (seconds of copies, seconds of msync) through mappings set up ``how``."""
    size = len(frames[0])
    per_segment = SEGMENT // size
    segments = -(-len(frames) // per_segment)
    maps: list[mmap.mmap] = []
    descriptors: list[int] = []
    try:
        for index in range(segments):
            fd = os.open(directory / f"map{index}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            descriptors.append(fd)
            os.posix_fallocate(fd, 0, SEGMENT)
            mapping = mmap.mmap(fd, SEGMENT)
            if how != "large-folios":
                mapping.madvise(mmap.MADV_RANDOM)
            maps.append(mapping)
        if how == "resident":
            # Faulted in and left dirty: msync would write-protect them again.
            for mapping in maps:
                mapping[:] = bytes(SEGMENT)
        started = time.perf_counter()
        for index, mapping in enumerate(maps):
            segment_frames = frames[index * per_segment : (index + 1) * per_segment]
            if how == "populate-ahead":
                with _Populator(mapping) as populator:
                    _copy(mapping, segment_frames, populator)
            else:
                _copy(mapping, segment_frames, None)
        copied = time.perf_counter()
        for mapping in maps:
            mapping.flush()
        return copied - started, time.perf_counter() - copied
    finally:
        for mapping in maps:
            mapping.close()
        for fd in descriptors:
            os.close(fd)
        for index in range(segments):
            (directory / f"map{index}").unlink(missing_ok=True)


def _plain(directory: Path, frames: list[bytes]) -> tuple[float, float]:
    """Return (seconds of writes, seconds of flush + fdatasync) of a buffered file."""
    path = directory / "plain"
    try:
        with path.open("ab", buffering=PLAIN_BUFFER) as file:
            write = file.write
            started = time.perf_counter()
            for frame in frames:
                write(frame)
            written = time.perf_counter()
            file.flush()
            os.fdatasync(file.fileno())
            return written - started, time.perf_counter() - written
    finally:
        path.unlink(missing_ok=True)


def _appends(payloads: list[bytes], how: str) -> tuple[float, float]:
    """Return (seconds, 0) to append ``payloads`` to a resident MemStore ``how``."""
    chunk = 1 << (sum(8 + len(payload) for payload in payloads) * 2).bit_length()
    with Wal.with_store(MemStore(chunk)) as wal:
        wal.append(b"")  # the chunk is made and faulted in here, outside the timing
        started = time.perf_counter()
        if how == "append_many":
            append_many = wal.append_many
            for start in range(0, len(payloads), 1024):
                append_many(payloads[start : start + 1024])
        else:
            append = wal.append if how == "append" else lambda data: Wal.append(wal, data)
            for payload in payloads:
                append(payload)
        return time.perf_counter() - started, 0.0


def main() -> None:
    """Run the loops, alternating, and print a Markdown table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=None)
    arguments = parser.parse_args()
    frames = _frames(arguments.size, arguments.records)
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(dir=arguments.dir) as scratch:
        directory = Path(scratch)
        for _ in range(arguments.reps):
            for how in ("fresh", "resident", "large-folios", "populate-ahead"):
                name = "mapped" if how == "fresh" else f"mapped-{how}"
                samples.setdefault(name, []).append(_mapped(directory, frames, how))
            samples.setdefault("plain", []).append(_plain(directory, frames))
        payloads = [frame[8:] for frame in frames]
        for _ in range(arguments.reps):
            for how in ("append", "append_many", "python-append"):
                samples.setdefault(f"wal {how}, resident", []).append(_appends(payloads, how))
    count = arguments.records
    print(f"{count} frames of {8 + arguments.size} B, {arguments.reps} runs, medians")
    print("| loop | ns per frame | sync s | frames/s with the sync |")
    print("|---|--:|--:|--:|")
    for name, runs in samples.items():
        loop = sorted(run[0] for run in runs)[len(runs) // 2]
        sync = sorted(run[1] for run in runs)[len(runs) // 2]
        total = sorted(run[0] + run[1] for run in runs)[len(runs) // 2]
        synced = f"{sync:.3f}" if sync else "-"
        print(f"| {name} | {loop / count * 1e9:.0f} | {synced} | {count / total / 1e6:.2f}M |")


if __name__ == "__main__":
    main()
