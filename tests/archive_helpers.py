"""Shared helpers for the archive tests: logs to push, and a file system that fails on cue."""

from __future__ import annotations

import importlib
import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mmwal

SEGMENT_SIZE = 64 * 1024


def require(module: str, reason: str) -> None:
    """Skip the calling test module when ``module`` is not installed; in CI, fail instead.

    ``.ci/run`` installs the test extras, so there a missing module is a broken
    install, never a reason to skip the archive tests.
    """
    if os.environ.get("CI"):
        importlib.import_module(module)
    else:
        pytest.importorskip(module, reason=reason)


# The calls Archive makes that reach the storage; each is a step a push can fail at.
COUNTED = frozenset(
    {"put_file", "pipe_file", "open", "mv", "rm_file", "ls", "cat", "makedirs", "get", "call_s3"}
)


class Crash(BaseException):
    """Raised where the process would die: nothing after it runs but ``finally`` blocks."""


class FailingFileSystem:
    """Wrap an fsspec file system; the ``fail_at``-th counted call raises ``error``.

    ``fail_at=None`` never fails (used to count the calls of a clean run).
    ``torn`` makes every upload of a segment store only half of the bytes;
    ``flipped`` makes every S3 ``put_object`` send its body with one bit flipped
    (what a fault between the segment file and the server would do);
    ``before_call(n)`` runs before the n-th counted call (to stop a server there).
    """

    def __init__(
        self,
        inner: Any,
        fail_at: int | None = None,
        error: BaseException | None = None,
        *,
        torn: bool = False,
        flipped: bool = False,
        before_call: Callable[[int], object] | None = None,
    ) -> None:
        self._inner = inner
        self.before_call = before_call
        self.fail_at = fail_at
        self.error = error if error is not None else OSError("injected failure")
        self.torn = torn
        self.flipped = flipped
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in COUNTED:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(f"{name}:{args[0]}" if name == "call_s3" else name)
            if self.before_call is not None:
                self.before_call(len(self.calls))
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                raise self.error
            if self.torn and name == "put_file":
                data = Path(args[0]).read_bytes()
                return self._inner.pipe_file(args[1], data[: len(data) // 2])
            if self.torn and name == "open" and "w" in _mode(args, kwargs):
                return _TornWriter(attribute(*args, **kwargs))
            if (self.torn or self.flipped) and name == "call_s3" and args[0] == "put_object":
                body = bytearray(kwargs["Body"].read())
                if self.torn:
                    del body[len(body) // 2 :]
                else:
                    body[len(body) // 2] ^= 0x01  # the same size, another CRC-32C
                kwargs = {**kwargs, "Body": bytes(body)}
            return attribute(*args, **kwargs)

        return call


def _mode(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    mode: str = args[1] if len(args) > 1 else kwargs.get("mode", "rb")
    return mode


class _TornWriter:
    """A file opened for writing that keeps only the first half of every write."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, data: bytes) -> int:
        self._inner.write(bytes(data)[: len(data) // 2])
        return len(data)

    def __enter__(self) -> _TornWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inner.close()


def memory_archive() -> tuple[mmwal.Archive, Any, str]:
    """Return a fresh archive in fsspec's memory file system, its file system and root."""
    archive = mmwal.Archive(f"memory://mmwal-test-{uuid.uuid4().hex}")
    return archive, archive._fs, archive._root


def write_log(
    directory: Path, records: int = 200, *, seed: int = 1, sizes: tuple[int, int] = (20, 3000)
) -> list[mmwal.Record]:
    """Create a segmented log of random records; return them as the log reads them."""
    generator = random.Random(seed)
    with mmwal.open(directory, segment_size=SEGMENT_SIZE) as wal:
        for _ in range(records):
            wal.append(generator.randbytes(generator.randint(*sizes)))
        wal.sync()
        return list(wal)


def segment_bytes(directory: Path, index: int) -> bytes:
    return (directory / f"{index:020d}.wal").read_bytes()


def check_archive_is_valid(archive: mmwal.Archive, log: Path, records: list[mmwal.Record]) -> None:
    """Every published segment is whole and equals the log's; its records are the log's."""
    segments = archive.segments()
    for segment in segments:
        assert segment.size == SEGMENT_SIZE
        data = archive._fs.cat_file(archive._segment_path(segment))
        assert data == segment_bytes(log, segment.index)
    archived = list(archive.iter())
    assert archived == records[: len(archived)]
    if segments:
        end = segments[-1].end_lsn
        assert all(record.lsn + 8 + len(record.data) <= end for record in archived)
        complete = [record for record in records if record.lsn + 8 + len(record.data) <= end]
        assert archived == complete


def ending_by(records: list[mmwal.Record], end: int) -> list[mmwal.Record]:
    """Return the records whose frames end at or before ``end``."""
    return [record for record in records if record.lsn + 8 + len(record.data) <= end]


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))
