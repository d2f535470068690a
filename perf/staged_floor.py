"""Go/no-go for a staged write method: appends into private memory, ``pwrite`` at the sync.

``python -m perf.staged_floor [--records N] [--size B] [--reps R] [--dir PATH]
[--behind-step MiB] [--behind-poll MS] [--cases plainfile,...]``

Issue 9 asks bulk append at 256 B for 2x the ``plainfile`` engine and
``append_many`` for 2.5x, the final sync included; through a shared file
mapping no append path gets there (``perf.mapping_floor``). The idea timed
here: keep the log's tail in private anonymous memory (``MAP_PRIVATE |
MAP_ANONYMOUS``, ``MADV_HUGEPAGE``: faults 2 MiB at a time, no ``page_mkwrite``),
let the C append path copy into it as it copies into a mapping now, and at the
sync ``pwrite`` what no sync wrote yet (1 MiB a call), then ``fdatasync``.

``_PrototypeStagedStore`` is a scratch ``SegmentStore`` subclass doing that for
a fresh log only (no open of an existing tail, no truncation, no crash proofs):
enough to time the bench's path, not a store to ship.

Each case is the bench's ``bulk`` (one ``append`` call per record) or
``bulk_many`` (``append_many``, batches of 1,024), 64 MiB segments, then one
``sync``, timed with the sync:

- ``plainfile``: the bench's engine (``perf.engines.PlainFileEngine``), the
  reference;
- ``mapped``: ``Wal.open_segmented`` as it is (the ``mmwal-seg`` engine);
- ``staged``: the prototype;
- ``staged+behind``: the prototype, while a second thread writes out (``pwrite``
  and ``sync_file_range(SYNC_FILE_RANGE_WRITE)``) every 4 MiB the appends
  completed, so the sync waits only for the tail. The loop tells the thread how
  far the copies are done (``wal.next_lsn``, a single writer): a store cannot
  know that (concurrent copies complete out of order, and the ``Store`` protocol
  carries no written end), so this is the upper bound a log-to-store hint of the
  written end would allow.

Every case runs in a fresh process (``fresh``: as ``perf.bench`` runs its
cases, so the memory it touches was never touched by the process), and again
after a warm-up run of the same case in the same process (``warm``: the kernel
hands back pages this process freed a moment ago). The gap between the two is
the price of touching fresh memory, which on this VM is far above the kernel's
zeroing (``first touch``, below, times ``MADV_POPULATE_WRITE`` of 256 MiB of
private memory, first and second time in a process). A staged log touches two
bytes of fresh memory per byte appended (its private tail and the page cache),
the others one.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mmwal import SegmentStore, Wal
from perf._background import BackgroundLoop
from perf.engines import PlainFileEngine

SEGMENT = 64 << 20
BATCH = 1024
#: How much completed log ``staged+behind`` lets pile up before writing it out
#: (``--behind-step``), and how long its thread sleeps between looks (``--behind-poll``).
BEHIND_STEP = 4 << 20
BEHIND_POLL = 0.001
#: Linux's ``MADV_POPULATE_WRITE`` (5.14; the mmap module of Python 3.11 lacks it).
MADV_POPULATE_WRITE = 23
SYNC_FILE_RANGE_WRITE = 2
#: Bytes a verifying flush reads back and compares at a time.
VERIFY_STEP = 1 << 20
#: Bytes one ``pwrite`` writes out. In fresh processes here, 264 MB written in
#: 8 or 64 MiB calls took a 0.35-0.89 s sync in six of nine, in 1 MiB calls
#: 0.19-0.32 s in six of six (docs/BENCHMARKS.md).
WRITE_STEP = 1 << 20
CASES = ("plainfile", "mapped", "staged", "staged+behind", "staged+behind+verify")
WORKLOADS = ("bulk", "bulk_many")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int


def _private_memory(size: int, *, populate: bool) -> mmap.mmap:
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_HUGEPAGE)
    if populate:
        memory.madvise(MADV_POPULATE_WRITE)
    return memory


class _Stage:
    __slots__ = ("clean_below", "fd", "memory", "written_below")

    def __init__(self, memory: mmap.mmap, fd: int) -> None:
        self.memory = memory
        self.fd = fd
        # The file matches the memory below ``clean_below``; ``written_below``
        # is how far a write-behind wrote without knowing the copies were done.
        self.clean_below = 0
        self.written_below = 0


def _pwrite_steps(fd: int, view: memoryview, position: int, end: int) -> Iterator[int]:
    """Write ``view[position:end]`` at the same offsets of ``fd``; yield where each step ended."""
    while position < end:
        stop = min(end, position + WRITE_STEP)
        position += os.pwrite(fd, view[position:stop], position)
        yield position


class _PrototypeStagedStore(SegmentStore):
    """A fresh segmented log whose unsealed segments are private memory (measurement only)."""

    def __init__(self, directory: Path, *, verify: bool = False) -> None:
        super().__init__(directory, SEGMENT)
        self.verify = verify
        self._bounce = bytearray(VERIFY_STEP)
        self._stages: dict[int, _Stage] = {}
        self._reserved: dict[int, int] = {}
        self._write_lock = threading.Lock()
        self._warmer = None  # it warms file mappings; the tail here is memory

    def _reserve(self, index: int, *, durable: bool) -> int:
        fd = os.open(self.segment_path(index), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.posix_fallocate(fd, 0, self.chunk_size)
        if durable:
            os.fsync(fd)
            self.syscalls.fsync_directory(self.path)
        else:
            with self._metadata_lock:
                self._pending_files.add(index)
                self._directory_dirty = True
        return fd

    def _create_chunk(self, index: int) -> mmap.mmap:
        self._reserved[index] = self._reserve(index, durable=False)
        memory = _private_memory(self.chunk_size, populate=False)
        self._chunks[index] = memory
        return memory

    def _precreate_chunk(self, index: int) -> mmap.mmap:
        self._reserved[index] = self._reserve(index, durable=True)
        return _private_memory(self.chunk_size, populate=True)

    def _discard_spare(self, index: int, chunk: mmap.mmap) -> None:
        chunk.close()
        os.close(self._reserved.pop(index))
        os.remove(self.segment_path(index))

    def ensure_capacity(self, end: int) -> None:
        first_new = self._end_chunk
        super().ensure_capacity(end)
        for index in range(first_new, self._end_chunk):
            self._stages[index] = _Stage(self._chunks[index], self._reserved.pop(index))

    def write_out(self, index: int, stage: _Stage, end: int) -> int:
        """Write ``[clean_below, end)`` of the segment to its file; return where it began."""
        with self._write_lock, memoryview(stage.memory) as view:
            began = stage.clean_below
            for position in _pwrite_steps(stage.fd, view, began, end):
                stage.clean_below = position
        return began

    def write_ahead(self, stage: _Stage, end: int) -> int:
        """Write ``[written_below, end)`` not trusting it (``verify``); return where it began."""
        with self._write_lock, memoryview(stage.memory) as view:
            began = max(stage.written_below, stage.clean_below)
            for position in _pwrite_steps(stage.fd, view, began, end):
                stage.written_below = position
        return began

    def _check_written(self, stage: _Stage, end: int) -> None:
        """Compare what a write-behind wrote below ``end`` with the memory; rewrite what differs."""
        bounce = self._bounce
        with self._write_lock, memoryview(stage.memory) as view:
            position = stage.clean_below
            stop = min(end, stage.written_below)
            while position < stop:
                step = min(stop - position, VERIFY_STEP)
                got = os.preadv(stage.fd, [memoryview(bounce)[:step]], position)
                if got != step or bounce[:step] != view[position : position + step]:
                    os.pwrite(stage.fd, view[position : position + step], position)
                position += step
                stage.clean_below = position

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        stage = self._stages.get(index)
        if stage is None:
            super()._flush_chunk(index, start, length)
            return
        if self.verify:
            self._check_written(stage, start + length)
        self.write_out(index, stage, start + length)
        os.fdatasync(stage.fd)

    def _flush_spans(self, spans: list[tuple[int, int, int]]) -> None:
        for index, start, length in spans:
            stage = self._stages.get(index)
            if stage is None:
                super()._flush_chunk(index, start, length)
            else:
                if self.verify:
                    self._check_written(stage, start + length)
                self.write_out(index, stage, start + length)
        for index, _start, _length in spans:
            stage = self._stages.get(index)
            if stage is not None:
                os.fdatasync(stage.fd)

    def flush_plan(self, start: int, end: int) -> None:
        del start, end

    def release(self, end: int) -> None:
        super().release(end)
        for index, stage in list(self._stages.items()):
            if index < self._released_below and stage.clean_below >= len(stage.memory):
                with self._mapping_lock:
                    del self._stages[index]
                    if self._chunks.get(index) is stage.memory:
                        del self._chunks[index]
                os.close(stage.fd)

    def _drop_resident(self, chunk: mmap.mmap) -> None:
        # MADV_DONTNEED on private memory would discard the bytes.
        if all(stage.memory is not chunk for stage in self._stages.values()):
            super()._drop_resident(chunk)

    def _evict_clean(self, index: int, chunk: mmap.mmap, start: int) -> None:
        if index not in self._stages:
            super()._evict_clean(index, chunk, start)

    def _let_go_beyond_limit(self, keep: int) -> None:
        last = self._end_chunk - 1
        others = [i for i in list(self._chunks) if i not in (keep, *self._stages) and i < last]
        for index in others[: max(0, len(others) - self._mapped_limit + 1)]:
            self._chunks.pop(index, None)

    def close(self) -> None:
        super().close()
        for stage in self._stages.values():
            os.close(stage.fd)
        self._stages.clear()


class _WriteBehind(BackgroundLoop):
    """Write out, on a thread, what the loop says is complete (see the module docstring)."""

    def __init__(self, store: _PrototypeStagedStore, step: int, poll: float) -> None:
        self.completed = 0
        self._step = step
        self._poll = poll
        self._store = store
        super().__init__()

    def _run(self) -> None:
        store = self._store
        while not self._done:
            completed = self.completed
            for index, stage in list(store._stages.items()):
                local = min(completed - index * SEGMENT, len(stage.memory))
                if local - max(stage.clean_below, stage.written_below) >= self._step:
                    if store.verify:
                        began = store.write_ahead(stage, local)
                    else:
                        began = store.write_out(index, stage, local)
                    _sync_file_range(stage.fd, began, local - began, SYNC_FILE_RANGE_WRITE)
            time.sleep(self._poll)


def _payloads(size: int, count: int) -> list[bytes]:
    pool = [os.urandom(size) for _ in range(1024)]
    return [pool[i % len(pool)] for i in range(count)]


def _feed(
    append: Callable[[bytes], object],
    append_many: Callable[[list[bytes]], object],
    records: list[bytes],
    workload: str,
    progress: Callable[[], None] | None,
) -> None:
    if workload == "bulk_many":
        for number, start in enumerate(range(0, len(records), BATCH)):
            append_many(records[start : start + BATCH])
            if progress is not None and not number & 3:
                progress()
        return
    if progress is None:
        for data in records:
            append(data)
        return
    for number, data in enumerate(records):
        append(data)
        if not number & 4095:
            progress()


def _run_case(
    case: str,
    workload: str,
    records: list[bytes],
    directory: Path,
    behind: tuple[int, float] = (BEHIND_STEP, BEHIND_POLL),
) -> dict[str, float]:
    """Return the seconds of the appends and of the final sync of one run.

    ``behind`` is the write-behind's ``(step, poll)``.
    """
    if case == "plainfile":
        engine = PlainFileEngine()
        engine.open(directory)
        try:
            started = time.perf_counter()
            _feed(engine.append, engine.append_many, records, workload, None)
            appended = time.perf_counter()
            engine.sync()
            synced = time.perf_counter()
        finally:
            engine.close()
        return {"append_s": appended - started, "sync_s": synced - appended}
    store = (
        SegmentStore(directory / "wal", SEGMENT)
        if case == "mapped"
        else _PrototypeStagedStore(directory / "wal", verify=case.endswith("verify"))
    )
    with Wal.with_store(store) as wal:
        if case.startswith("staged+behind") and isinstance(store, _PrototypeStagedStore):
            with _WriteBehind(store, *behind) as writer:

                def progress() -> None:
                    writer.completed = wal.next_lsn

                started = time.perf_counter()
                _feed(wal.append, wal.append_many, records, workload, progress)
                appended = time.perf_counter()
        else:
            started = time.perf_counter()
            _feed(wal.append, wal.append_many, records, workload, None)
            appended = time.perf_counter()
        wal.sync()
        synced = time.perf_counter()
    return {"append_s": appended - started, "sync_s": synced - appended}


def _first_touch() -> dict[str, float]:
    """Time populating 256 MiB of private memory twice in one process."""
    seconds = []
    for _ in range(2):
        memory = _private_memory(256 << 20, populate=False)
        started = time.perf_counter()
        memory.madvise(MADV_POPULATE_WRITE)
        seconds.append(time.perf_counter() - started)
        memory.close()
    return {"first_s": seconds[0], "again_s": seconds[1]}


def _child(
    case: str,
    workload: str,
    count: int,
    size: int,
    scratch: str,
    *,
    warm: bool,
    behind: tuple[int, float],
) -> None:
    records = _payloads(size, count)
    if case == "first-touch":
        print(json.dumps(_first_touch()))
        return
    with tempfile.TemporaryDirectory(dir=scratch) as first:
        result = _run_case(case, workload, records, Path(first), behind)
    if warm:
        with tempfile.TemporaryDirectory(dir=scratch) as second:
            result = _run_case(case, workload, records, Path(second), behind)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """Run every case in fresh processes, alternating, and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--behind-step", type=int, default=BEHIND_STEP >> 20, help="MiB")
    parser.add_argument("--behind-poll", type=float, default=BEHIND_POLL * 1e3, help="ms")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list; plainfile first")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "WORKLOAD", "MODE"))
    arguments = parser.parse_args(argv)
    scratch = arguments.dir or tempfile.gettempdir()
    behind = (arguments.behind_step << 20, arguments.behind_poll / 1e3)
    cases = arguments.cases.split(",")
    if not cases or cases[0] != "plainfile" or not set(cases) <= set(CASES):
        parser.error(f"--cases: plainfile first, then any of {', '.join(CASES[1:])}")
    if arguments.child:
        case, workload, mode = arguments.child
        _child(
            case,
            workload,
            arguments.records,
            arguments.size,
            scratch,
            warm=mode == "warm",
            behind=behind,
        )
        return
    samples: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    touches: list[dict[str, float]] = []
    for _ in range(arguments.reps):
        for mode in ("fresh", "warm"):
            for workload in WORKLOADS:
                for case in cases:
                    command = [sys.executable, "-m", "perf.staged_floor", "--records"]
                    command += [str(arguments.records), "--size", str(arguments.size)]
                    command += ["--behind-step", str(arguments.behind_step)]
                    command += ["--behind-poll", str(arguments.behind_poll)]
                    command += ["--dir", scratch, "--child", case, workload, mode]
                    output = subprocess.run(command, check=True, capture_output=True, text=True)
                    samples.setdefault((mode, workload, case), []).append(json.loads(output.stdout))
        command = [sys.executable, "-m", "perf.staged_floor", "--child", "first-touch", "-", "-"]
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        touches.append(json.loads(output.stdout))
    count = arguments.records
    print(
        f"{count} records of {arguments.size} B, 64 MiB segments, {arguments.reps} runs, "
        f"medians; write-behind every {arguments.behind_step} MiB, "
        f"looking every {arguments.behind_poll:g} ms"
    )
    for mode in ("fresh", "warm"):
        print(f"\n{mode}:\n")
        print(
            "| workload | case | ns per record | sync s | records/s with the sync "
            "| least-most | x plainfile |"
        )
        print("|---|---|--:|--:|--:|--:|--:|")
        for workload in WORKLOADS:
            reference = 0.0
            for case in cases:
                runs = samples[(mode, workload, case)]
                append = statistics.median(run["append_s"] for run in runs)
                sync = statistics.median(run["sync_s"] for run in runs)
                rates = [count / (run["append_s"] + run["sync_s"]) for run in runs]
                rate = statistics.median(rates)
                reference = reference or rate
                print(
                    f"| {workload} | {case} | {append / count * 1e9:.0f} | {sync:.3f} "
                    f"| {rate / 1e6:.2f}M | {min(rates) / 1e6:.2f}-{max(rates) / 1e6:.2f}M "
                    f"| {rate / reference:.2f} |"
                )
    firsts = ", ".join(f"{touch['first_s']:.3f}" for touch in touches)
    agains = ", ".join(f"{touch['again_s']:.3f}" for touch in touches)
    print(f"\nfirst touch of 256 MiB private memory, s: {firsts}; again: {agains}")


if __name__ == "__main__":
    main()
