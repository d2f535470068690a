"""A user's program, type-checked by CI against the installed wheel (not the source tree)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import mmwal
import mmwal.aio
from mmwal.codecs import Json, Struct
from mmwal.testing import StoreTests


def write(directory: Path) -> list[int]:
    with mmwal.open(directory / "orders.wal") as wal:
        lsns: list[int] = wal.append_many([b"a", bytearray(b"b"), memoryview(b"c")])
        orders = wal.typed(Json())
        lsns.append(orders.append({"id": 1}))
        points = wal.typed(Struct("<dd"))
        lsns.append(points.append((1.0, 2.0)))
        record: mmwal.Record = next(iter(wal))
        assert record.lsn == 0
        return lsns


async def commit(directory: Path) -> int:
    async with mmwal.aio.open(directory / "async.wal") as wal:
        lsn: int = await wal.append_and_sync(b"x")
        stats: mmwal.WalStats = wal.stats()
    again: mmwal.aio.AsyncWal = await mmwal.aio.open(directory / "async.wal")
    await again.close()
    return lsn + stats.appends


if __name__ == "__main__":
    assert StoreTests is not None
    with tempfile.TemporaryDirectory() as temporary:
        print(write(Path(temporary)), asyncio.run(commit(Path(temporary))))
