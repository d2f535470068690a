"""Walk hostile bytes through the C frame walk, each buffer ending where readable memory ends.

Run as a script (tests run it in a subprocess, so an over-read that crashes fails
the test instead of killing pytest)::

    python tests/hostile_walk.py [--extension PATH] [--heap] [--no-guard]

Every sample is copied flush against a ``PROT_NONE`` guard page: a read one byte
past the buffer faults (SIGSEGV). With ``--heap`` each sample is also walked from
an exact-size ``malloc`` buffer, which AddressSanitizer's red zones guard when
libasan is preloaded (``--no-guard`` leaves the guard pages out, so only those red zones
catch an over-read). ``--extension`` loads the walk from a given build of
``mmwal/_speedups.c`` instead of the installed one. Prints the count of walks and
exits 0 when nothing faulted.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import mmap
import random
import struct
import sys
from collections.abc import Iterator
from types import ModuleType

PAGE = mmap.PAGESIZE
PROT_NONE = 0
PROT_READ_WRITE = 3
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# malloc and free as the process resolves them (a preloaded AddressSanitizer's),
# not libc's own, which a handle on libc would name.
_process = ctypes.CDLL(None)
_process.malloc.argtypes = [ctypes.c_size_t]
_process.malloc.restype = ctypes.c_void_p
_process.free.argtypes = [ctypes.c_void_p]


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(payload: bytes, *, length: int | None = None) -> bytes:
    """Frame ``payload`` with a good CRC, or with ``length`` claimed instead of its own."""
    claimed = len(payload) if length is None else length
    length_field = struct.pack("<I", claimed)
    return struct.pack("<I", _crc32c(length_field + payload)) + length_field + payload


def samples(seed: int = 8) -> Iterator[bytes]:
    """Yield hostile byte strings: random, truncated, huge lengths, frames ending at the end."""
    rng = random.Random(seed)
    yield b""
    for size in [*range(1, 40), 63, 64, 65, 255, 4095, 4096, 4097]:
        yield rng.randbytes(size)
    good = b"".join(frame(rng.randbytes(rng.randrange(0, 40))) for _ in range(6))
    last = frame(rng.randbytes(37))
    yield good + last  # every frame good, the last one ending at the very end
    for cut in range(1, len(last)):
        yield good + last[:cut]  # the last frame cut short: header or payload
    payload = rng.randbytes(29)
    for claimed in range(len(payload) - 3, len(payload) + 10):
        # A good CRC over the bytes present, a length claiming more or fewer.
        yield good + frame(payload, length=claimed)
    for huge in (0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1 << 20, 4096):
        yield good + struct.pack("<II", rng.getrandbits(32), huge) + rng.randbytes(11)
        yield struct.pack("<II", 0, huge)
    yield frame(b"")  # an empty payload: the header is the whole frame
    yield frame(b"") * 64


def guarded(data: bytes) -> tuple[mmap.mmap, int]:
    """Return a mapping holding ``data`` flush against a PROT_NONE page, and its offset."""
    pages = max(1, -(-len(data) // PAGE))
    mapping = mmap.mmap(-1, (pages + 1) * PAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    if _libc.mprotect(address + pages * PAGE, PAGE, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    offset = pages * PAGE - len(data)
    mapping[offset : offset + len(data)] = data
    return mapping, offset


def walk(speedups: ModuleType, view: memoryview, record_type: type) -> int:
    """Walk ``view`` every way the callers do; return the number of walks."""
    size = len(view)
    walks = 0
    for start in {0, 1, 7, 8, size // 2, max(size - 8, 0), size}:
        for limit in {size, max(size - 1, 0), size + 4096, 10**12}:
            for max_size in (0, 28, 4096, 1 << 40):
                for kind in (record_type, None):
                    speedups.scan(view, start, limit, 0, max_size, kind, -1, -1)
                    speedups.scan(view, start, limit, 0, max_size, kind, 1, 16)
                    walks += 2
    speedups.crc32c(view)
    if size:
        speedups.crc32c(view[size - 1 :])
    return walks + 2 + walk_views(speedups, view, record_type)


def walk_views(speedups: ModuleType, view: memoryview, record_type: type) -> int:
    """Walk ``view`` as ``copy=False`` reads do (frames, then RecordViews); return the walks."""
    run = view.cast("B")
    walks = 0
    for max_size in (28, 1 << 40):
        for step in (16, -1):
            position = 0
            runs = []
            while True:
                lsns, offsets, lengths, stop = speedups.frames(
                    run, position, len(run), 0, max_size, -1, step
                )
                if stop == position:
                    break
                runs.append((run, lsns, offsets, lengths, None, 0))
                position = stop
            feed = iter(runs)
            records = speedups.RecordViews(lambda lsn, feed=feed: next(feed, None), record_type)
            for record in records:
                bytes(record[1])  # every byte of every payload view is read
                if record[0] % 3 == 0:
                    records.release_views()  # asked again: the feed hands out the next run
            walks += 1
    return walks


def load(path: str | None) -> ModuleType:
    if path is None:
        from mmwal import _speedups

        return _speedups
    spec = importlib.util.spec_from_file_location("_speedups", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extension")
    parser.add_argument("--heap", action="store_true")
    parser.add_argument("--no-guard", action="store_true")
    arguments = parser.parse_args()
    speedups = load(arguments.extension)
    record_type = type("Record", (tuple,), {})
    walks = 0
    for data in samples():
        if not arguments.no_guard:
            mapping, offset = guarded(data)
            with memoryview(mapping) as whole, whole[offset : offset + len(data)] as view:
                walks += walk(speedups, view, record_type)
            mapping.close()
        if arguments.heap and data:
            # malloc'd by the C library itself (Python's allocators round sizes up),
            # so the byte after the buffer is a red zone under AddressSanitizer.
            address = _process.malloc(len(data))
            try:
                ctypes.memmove(address, data, len(data))
                exact = (ctypes.c_char * len(data)).from_address(address)
                with memoryview(exact) as view:
                    walks += walk(speedups, view, record_type)
            finally:
                _process.free(address)
    sys.stdout.write(f"{walks} walks\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
