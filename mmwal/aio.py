"""asyncio: ``mmwal.aio.open(...)`` gives an ``AsyncWal`` whose waits never block the loop.

Appends are a copy into the mapping (microseconds) and run on the event loop; an
append that must first grow the log (create a segment, a 64 MiB window) or that
copies more than 1 MiB runs in a worker thread. Every wait for the disk (``sync``,
``append_and_sync``, ``close``, open's recovery) and every wait of ``follow`` runs
in a worker thread.

Rules kept here:

- At most one flush runs per log (in the log's flush thread); a task that needs
  durability joins the flush that started after its append, or starts one. So
  many tasks calling ``append_and_sync`` share flushes (group commit) and none
  ever flushes what another flush already covered.
- A flush is never cancelled half way: cancelling a waiting task leaves the flush
  running for the others (``asyncio.shield``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Self

from . import open as open_wal
from ._config import WalConfig
from ._format import HEADER_SIZE, Record
from ._store import Buffer
from ._wal import Wal, WalStats

__all__ = ["AsyncWal", "open"]


def open(  # noqa: A001 - mirrors mmwal.open
    path: str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    config: WalConfig | None = None,
    readonly: bool = False,
) -> AsyncWal:
    """Return an ``AsyncWal`` for ``path``; ``async with`` or ``await`` it to open the log.

    The arguments are ``mmwal.open``'s. Opening (recovery) runs in a worker thread.
    """
    return AsyncWal(
        opener=functools.partial(
            open_wal, path, segment_size=segment_size, config=config, readonly=readonly
        )
    )


# A record larger than this is copied in a worker thread: copying it would hold
# the loop for more than a fraction of a millisecond.
_INLINE_BYTES = 1 << 20


def _frame_bytes(data: Buffer) -> int:
    return HEADER_SIZE + (data.nbytes if isinstance(data, memoryview) else len(data))


class AsyncWal:
    """A ``Wal`` for asyncio: ``await`` what waits, ``async for`` what follows.

    Make one with ``mmwal.aio.open(...)`` (then ``async with`` or ``await`` it), or
    wrap an open ``Wal`` with ``AsyncWal(wal)``. The durability contract is
    ``Wal``'s: ``append`` returns with the record in the page cache (a machine
    crash before the next sync may lose it), ``append_and_sync`` and ``sync``
    return once it is on stable storage.
    """

    def __init__(self, wal: Wal | None = None, *, opener: Callable[[], Wal] | None = None) -> None:
        """Wrap an open ``wal``, or take an ``opener`` to run (in a thread) on first await."""
        if (wal is None) == (opener is None):
            raise TypeError("pass an open Wal or an opener, not both or neither")
        self._wal = wal
        self._opener = opener
        self._opening: asyncio.Future[Wal] | None = None
        self._flush: asyncio.Future[None] | None = None
        self._flusher = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mmwal-flush"
        )

    # -- opening and closing --------------------------------------------------------

    async def _open(self) -> Self:
        if self._wal is not None:
            return self
        if self._opening is None:
            assert self._opener is not None
            self._opening = asyncio.ensure_future(asyncio.to_thread(self._opener))
        self._wal = await asyncio.shield(self._opening)
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        """Open the log (recovery runs in a worker thread) and return this ``AsyncWal``."""
        return self._open().__await__()

    async def __aenter__(self) -> Self:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def wal(self) -> Wal:
        """The underlying ``Wal`` (for its properties and for calls that do not wait)."""
        if self._wal is None:
            raise RuntimeError(
                "the log is not open yet (hint: 'async with mmwal.aio.open(...) as wal' "
                "or 'wal = await mmwal.aio.open(...)')"
            )
        return self._wal

    async def close(self) -> None:
        """Sync, unmap and release the lock; idempotent. Crash cost: none, once it returns."""
        if self._wal is None and self._opening is None:
            self._flusher.shutdown(wait=False)
            return
        wal = (await self._open()).wal
        running = self._flush
        if running is not None and not running.done():
            await asyncio.wait([running])
        try:
            await asyncio.to_thread(wal.close)
        finally:
            self._flusher.shutdown(wait=False)

    # -- appending --------------------------------------------------------------------

    async def append(self, data: Buffer) -> int:
        """Append one record; return its LSN. Crash cost: as ``Wal.append``."""
        wal = self.wal
        size = _frame_bytes(data)
        if size <= _INLINE_BYTES and wal.next_lsn + size <= wal.store.capacity:
            return wal.append(data)
        return await asyncio.to_thread(wal.append, data)

    async def append_many(self, records: Iterable[Buffer]) -> list[int]:
        """Append records in order, all or none; return their LSNs. Crash cost: as ``append``."""
        wal = self.wal
        if isinstance(records, bytes | bytearray | memoryview | str):
            return wal.append_many(records)  # raises the TypeError that explains it
        batch = list(records)
        size = sum(_frame_bytes(record) for record in batch)
        if size <= _INLINE_BYTES and wal.next_lsn + size <= wal.store.capacity:
            return wal.append_many(batch)
        return await asyncio.to_thread(wal.append_many, batch)

    async def append_and_sync(self, data: Buffer) -> int:
        """Append one record and wait until it is durable; return its LSN.

        Concurrent callers share flushes. Crash cost: none once it returns.
        """
        lsn = await self.append(data)
        await self._make_durable(lsn + _frame_bytes(data))
        return lsn

    async def sync(self) -> None:
        """Wait until every record appended before this call is durable (group commit)."""
        await self._make_durable(self.wal.next_lsn)

    async def _make_durable(self, target: int) -> None:
        """Return once ``target`` is durable, joining or starting one flush at a time."""
        wal = self.wal
        if wal.durable_lsn >= target:
            return
        running = self._flush
        if running is not None and not running.done():
            # It may have fixed its range before our append: wait, then look again.
            await asyncio.shield(running)
            if wal.durable_lsn >= target:
                return
        if self._flush is running:
            # No one started a flush since ``running``; this one starts after our
            # append, so ``Wal.sync`` covers it (even if a truncation moved the end).
            loop = asyncio.get_running_loop()
            self._flush = loop.run_in_executor(self._flusher, wal.sync)
        assert self._flush is not None
        await asyncio.shield(self._flush)

    # -- reading ----------------------------------------------------------------------

    async def follow(
        self,
        start: int | None = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
        copy: bool = True,
    ) -> AsyncIterator[Record]:
        """Yield records from ``start`` on, waiting for new ones; see ``Wal.follow``.

        Each wait runs in a thread of this follower's own, so the loop keeps
        running. ``durable=True`` yields only records a sync made durable: a crash
        cannot take back what this has yielded. If the task is cancelled while
        waiting, the thread stays until the next record, ``timeout`` or ``close``.
        """
        records = self.wal.follow(start, timeout=timeout, durable=durable, copy=copy)
        loop = asyncio.get_running_loop()
        waiter = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mmwal-follow"
        )
        try:
            while True:
                record = await loop.run_in_executor(waiter, next, records, None)
                if record is None:
                    return
                yield record
        finally:
            waiter.shutdown(wait=False)

    # -- state --------------------------------------------------------------------------

    @property
    def next_lsn(self) -> int:
        """The LSN the next appended record will get."""
        return self.wal.next_lsn

    @property
    def durable_lsn(self) -> int:
        """The end of what the last completed flush covered."""
        return self.wal.durable_lsn

    @property
    def head_lsn(self) -> int:
        """The LSN of the first record still in the log."""
        return self.wal.head_lsn

    def stats(self) -> WalStats:
        """Return the log's counters (appends, syncs requested, flushes, ...)."""
        return self.wal.stats()

    def __repr__(self) -> str:
        return f"<AsyncWal {self._wal!r}>" if self._wal else "<AsyncWal (not open yet)>"
