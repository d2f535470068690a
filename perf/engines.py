"""Adapt every benchmarked log engine to one small interface.

Each engine is used in its honest durable mode: ``sync()`` (and
``append_and_sync``) returns only once the appended records would survive a
power loss, as far as the engine promises.  ``DURABILITY`` on each class states
how, and docs/BENCHMARKS.md repeats it.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
import itertools
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, NamedTuple

if TYPE_CHECKING:
    import sqlite3

    import lmdb
    import rocksdict

    import mmwal

#: Segment size of the ``mmwal-seg`` engine (also mmwal's documented default).
SEGMENT_SIZE = 64 << 20
#: Write buffer of the hand-written log (``open(..., buffering=...)``).
PLAIN_BUFFER = 1 << 20
#: Read chunk of the hand-written log's replay.
PLAIN_CHUNK = 4 << 20
#: LMDB map size: address space only, the file grows as needed.
LMDB_MAP_SIZE = 1 << 36

_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
_KEY = struct.Struct(">Q")
_INSERT = "INSERT INTO log (data) VALUES (?)"


class Replayed(NamedTuple):
    """Count what a full replay delivered."""

    records: int
    payload_bytes: int


class CorruptLogError(Exception):
    """Report a record whose checksum or framing does not verify."""


class Engine(abc.ABC):
    """Append-only log under benchmark.

    ``open()`` binds :attr:`append` to the engine's fastest per-record append
    callable, so the harness adds no call layer of its own to the hot loop.
    """

    name: ClassVar[str]
    #: Module that must be importable for the engine to run.
    requires: ClassVar[str]
    #: Whether ``append_and_sync`` may be called from many threads at once.
    thread_safe: ClassVar[bool]
    #: One line: what ``sync()`` does to make data durable.
    DURABILITY: ClassVar[str]

    append: Callable[[bytes], object]

    @classmethod
    def available(cls) -> bool:
        """Return whether the engine's module can be imported."""
        return importlib.util.find_spec(cls.requires) is not None

    @abc.abstractmethod
    def open(self, directory: Path) -> None:
        """Open (or create) the log stored in ``directory`` and bind ``append``."""

    @abc.abstractmethod
    def append_many(self, records: Sequence[bytes]) -> None:
        """Append a batch of records without syncing."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every appended record durable."""

    def append_and_sync(self, data: bytes) -> None:
        """Append one record and make it durable."""
        self.append(data)
        self.sync()

    @abc.abstractmethod
    def replay(self) -> Replayed:
        """Read every record in order, verifying integrity where the format can."""

    @abc.abstractmethod
    def close(self) -> None:
        """Sync pending appends and release every resource."""

    def counters(self) -> dict[str, float]:
        """Return engine-internal counters worth reporting (none by default)."""
        return {}


class MmwalEngine(Engine):
    """mmwal, single preallocated file."""

    name = "mmwal"
    requires = "mmwal"
    thread_safe = True
    DURABILITY = "wal.sync() / wal.append_and_sync(): mmwal's own flush of the mapped file"

    _wal: mmwal.Wal

    def _open_wal(self, directory: Path) -> mmwal.Wal:
        import mmwal

        return mmwal.Wal.open(directory / "wal.log")

    def open(self, directory: Path) -> None:
        """Open the mmwal log in ``directory``."""
        self._wal = self._open_wal(directory)
        self.append = self._wal.append

    def append_many(self, records: Sequence[bytes]) -> None:
        """Append a batch with ``Wal.append_many``."""
        self._wal.append_many(records)

    def sync(self) -> None:
        """Flush with ``Wal.sync``."""
        self._wal.sync()

    def append_and_sync(self, data: bytes) -> None:
        """Commit one record with ``Wal.append_and_sync`` (group commit)."""
        self._wal.append_and_sync(data)

    def replay(self) -> Replayed:
        """Iterate ``Wal.iter()``; mmwal verifies each record's CRC-32C."""
        records = 0
        payload = 0
        for record in self._wal.iter():
            records += 1
            payload += len(record.data)
        return Replayed(records, payload)

    def close(self) -> None:
        """Close the log."""
        self._wal.close()

    def next_lsn(self) -> int:
        """Return ``Wal.next_lsn``: where the next record goes (the log's end)."""
        return self._wal.next_lsn

    def counters(self) -> dict[str, float]:
        """Return the numeric fields of ``Wal.stats()`` when mmwal provides it."""
        stats_method = getattr(self._wal, "stats", None)
        if stats_method is None:
            return {}
        stats = stats_method()
        if not dataclasses.is_dataclass(stats):
            return {}
        values = {field.name: getattr(stats, field.name) for field in dataclasses.fields(stats)}
        return {
            key: float(value) for key, value in values.items() if isinstance(value, int | float)
        }


