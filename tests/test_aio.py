"""``mmwal.aio``: group commit across tasks, and no wait for the disk on the event loop.

The waits are made deterministic with a ``Syscalls`` whose ``msync`` blocks until
the test opens a gate: while it is blocked, the loop must keep running.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import mmwal
import mmwal.aio
from mmwal.aio import AsyncWal

GATE_TIMEOUT = 10.0


class GatedSyscalls(mmwal.Syscalls):
    """A data flush (msync or fdatasync) waits for ``gate`` (open by default).

    ``entered`` says one is waiting.
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.allocating_threads: list[threading.Thread] = []
        self.fail_with: OSError | None = None

    def _gated(self) -> None:
        self.entered.set()
        # Bounded, so a loop that blocks on this fails the test instead of hanging it.
        self.gate.wait(GATE_TIMEOUT)
        if self.fail_with is not None:
            raise self.fail_with

    def msync(self, address: int, length: int) -> None:
        self._gated()
        super().msync(address, length)

    def fdatasync(self, fd: int) -> None:
        self._gated()
        super().fdatasync(fd)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.allocating_threads.append(threading.current_thread())
        super().allocate(fd, offset, length)


def _gated_log(directory: Path, syscalls: GatedSyscalls, segment_size: int = 1 << 20) -> AsyncWal:
    store = mmwal.SegmentStore(directory, segment_size, syscalls=syscalls)
    return AsyncWal(mmwal.Wal.with_store(store))


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GATE_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.001)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_open_append_sync_reopen(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mmwal.aio.open(tmp_path / "log", segment_size=1 << 16) as wal:
            first = await wal.append(b"one")
            rest = await wal.append_many([b"two", b"three"])
            last = await wal.append_and_sync(b"four")
            assert wal.durable_lsn >= wal.next_lsn
            assert [first, *rest, last] == [0, 11, 22, 35]
            assert wal.stats().appends == 4
        wal = await mmwal.aio.open(tmp_path / "log")
        assert [record.data for record in wal.wal] == [b"one", b"two", b"three", b"four"]
        await wal.close()
        await wal.close()  # idempotent

    _run(scenario)


def test_the_loop_keeps_running_while_a_sync_waits_for_the_disk(tmp_path: Path) -> None:
    syscalls = GatedSyscalls()

    async def scenario() -> None:
        async with _gated_log(tmp_path / "log", syscalls, segment_size=8 << 20) as wal:
            # Tens of MiB dirty, then a commit whose flush the disk holds up.
            for _ in range(24):
                await wal.append(bytes(1 << 20))
            syscalls.gate.clear()
            commit = asyncio.create_task(wal.append_and_sync(b"last"))
            await _until(syscalls.entered.is_set)
            ticks = 0
            for _ in range(50):
                await asyncio.sleep(0)
                ticks += 1
            # A sync run on the loop would have held it until the gate timed out,
            # and the commit would be done by now.
            assert ticks == 50
            assert not commit.done()
            syscalls.gate.set()
            lsn = await commit
            assert wal.durable_lsn > lsn

    _run(scenario)


def test_concurrent_commits_share_flushes(tmp_path: Path) -> None:
    syscalls = GatedSyscalls()
    tasks = 50

    async def scenario() -> None:
        async with _gated_log(tmp_path / "log", syscalls) as wal:
            before = wal.stats()
            syscalls.gate.clear()
            first = asyncio.create_task(wal.append_and_sync(b"first"))
            await _until(syscalls.entered.is_set)
            others = [asyncio.create_task(wal.append_and_sync(b"x%d" % n)) for n in range(tasks)]
            await _until(lambda: wal.stats().appends - before.appends == tasks + 1)
            syscalls.gate.set()
            lsns = await asyncio.gather(first, *others)
            after = wal.stats()
            assert len(set(lsns)) == tasks + 1
            assert wal.durable_lsn == wal.next_lsn
            # The first commit's flush, then one flush for all the others.
            assert after.flushes - before.flushes == 2
            assert after.syncs_requested - before.syncs_requested == 2

    _run(scenario)


def test_a_cancelled_commit_leaves_the_flush_to_the_others(tmp_path: Path) -> None:
    syscalls = GatedSyscalls()

    async def scenario() -> None:
        async with _gated_log(tmp_path / "log", syscalls) as wal:
            syscalls.gate.clear()
            leader = asyncio.create_task(wal.append_and_sync(b"a"))
            await _until(syscalls.entered.is_set)
            follower = asyncio.create_task(wal.sync())
            await asyncio.sleep(0)
            leader.cancel()
            syscalls.gate.set()
            await follower
            with pytest.raises(asyncio.CancelledError):
                await leader
            assert wal.durable_lsn == wal.next_lsn == 9

    _run(scenario)


def test_a_failed_flush_reaches_every_waiting_task(tmp_path: Path) -> None:
    syscalls = GatedSyscalls()

    async def scenario() -> None:
        wal = _gated_log(tmp_path / "log", syscalls)
        await wal
        syscalls.gate.clear()
        syscalls.fail_with = OSError(errno.EIO, "injected")
        commits = [asyncio.create_task(wal.append_and_sync(b"r%d" % n)) for n in range(5)]
        await _until(syscalls.entered.is_set)
        syscalls.gate.set()
        results = await asyncio.gather(*commits, return_exceptions=True)
        assert all(isinstance(result, mmwal.WalBrokenError) for result in results), results
        with pytest.raises(mmwal.WalBrokenError):
            await wal.append(b"after")
        await wal.close()

    _run(scenario)


def test_growing_the_log_happens_off_the_loop(tmp_path: Path) -> None:
    syscalls = GatedSyscalls()

    async def scenario() -> None:
        async with _gated_log(tmp_path / "log", syscalls, segment_size=1 << 16) as wal:
            loop_thread = threading.current_thread()
            # _gated_log opened the log on this thread (its state file is allocated
            # there); what is checked is the growth by appends.
            syscalls.allocating_threads.clear()
            for _ in range(20):
                await wal.append(bytes(10_000))
            await wal.append_many([bytes(10_000)] * 20)
            assert len(syscalls.allocating_threads) >= 6
            assert loop_thread not in syscalls.allocating_threads

    _run(scenario)


def test_using_it_before_it_is_open_says_how_to_open_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        wal = mmwal.aio.open(tmp_path / "a.wal")
        with pytest.raises(RuntimeError, match="async with"):
            await wal.append(b"x")
        await wal.close()

    _run(scenario)


def test_follow_yields_records_as_tasks_append_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mmwal.aio.open(tmp_path / "a.wal") as wal:
            await wal.append(b"before")

            async def writer() -> None:
                for number in range(20):
                    await wal.append(b"r%d" % number)
                    await asyncio.sleep(0.001)

            writing = asyncio.create_task(writer())
            seen = [record.data async for record in wal.follow(timeout=0.5)]
            await writing
            assert seen == [b"before", *(b"r%d" % number for number in range(20))]

    _run(scenario)
