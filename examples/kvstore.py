"""A key-value store on mmwal: a log of changes, snapshots, checkpoints, replay on restart.

Every change is a JSON record in a segmented log. A checkpoint writes the whole
table to a snapshot file (crash-safely: temporary file, fsync, rename, directory
fsync) that names the LSN it covers, then drops the log segments before that LSN
with ``truncate_before``. Opening loads the snapshot and replays only the log
from its LSN.

Run it: ``python examples/kvstore.py [DIRECTORY]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import mmwal
from mmwal.codecs import Json


class KVStore:
    """A dict whose changes survive crashes: each ``put`` and ``delete`` is durable on return."""

    def __init__(self, directory: Path, *, segment_size: int = 64 << 10) -> None:
        """Open (or create) the store in ``directory``: load the snapshot, replay the log."""
        directory.mkdir(parents=True, exist_ok=True)
        self._snapshot_path = directory / "snapshot.json"
        self._wal = mmwal.open(directory / "log", segment_size=segment_size)
        self._log = self._wal.typed(Json())
        self.table: dict[str, Any] = {}
        start = None
        if self._snapshot_path.exists():
            snapshot = json.loads(self._snapshot_path.read_text())
            self.table = snapshot["table"]
            start = snapshot["lsn"]
        self.replayed = 0
        for record in self._log.iter(start):
            self._apply(record.value)
            self.replayed += 1

    def _apply(self, change: dict[str, Any]) -> None:
        if change["op"] == "put":
            self.table[change["key"]] = change["value"]
        else:
            self.table.pop(change["key"], None)

    def put(self, key: str, value: Any) -> None:
        """Set ``key``; durable when this returns (a crash cannot take it back)."""
        change = {"op": "put", "key": key, "value": value}
        self._log.append_and_sync(change)  # a value JSON cannot hold raises, writing nothing
        self._apply(change)

    def delete(self, key: str) -> None:
        """Remove ``key``; durable when this returns."""
        change = {"op": "delete", "key": key}
        self._log.append_and_sync(change)
        self._apply(change)

    def checkpoint(self) -> int:
        """Snapshot the table, then drop the log before it; return the snapshot's LSN.

        Order matters for crashes: the snapshot is durable before any segment is
        deleted, so a crash at any point leaves a snapshot plus the log after it.
        """
        lsn = self._wal.next_lsn
        temporary = self._snapshot_path.with_suffix(".tmp")
        with temporary.open("w") as file:
            json.dump({"lsn": lsn, "table": self.table}, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self._snapshot_path)
        directory = os.open(self._snapshot_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._wal.truncate_before(lsn)
        return lsn

    def segments(self) -> int:
        """Return how many segment files the log holds now."""
        return sum(1 for name in os.listdir(self._wal.store.location) if name.endswith(".wal"))

    def close(self) -> None:
        """Close the log (everything is already durable)."""
        self._wal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def main(directory: Path) -> None:
    """Fill a store, checkpoint it, change it more, and reopen it."""
    # Small segments, so that a few hundred changes span several of them.
    with KVStore(directory, segment_size=4096) as store:
        for number in range(300):
            store.put(f"user:{number % 50}", {"visits": number})
        print(f"300 puts over 50 keys: the log holds {store.segments()} segments")
        lsn = store.checkpoint()
        print(f"checkpoint at LSN {lsn}: the log holds {store.segments()} segment(s)")
        store.put("user:0", {"visits": -1})
        store.delete("user:1")

    with KVStore(directory, segment_size=4096) as store:
        print(f"reopened: snapshot loaded, {store.replayed} changes replayed from the log")
        print(f"{len(store.table)} keys; user:0 = {store.table['user:0']}")
        print(f"user:1 present: {'user:1' in store.table}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