class MmwalSegmentedEngine(MmwalEngine):
    """mmwal, directory of 64 MiB segments."""

    name = "mmwal-seg"

    def _open_wal(self, directory: Path) -> mmwal.Wal:
        import mmwal

        return mmwal.Wal.open_segmented(directory / "segments", segment_size=SEGMENT_SIZE)


class MmwalSegmentedFdatasyncEngine(MmwalEngine):
    """mmwal, directory of 64 MiB segments, ``sync_method="fdatasync"``."""

    name = "mmwal-seg-fdatasync"
    DURABILITY = "wal.sync() / wal.append_and_sync(): fdatasync of the segment file"

    def _open_wal(self, directory: Path) -> mmwal.Wal:
        import mmwal

        return mmwal.Wal.open_segmented(
            directory / "segments",
            segment_size=SEGMENT_SIZE,
            config=mmwal.WalConfig(sync_method="fdatasync"),
        )


class PlainFileEngine(Engine):
    """Hand-written log: buffered ``write`` of header + payload, ``fdatasync``."""

    name = "plainfile"
    requires = "crc32c"
    thread_safe = False
    DURABILITY = "file.flush() then os.fdatasync(fd)"

    _path: Path
    _file: BinaryIO

    def open(self, directory: Path) -> None:
        """Open ``plain.log`` for appending (no recovery scan, as a naive user would)."""
        from crc32c import crc32c

        self._path = directory / "plain.log"
        # Stays open until close(): the log is appended to across calls.
        self._file = self._path.open("ab", buffering=PLAIN_BUFFER)
        write = self._file.write
        pack_header = _HEADER.pack
        pack_length = _LENGTH.pack

        def append(data: bytes) -> None:
            length = len(data)
            write(pack_header(crc32c(data, crc32c(pack_length(length))), length))
            write(data)

        self.append = append

    def append_many(self, records: Sequence[bytes]) -> None:
        """Frame every record and write the batch with one ``write`` call."""
        from crc32c import crc32c

        pack_header = _HEADER.pack
        pack_length = _LENGTH.pack
        parts: list[bytes] = []
        for data in records:
            length = len(data)
            parts.append(pack_header(crc32c(data, crc32c(pack_length(length))), length))
            parts.append(data)
        self._file.write(b"".join(parts))

    def sync(self) -> None:
        """Flush the Python buffer and ``fdatasync`` the file."""
        self._file.flush()
        os.fdatasync(self._file.fileno())

    def replay(self) -> Replayed:
        """Read the file in 4 MiB chunks and verify every record's CRC-32C."""
        from crc32c import crc32c

        self._file.flush()
        unpack_header = _HEADER.unpack_from
        records = 0
        payload = 0
        tail = b""
        with self._path.open("rb", buffering=0) as log:
            while chunk := log.read(PLAIN_CHUNK):
                buffer = tail + chunk if tail else chunk
                end = len(buffer)
                offset = 0
                with memoryview(buffer) as view:
                    while offset + 8 <= end:
                        crc, length = unpack_header(buffer, offset)
                        stop = offset + 8 + length
                        if stop > end:
                            break
                        if crc32c(view[offset + 4 : stop]) != crc:
                            raise CorruptLogError(f"{self._path}: bad CRC at record {records}")
                        data = buffer[offset + 8 : stop]
                        records += 1
                        payload += len(data)
                        offset = stop
                tail = buffer[offset:]
        if tail:
            raise CorruptLogError(f"{self._path}: {len(tail)} trailing bytes")
        return Replayed(records, payload)

    def close(self) -> None:
        """Sync and close the file."""
        self.sync()
        self._file.close()


