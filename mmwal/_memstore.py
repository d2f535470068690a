"""``MemStore``: a log held in anonymous memory, for tests and prototyping."""

from __future__ import annotations

import mmap

from ._chunked import ChunkedStore
from ._files import prefault_anonymous
from ._store import Buffer

__all__ = ["MemStore"]

_DEFAULT_CHUNK_SIZE = 1 << 20


class MemStore(ChunkedStore):
    """Keep a log in memory: nothing survives the process, ``flush`` is free.

    Crash cost: everything. Use it for tests, prototypes and replaying a log image
    at memory speed; ``MemStore.from_bytes`` loads any wal-db single-file image.
    """

    location = "<memory>"

    def __init__(self, chunk_size: int = _DEFAULT_CHUNK_SIZE) -> None:
        super().__init__(chunk_size, None, writable=True)
        self._side_files: dict[str, bytes] = {}

    @classmethod
    def from_bytes(cls, data: Buffer, chunk_size: int = _DEFAULT_CHUNK_SIZE) -> MemStore:
        """Return a store whose log bytes start with ``data`` (a single-file log image)."""
        store = cls(chunk_size)
        view = memoryview(data).cast("B")
        store.ensure_capacity(len(view))
        store.write(0, view)
        return store

    def getvalue(self) -> bytes:
        """Return every byte the store holds, zero tail included."""
        return self.read(self.head_lsn, self.capacity - self.head_lsn)

    def _create_chunk(self, index: int) -> mmap.mmap:
        chunk = mmap.mmap(-1, self.chunk_size)
        prefault_anonymous(chunk)
        return chunk

    def _flush_chunk(self, index: int, start: int, length: int) -> None:
        """Nothing to write back: memory is all there is."""

    def load_side_file(self, name: str) -> bytes | None:
        return self._side_files.get(name)

    def save_side_file(self, name: str, data: bytes) -> bool:
        self._check_open()
        self._side_files[name] = bytes(data)
        return True

    def remove_side_file(self, name: str) -> None:
        self._check_open()
        self._side_files.pop(name, None)
