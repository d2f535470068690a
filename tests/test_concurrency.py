"""Many threads on one log: appends, iteration, group commit, ENOSPC, copies in flight.

The stress tests check outcomes that must hold under every interleaving (each
record exactly once, LSNs contiguous, every pass of a reader a prefix of the log),
never timings. Payloads describe themselves (thread, sequence number, length and a
CRC-32 of their own), so a partial, torn or misplaced record is caught by whoever
reads it. The interleaving tests hold a store operation on an ``Event`` to pin one
order; every wait has a deadline and a missed deadline fails the test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
from thread_runner import DEADLINE, Runner, wait_until

from mmwal import (
    SegmentStore,
    Syscalls,
    Wal,
    WalBrokenError,
    WalClosedError,
    WalError,
)
from mmwal._store import Buffer

T = TypeVar("T")

HEADER = 8
INLINE_COPY_LIMIT = 64 * 1024  # frames above this are copied outside the reservation lock


def run_all(runners: list[Runner[T]]) -> list[T]:
    for runner in runners:
        runner.start()
    return [runner.result() for runner in runners]


# -- self-describing payloads --------------------------------------------------------

_META = struct.Struct("<BII")  # thread, sequence number, body length
_CRC = struct.Struct("<I")  # CRC-32 of meta + body
_PREFIX = _META.size + _CRC.size


def make_payload(thread: int, seq: int, body: bytes) -> bytes:
    meta = _META.pack(thread, seq, len(body))
    return meta + _CRC.pack(zlib.crc32(body, zlib.crc32(meta))) + body


def read_payload(data: bytes) -> tuple[int, int]:
    """Return ``(thread, seq)`` of an intact payload; fail on any damage."""
    assert len(data) >= _PREFIX, f"payload of {len(data)} bytes is shorter than its prefix"
    thread, seq, length = _META.unpack_from(data)
    assert len(data) == _PREFIX + length, f"payload claims {length} body bytes, has more/less"
    (crc,) = _CRC.unpack_from(data, _META.size)
    assert zlib.crc32(data[_PREFIX:], zlib.crc32(data[: _META.size])) == crc, "damaged payload"
    return thread, seq


def body(rng: random.Random, *, large: bool = False) -> bytes:
    """A small random body, or one just past the inline-copy limit."""
    if large:
        return rng.randbytes(INLINE_COPY_LIMIT + rng.randrange(1, 2048))
    return rng.randbytes(rng.randrange(0, 48))


def assert_contiguous(records: list[tuple[int, bytes]], start: int = 0) -> int:
    """Check that sorted ``(lsn, payload)`` pairs tile the log from ``start``; return the end."""
    expected = start
    for lsn, payload in records:
        assert lsn == expected, f"gap or overlap at LSN {lsn}, expected {expected}"
        expected = lsn + HEADER + len(payload)
    return expected


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for ~1,500 tiny segments: each holds an fd (the mmap's dup) plus one until a flush."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new < 4096:
            pytest.skip(f"needs ~4096 open files for 4 KiB segments; hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- many appenders ----------------------------------------------------------------


def test_eight_threads_append_across_4k_segments_every_record_exactly_once(
    tmp_path: Path, many_fds: None
) -> None:
    threads, per_thread = 8, 5000
    directory = tmp_path / "log"
    wal = Wal.open_segmented(directory, 4096)
    start = threading.Barrier(threads, timeout=DEADLINE)

    def work(thread: int) -> list[tuple[int, bytes]]:
        rng = random.Random(thread)
        done: list[tuple[int, bytes]] = []
        large_at = 250 + 600 * thread  # one record per thread takes the out-of-lock path
        start.wait()
        seq = 0
        while seq < per_thread:
            if seq % 97 == 3 and seq + 4 <= per_thread:
                batch = [make_payload(thread, seq + i, body(rng)) for i in range(4)]
                done.extend(zip(wal.append_many(batch), batch, strict=True))
                seq += 4
                continue
            payload = make_payload(thread, seq, body(rng, large=seq == large_at))
            done.append((wal.append(payload), payload))
            seq += 1
        return done

    per_thread_results = run_all(
        [Runner(f"appender-{t}", partial(work, t)) for t in range(threads)]
    )

    for done in per_thread_results:
        lsns = [lsn for lsn, _ in done]
        assert lsns == sorted(lsns), "a thread's later append got a lower LSN"
    appended = sorted(pair for done in per_thread_results for pair in done)
    assert len(appended) == threads * per_thread
    assert len({lsn for lsn, _ in appended}) == len(appended), "an LSN was handed out twice"
    end = assert_contiguous(appended)
    assert wal.next_lsn == end
    assert sum(len(p) > INLINE_COPY_LIMIT for _, p in appended) == threads

    stats = wal.stats()
    assert stats.appends == len(appended)
    assert stats.bytes_appended == end - HEADER * len(appended)
    assert stats.segments_created == -(-end // 4096)

    live = [(record.lsn, record.data) for record in wal]
    assert live == appended
    for _, payload in live:
        read_payload(payload)
    wal.close()

    with Wal.open_segmented(directory) as reopened:
        assert reopened.recovery.end == end
        assert reopened.recovery.discarded_bytes == 0
        assert [(record.lsn, record.data) for record in reopened] == appended


def test_eight_threads_append_and_sync_all_durable_with_fewer_flushes(tmp_path: Path) -> None:
    threads, per_thread = 8, 500
    wal = Wal.open(tmp_path / "log")
    start = threading.Barrier(threads, timeout=DEADLINE)

    def work(thread: int) -> list[tuple[int, bytes]]:
        rng = random.Random(thread)
        done: list[tuple[int, bytes]] = []
        start.wait()
        for seq in range(per_thread):
            payload = make_payload(thread, seq, rng.randbytes(rng.randrange(0, 64)))
            lsn = wal.append_and_sync(payload)
            end = lsn + HEADER + len(payload)
            durable = wal.durable_lsn
            assert durable >= end, f"append_and_sync returned at durable {durable} < {end}"
            done.append((lsn, payload))
        return done

    results = run_all([Runner(f"committer-{t}", partial(work, t)) for t in range(threads)])
    commits = threads * per_thread
    appended = sorted(pair for done in results for pair in done)
    assert len(appended) == commits
    end = assert_contiguous(appended)
    assert wal.durable_lsn == end

    stats = wal.stats()
    assert stats.appends == commits
    assert stats.syncs_requested == commits
    assert 1 <= stats.flushes < commits, f"no coalescing: {stats.flushes} flushes"
    wal.close()
    with Wal.open(tmp_path / "log") as reopened:
        assert [(record.lsn, record.data) for record in reopened] == appended


def test_truncation_and_close_are_not_starved_by_threads_that_keep_committing(
    tmp_path: Path,
) -> None:
    """A truncation or close waits for the running flush, not for the commits to stop.

    Four threads commit in a loop while the main thread truncates three times and
    closes. Before, a leader coming back for its next commit took the one-flusher
    token again before the waiting truncation could, so it waited as long as the
    commits kept coming (seconds, or for ever).
    """
    wal = Wal.open(tmp_path / "log")
    first = wal.append(b"first")
    wal.sync()
    stop = threading.Event()
    commits = [0] * 4

    def commit(thread: int) -> None:
        while not stop.is_set():
            try:
                wal.append_and_sync(b"commit %d" % thread)
            except WalClosedError:
                return
            commits[thread] += 1

    runners = [Runner(f"committer-{t}", partial(commit, t)).start() for t in range(4)]
    try:
        for _ in range(3):
            before = sum(commits)
            deadline = time.monotonic() + DEADLINE
            while sum(commits) < before + 20:  # the committers are going
                assert time.monotonic() < deadline, "the committers made no progress"
                time.sleep(0.001)
            truncation = Runner("truncation", partial(wal.truncate_after, first)).start()
            truncation.thread.join(DEADLINE / 3)
            assert not truncation.thread.is_alive(), "truncate_after starved by commits"
            truncation.result()
        closing = Runner("close", wal.close).start()
        closing.thread.join(DEADLINE / 3)
        assert not closing.thread.is_alive(), "close starved by commits"
        closing.result()
    finally:
        stop.set()
        for runner in runners:
            runner.join()
    for runner in runners:
        assert runner.error is None, runner.error
    with Wal.open(tmp_path / "log") as reopened:
        assert next(record.lsn for record in reopened) == first


def test_a_reader_iterating_while_four_threads_append_sees_only_whole_prefixes(
    tmp_path: Path, many_fds: None
) -> None:
    writers, per_thread = 4, 800
    wal = Wal.open_segmented(tmp_path / "log", 4096)
    done = threading.Event()
    lock = threading.Lock()
    at_midpoint = [0]
    resume = threading.Event()  # set once a reader pass ran with every writer paused mid-way

    def writer(thread: int) -> list[tuple[int, bytes]]:
        rng = random.Random(100 + thread)
        appended: list[tuple[int, bytes]] = []
        seq = 0
        paused = False
        while seq < per_thread:
            if seq >= per_thread // 2 and not paused:
                paused = True
                with lock:
                    at_midpoint[0] += 1
                if not resume.wait(DEADLINE):
                    raise RuntimeError("the reader never finished a pass at the midpoint")
            if seq % 50 == 7:
                batch = [make_payload(thread, seq + i, body(rng)) for i in range(3)]
                appended.extend(zip(wal.append_many(batch), batch, strict=True))
                seq += 3
                continue
            payload = make_payload(thread, seq, body(rng, large=seq % 300 == 100))
            appended.append((wal.append(payload), payload))
            seq += 1
        return appended

    def check_pass(durable_before: int) -> list[tuple[int, int, int]]:
        seen: list[tuple[int, int, int]] = []
        next_seq = [0] * writers
        ends = {0}
        expected = 0
        for record in wal.iter():
            assert record.lsn == expected, f"out of order: LSN {record.lsn}, expected {expected}"
            thread, seq = read_payload(record.data)
            assert seq == next_seq[thread], (
                f"thread {thread}: seq {seq}, expected {next_seq[thread]}"
            )
            next_seq[thread] += 1
            expected = record.lsn + HEADER + len(record.data)
            ends.add(expected)
            seen.append((record.lsn, thread, seq))
        # durable_lsn only covers whole records that iteration can already see.
        assert durable_before in ends, f"durable_lsn {durable_before} is not a visible record end"
        return seen

    def reader() -> list[list[tuple[int, int, int]]]:
        passes: list[list[tuple[int, int, int]]] = []
        try:
            while not done.is_set():
                with lock:
                    all_paused = at_midpoint[0] == writers
                passes.append(check_pass(wal.durable_lsn))
                if all_paused:
                    resume.set()
        finally:
            resume.set()  # never leave the writers parked, even when a check failed
        passes.append(check_pass(wal.durable_lsn))
        return passes

    def syncer() -> int:
        count = 0
        while not done.is_set():
            wal.sync()
            count += 1
            time.sleep(0.001)  # leave the GIL to the others now and then
        return count

    reading = Runner("reader", reader).start()
    syncing = Runner("syncer", syncer).start()
    try:
        results = run_all([Runner(f"writer-{t}", partial(writer, t)) for t in range(writers)])
    finally:
        done.set()
        resume.set()
    passes = reading.result()
    assert syncing.result() >= 1

    appended = sorted(pair for part in results for pair in part)
    assert_contiguous(appended)
    final = [(lsn, *read_payload(payload)) for lsn, payload in appended]
    assert passes[-1] == final
    for seen in passes:
        assert seen == final[: len(seen)], "a pass was not a prefix of the log"
    assert any(0 < len(seen) < len(final) for seen in passes), "no pass overlapped the writers"
    wal.close()
    with Wal.open_segmented(tmp_path / "log") as reopened:
        assert [(record.lsn, record.data) for record in reopened] == appended


# -- ENOSPC ---------------------------------------------------------------------------


class NoSpaceSyscalls(Syscalls):
    """Real syscalls, except that allocation fails with ENOSPC while ``full`` is set."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self._lock = threading.Lock()
        self.refused = 0

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self.full.is_set():
            with self._lock:
                self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().allocate(fd, offset, length)