class SqliteEngine(Engine):
    """Stdlib sqlite3, WAL journal, ``synchronous=FULL``, one row per record."""

    name = "sqlite3"
    requires = "sqlite3"
    thread_safe = False
    DURABILITY = "PRAGMA journal_mode=WAL, synchronous=FULL; commit() fsyncs the WAL"

    _conn: sqlite3.Connection

    def open(self, directory: Path) -> None:
        """Connect to ``log.db`` and create the table."""
        import sqlite3

        self._conn = sqlite3.connect(directory / "log.db", check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, data BLOB)")
        self._conn.commit()
        execute = self._conn.execute

        def append(data: bytes) -> None:
            execute(_INSERT, (data,))

        self.append = append

    def append_many(self, records: Sequence[bytes]) -> None:
        """Insert a batch with ``executemany`` inside the open transaction."""
        self._conn.executemany(_INSERT, [(data,) for data in records])

    def sync(self) -> None:
        """Commit the open transaction."""
        self._conn.commit()

    def replay(self) -> Replayed:
        """Read every row in ``id`` order through one cursor."""
        records = 0
        payload = 0
        for (data,) in self._conn.execute("SELECT data FROM log ORDER BY id"):
            records += 1
            payload += len(data)
        return Replayed(records, payload)

    def close(self) -> None:
        """Commit and close the connection."""
        self._conn.commit()
        self._conn.close()


class LmdbEngine(Engine):
    """LMDB with ``sync=True``; keys are 8-byte big-endian counters."""

    name = "lmdb"
    requires = "lmdb"
    thread_safe = True
    DURABILITY = "lmdb.open(sync=True, metasync=True); txn.commit() fsyncs data and meta page"

    _env: lmdb.Environment
    _txn: lmdb.Transaction | None
    _cursor: lmdb.Cursor | None
    _keys: itertools.count[int]

    def open(self, directory: Path) -> None:
        """Open the environment and continue numbering after the last key."""
        import lmdb

        self._env = lmdb.open(str(directory), map_size=LMDB_MAP_SIZE, sync=True, metasync=True)
        self._txn = None
        self._cursor = None
        with self._env.begin() as txn:
            cursor = txn.cursor()
            start = _KEY.unpack(cursor.key())[0] + 1 if cursor.last() else 0
        self._keys = itertools.count(start)
        self.append = self._append

    def _write_cursor(self) -> lmdb.Cursor:
        if self._cursor is None:
            self._txn = self._env.begin(write=True)
            self._cursor = self._txn.cursor()
        return self._cursor

    def _append(self, data: bytes) -> None:
        self._write_cursor().put(_KEY.pack(next(self._keys)), data, append=True)

    def append_many(self, records: Sequence[bytes]) -> None:
        """Append a batch with ``Cursor.putmulti(append=True)``."""
        keys = self._keys
        self._write_cursor().putmulti(
            [(_KEY.pack(next(keys)), data) for data in records], append=True
        )

    def sync(self) -> None:
        """Commit the open write transaction."""
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self._cursor = None

    def append_and_sync(self, data: bytes) -> None:
        """Commit one record in its own write transaction (LMDB serialises writers)."""
        with self._env.begin(write=True) as txn:
            txn.put(_KEY.pack(next(self._keys)), data, append=True)

    def replay(self) -> Replayed:
        """Iterate the values of a read transaction in key order."""
        records = 0
        payload = 0
        with self._env.begin() as txn:
            for data in txn.cursor().iternext(keys=False, values=True):
                records += 1
                payload += len(data)
        return Replayed(records, payload)

    def close(self) -> None:
        """Commit and close the environment."""
        self.sync()
        self._env.close()