def test_enospc_on_segment_creation_fails_only_those_appends_and_leaves_no_gap(
    tmp_path: Path,
) -> None:
    writers = 4
    directory = tmp_path / "log"
    syscalls = NoSpaceSyscalls()
    wal = Wal.with_store(SegmentStore(directory, 4096, syscalls=syscalls))
    generation = [0]

    def between_phases() -> None:
        # Runs once every party reached the barrier, before any is released: the
        # disk fills up exactly between phase 1 and phase 2.
        generation[0] += 1
        if generation[0] == 1:
            syscalls.full.set()

    phase = threading.Barrier(writers + 1, action=between_phases, timeout=DEADLINE)

    def writer(thread: int) -> tuple[list[tuple[int, bytes]], list[BaseException], bool]:
        rng = random.Random(200 + thread)
        ok: list[tuple[int, bytes]] = []
        failed: list[BaseException] = []
        seq = 0

        def attempt(size: int) -> bool:
            nonlocal seq
            payload = make_payload(thread, seq, rng.randbytes(size))
            seq += 1
            try:
                ok.append((wal.append(payload), payload))
            except OSError as error:
                failed.append(error)
                return False
            return True

        for _ in range(150):  # phase 1: space to spare
            attempt(rng.randrange(0, 200))
        phase.wait()  # the disk fills up
        attempts = 0
        while not failed:
            attempts += 1
            if attempts > 5000:
                raise RuntimeError("no append failed although no segment could be created")
            attempt(rng.randrange(0, 200))
        for size in (0, 150, 0, 40, 0):  # small ones may still fit in the last segment
            attempt(size)
        big_failed = not attempt(INLINE_COPY_LIMIT + 1000)  # would need new segments
        phase.wait()  # the main thread checks the log, then frees space
        phase.wait()
        for _ in range(150):  # phase 3: space again
            assert attempt(rng.randrange(0, 200)), "append failed after space was freed"
        return ok, failed, big_failed

    runners = [Runner(f"writer-{t}", partial(writer, t)).start() for t in range(writers)]
    try:
        phase.wait()  # the action sets ``full``
        phase.wait()
        # Every writer saw ENOSPC. The log holds exactly the successful appends.
        next_lsn = wal.next_lsn
        in_log = [(record.lsn, record.data) for record in wal]
        assert assert_contiguous(in_log) == next_lsn
        wal.sync()  # a failed allocation did not break the log
        assert wal.durable_lsn == next_lsn
        assert wal.stats().appends == len(in_log)
        segments = sorted(name for name in os.listdir(directory) if name.endswith(".wal"))
        assert segments == [f"{i:020d}.wal" for i in range(-(-next_lsn // 4096))], segments
        syscalls.full.clear()
        phase.wait()
    except BaseException:
        phase.abort()  # free the writers parked at the barrier
        raise
    finally:
        syscalls.full.clear()
    results = [runner.result() for runner in runners]

    for _, failed, big_failed in results:
        assert failed, "every writer hit the full disk"
        assert big_failed, "an append needing new segments succeeded on a full disk"
        for error in failed:
            assert isinstance(error, OSError)
            assert not isinstance(error, WalError)
            assert error.errno == errno.ENOSPC
    assert syscalls.refused >= writers
    appended = sorted(pair for ok, _, _ in results for pair in ok)
    assert [pair for pair in appended if pair[0] < next_lsn] == in_log
    end = assert_contiguous(appended)
    assert [(record.lsn, record.data) for record in wal] == appended
    wal.append_and_sync(b"after the fault")
    wal.close()
    with Wal.open_segmented(directory) as reopened:
        assert reopened.recovery.discarded_bytes == 0
        recovered = [(record.lsn, record.data) for record in reopened]
    assert recovered[:-1] == appended
    assert recovered[-1] == (end, b"after the fault")


class StagedSyscalls(Syscalls):
    """Real syscalls, except that a chosen allocation waits on ``gate`` and fails with ENOSPC.

    After ``fail_allocation(after=n)``, ``n`` more allocations succeed; the next one
    sets ``failing``, waits for ``gate`` and raises ENOSPC, as does every later one
    until ``heal``.
    """

    def __init__(self) -> None:
        self._calls = 0
        self._fail_at: int | None = None
        self.gate = threading.Event()
        self.failing = threading.Event()

    def fail_allocation(self, *, after: int) -> None:
        self._fail_at = self._calls + after + 1

    def heal(self) -> None:
        self._fail_at = None

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self._calls += 1
        if self._fail_at is not None and self._calls >= self._fail_at:
            self.failing.set()
            if not self.gate.wait(DEADLINE):
                raise RuntimeError("a held allocation was never released")
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().allocate(fd, offset, length)


class FlushGateStore(SegmentStore):
    """A segment store whose next flush can be held before it touches anything."""

    def __init__(self, directory: Path, segment_size: int, syscalls: Syscalls) -> None:
        self.flush_gate: threading.Event | None = None
        self.at_flush = threading.Event()
        super().__init__(directory, segment_size, syscalls=syscalls)

    def _before_flush(self) -> None:
        gate, self.flush_gate = self.flush_gate, None
        if gate is not None:
            self.at_flush.set()
            if not gate.wait(DEADLINE):
                raise RuntimeError("a held flush was never released")
        super()._before_flush()


def test_enospc_while_growing_by_several_segments_during_a_flush_leaves_the_log_usable(
    tmp_path: Path,
) -> None:
    """An append needing two new segments gets the first, then ENOSPC, while a flush runs.

    The flush (a leader that fixed its range before the append took the reservation
    lock) makes the first new segment's creation durable in the meantime. The append
    must still fail with plain ENOSPC and leave the log as it was, usable once space
    is free. Catches a rollback that assumes the newest pending descriptor is the
    rolled-back segment's although the flush already took (and closed) it: an error
    escaping ``ensure_capacity`` halfway through its rollback would leave the store
    counting a segment that is unmapped, so later appends into it would fail.
    """
    syscalls = StagedSyscalls()
    store = FlushGateStore(tmp_path / "log", 4096, syscalls)
    wal = Wal.with_store(store)
    flush_gate = threading.Event()
    big = b"G" * 9000  # from inside segment 0 it reaches into segment 2
    try:
        first = b"first"
        first_end = wal.append(first) + HEADER + len(first)
        store.flush_gate = flush_gate
        syncer = Runner("syncer", wal.sync).start()
        assert store.at_flush.wait(DEADLINE)  # range fixed, reservation lock free
        syscalls.fail_allocation(after=1)  # segment 1 is made, segment 2 hits ENOSPC
        grower = Runner("grower", lambda: wal.append(big)).start()
        assert syscalls.failing.wait(DEADLINE)  # holds segment 1, waits for segment 2
        flush_gate.set()
        syncer.result()
        syscalls.gate.set()
        grower.join()
        error = grower.error
        assert isinstance(error, OSError), f"expected ENOSPC, got {error!r}"
        assert error.errno == errno.ENOSPC
        assert not isinstance(error, WalError)

        syscalls.heal()
        assert wal.next_lsn == first_end
        assert wal.append(big) == first_end  # space is back: the same append works
        wal.append_and_sync(b"last")
        assert [record.lsn for record in wal] == [0, first_end, first_end + HEADER + len(big)]
    finally:
        flush_gate.set()
        syscalls.gate.set()
        syscalls.heal()
        with contextlib.suppress(Exception):
            wal.close()
    with Wal.open_segmented(tmp_path / "log") as reopened:
        assert [record.data for record in reopened] == [first, big, b"last"]


# -- copies in flight (frames above 64 KiB) --------------------------------------------


class HookedStore(SegmentStore):
    """A segment store whose large copies and piece lookups can be held, or copies failed."""

    def __init__(self, directory: Path, segment_size: int) -> None:
        self.copy_gate: threading.Event | None = None
        self.copy_started = threading.Event()
        self.copy_failure: OSError | None = None
        self.hook_min_size = INLINE_COPY_LIMIT + 1  # writes this large are held/failed
        self.hold_next_piece: threading.Event | None = None
        self.piece_held = threading.Event()
        super().__init__(directory, segment_size)

    def write(self, offset: int, data: Buffer) -> None:
        if len(data) >= self.hook_min_size:
            self.copy_started.set()
            gate = self.copy_gate
            if gate is not None and not gate.wait(DEADLINE):
                raise RuntimeError("a held copy was never released")
            if self.copy_failure is not None:
                raise self.copy_failure
        super().write(offset, data)

    def piece(self, offset: int) -> tuple[Buffer, int, int]:
        found = super().piece(offset)
        gate, self.hold_next_piece = self.hold_next_piece, None
        if gate is not None:
            self.piece_held.set()
            if not gate.wait(DEADLINE):
                raise RuntimeError("a held piece lookup was never released")
        return found


def test_iteration_sync_and_durable_lsn_stop_at_a_copy_in_flight(tmp_path: Path) -> None:
    store = HookedStore(tmp_path / "log", 4096)
    wal = Wal.with_store(store)
    gate = threading.Event()
    try:
        first = b"first"
        first_end = wal.append(first) + HEADER + len(first)
        big = b"B" * (INLINE_COPY_LIMIT + 5000)
        store.copy_gate = gate
        copier = Runner("copier", lambda: wal.append(big)).start()
        assert store.copy_started.wait(DEADLINE)

        # An append reserved after the one in flight is not blocked by its copy...
        after = wal.append(b"after")
        assert after == first_end + HEADER + len(big)
        # ...but nothing reads, syncs or counts as durable past the unfinished copy.
        assert [record.lsn for record in wal] == [0]
        assert list(wal.iter_from(after)) == []

        def sync_then_look() -> bool:
            wal.sync()
            return gate.is_set()

        def commit_then_look() -> bool:
            wal.append_and_sync(b"later")
            return gate.is_set()

        syncer = Runner("syncer", sync_then_look).start()
        committer = Runner("committer", commit_then_look).start()
        wait_until(lambda: wal.stats().syncs_requested == 2, "both syncs are waiting")
        assert wal.durable_lsn == 0
        assert [record.lsn for record in wal] == [0]

        gate.set()
        assert copier.result() == first_end
        assert syncer.result(), "sync returned before the copy in flight was written"
        assert committer.result(), "append_and_sync returned before an earlier copy was written"
        records = list(wal)
        assert [record.lsn for record in records][:3] == [0, first_end, after]
        assert records[1].data == big
        assert wal.durable_lsn == wal.next_lsn
    finally:
        gate.set()
        wal.close()


@pytest.mark.parametrize(
    "size",
    [INLINE_COPY_LIMIT + 1, 6000],
    ids=["out-of-lock-copy-held-in-flight", "inline-copy-across-segments"],
)
def test_a_failed_copy_never_lets_a_later_commit_report_durable(tmp_path: Path, size: int) -> None:
    """Fail-stop for copies: a write that failed must not leave a hole later syncs flush past.

    Catches a reservation kept when its copy raises without breaking the log: the
    next records would land after a hole of zeros, ``append_and_sync`` of one would
    return as durable, and recovery would stop at the hole, dropping the "durable"
    record. In the out-of-lock case the commit is concurrent: it waits for the copy
    in flight, which then fails.
    """
    store = HookedStore(tmp_path / "log", 4096)
    store.hook_min_size = size
    wal = Wal.with_store(store)
    gate = threading.Event()
    held = size > INLINE_COPY_LIMIT  # an inline copy holds the reservation lock: no gate
    problems: list[str] = []
    try:
        wal.append(b"before")
        store.copy_gate = gate if held else None
        store.copy_failure = OSError(errno.EIO, "injected copy failure")
        copier = Runner("copier", lambda: wal.append(b"B" * size)).start()
        assert store.copy_started.wait(DEADLINE)
        if not held:
            copier.join()
        committer = Runner("committer", lambda: wal.append_and_sync(b"after the hole")).start()
        if held:
            wait_until(lambda: wal.stats().syncs_requested == 1, "the commit is waiting")
            gate.set()
            copier.join()
        assert isinstance(copier.error, OSError | WalError), copier.error
        store.copy_failure = None
        committer.join()
        if committer.error is not None:
            assert isinstance(committer.error, WalBrokenError), committer.error
        try:
            live = [record.lsn for record in wal]
        except WalError as error:
            problems.append(f"the live log cannot be read past the failed copy: {error}")
            live = []
    finally:
        gate.set()
        with contextlib.suppress(WalError):
            wal.close()
    with Wal.open_segmented(tmp_path / "log") as reopened:
        recovered = [record.lsn for record in reopened]
    if committer.returned:
        assert committer.value is not None
        if committer.value not in recovered:
            problems.append(
                f"append_and_sync returned LSN {committer.value} as durable, but recovery "
                f"keeps only {recovered}"
            )
    if live and live != recovered[: len(live)]:
        problems.append(f"the live log showed {live}, recovery found {recovered}")
    assert not problems, "; ".join(problems)


def test_an_iterator_racing_close_stops_with_wal_closed_error(tmp_path: Path) -> None:
    """A reader whose step is under way when another thread closes gets ``WalClosedError``.

    The step has already fetched its mapping when ``close`` unmaps it; reading the
    closed mapping must surface as ``WalClosedError``, not ``ValueError: mmap closed
    or invalid`` (what a plain stress loop showed before 388bcae, 19 of 30 trials).
    The held ``piece`` lookup pins the interleaving a GIL switch inside the step
    produces.
    """
    store = HookedStore(tmp_path / "log", 4096)
    wal = Wal.with_store(store)
    wal.append_many([b"record %d" % i for i in range(200)])
    gate = threading.Event()
    store.hold_next_piece = gate
    reader = Runner("reader", lambda: [record.lsn for record in wal]).start()
    try:
        assert store.piece_held.wait(DEADLINE)
        closer = Runner("closer", wal.close).start()
        # A close that waits for readers would park here; one that does not has
        # finished. Either way the reader must then see whole records or WalClosedError.
        closer.thread.join(0.2)
    finally:
        gate.set()
    closer.result()
    reader.join()
    assert reader.returned or isinstance(reader.error, WalClosedError), repr(reader.error)