class PlyvelEngine(Engine):
    """LevelDB through plyvel; WriteBatch for bulk, ``sync=True`` writes."""

    name = "plyvel"
    requires = "plyvel"
    thread_safe = True
    DURABILITY = "WriteBatch.write() / DB.put() with sync=True (fsync of LevelDB's log)"

    _db: Any
    _batch: Any
    _keys: itertools.count[int]

    def open(self, directory: Path) -> None:
        """Open the database and continue numbering after the last key."""
        import plyvel  # type: ignore[import-untyped, unused-ignore]

        self._db = plyvel.DB(str(directory), create_if_missing=True)
        self._batch = self._db.write_batch(sync=True)
        with self._db.iterator(reverse=True, include_value=False) as keys:
            last = next(keys, None)
        self._keys = itertools.count(0 if last is None else _KEY.unpack(last)[0] + 1)
        self.append = self._append

    def _append(self, data: bytes) -> None:
        self._batch.put(_KEY.pack(next(self._keys)), data)

    def append_many(self, records: Sequence[bytes]) -> None:
        """Add a batch of records to the pending WriteBatch."""
        put = self._batch.put
        keys = self._keys
        for data in records:
            put(_KEY.pack(next(keys)), data)

    def sync(self) -> None:
        """Write the pending WriteBatch with ``sync=True``."""
        self._batch.write()
        self._batch.clear()

    def append_and_sync(self, data: bytes) -> None:
        """Commit one record with ``DB.put(sync=True)`` (LevelDB groups concurrent writers)."""
        self._db.put(_KEY.pack(next(self._keys)), data, sync=True)

    def replay(self) -> Replayed:
        """Iterate every value in key order."""
        records = 0
        payload = 0
        with self._db.iterator(include_key=False) as values:
            for data in values:
                records += 1
                payload += len(data)
        return Replayed(records, payload)

    def close(self) -> None:
        """Write the pending batch and close the database."""
        self.sync()
        self._db.close()


class RocksdictEngine(Engine):
    """RocksDB through rocksdict (raw mode); WriteBatch for bulk, sync writes."""

    name = "rocksdict"
    requires = "rocksdict"
    thread_safe = True
    DURABILITY = "WriteOptions.sync=True on every write (fsync of RocksDB's WAL)"

    _db: rocksdict.Rdict
    _batch: rocksdict.WriteBatch
    _keys: itertools.count[int]

    def open(self, directory: Path) -> None:
        """Open the database with sync writes and continue after the last key."""
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(directory), options)
        write_options = WriteOptions()
        write_options.sync = True
        self._db.set_write_options(write_options)
        self._batch = WriteBatch(raw_mode=True)
        last = self._db.iter()
        last.seek_to_last()
        start = _KEY.unpack(last.key())[0] + 1 if last.valid() else 0
        del last
        self._keys = itertools.count(start)
        self.append = self._append

    def _append(self, data: bytes) -> None:
        self._batch.put(_KEY.pack(next(self._keys)), data)

    def append_many(self, records: Sequence[bytes]) -> None:
        """Add a batch of records to the pending WriteBatch."""
        put = self._batch.put
        keys = self._keys
        for data in records:
            put(_KEY.pack(next(keys)), data)

    def sync(self) -> None:
        """Write the pending WriteBatch (sync write options), then start a new one."""
        from rocksdict import WriteBatch

        if not self._batch.is_empty():
            self._db.write(self._batch)
            self._batch = WriteBatch(raw_mode=True)

    def append_and_sync(self, data: bytes) -> None:
        """Commit one record with a sync ``put``."""
        self._db.put(_KEY.pack(next(self._keys)), data)

    def replay(self) -> Replayed:
        """Iterate every value in key order."""
        records = 0
        payload = 0
        for data in self._db.values():
            records += 1
            payload += len(data)
        return Replayed(records, payload)

    def close(self) -> None:
        """Write the pending batch and close the database."""
        self.sync()
        self._db.close()


#: Every engine the harness knows, in report order.
ENGINES: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (
        MmwalEngine,
        MmwalSegmentedEngine,
        MmwalSegmentedFdatasyncEngine,
        PlainFileEngine,
        SqliteEngine,
        LmdbEngine,
        PlyvelEngine,
        RocksdictEngine,
    )
}


def create(name: str) -> Engine:
    """Instantiate the engine called ``name``."""
    return ENGINES[name]()
