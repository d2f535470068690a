"""``Archive.push(directory)`` while the log's writer truncates it.

A truncation writes the head file, then removes the segments below it. The
removal is injected at an exact point of the push, through a wrapper around
``LocalLog.opened_segment``: just before the push opens a segment, or just
after it opened one and before anything of it was read or uploaded.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_helpers import SEGMENT_SIZE, memory_archive, require, segment_bytes, write_log

import mmwal
from mmwal._archive_local import LocalLog, OpenSegment

require("fsspec", "the archive needs fsspec: pip install 'mmwal[archive]'")


def _archive(kind: str, tmp_path: Path) -> tuple[mmwal.Archive, Any, str]:
    if kind == "memory":
        return memory_archive()
    archive = mmwal.Archive((tmp_path / f"archive-{uuid.uuid4().hex[:8]}").as_uri())
    return archive, archive._fs, archive._root


def _truncate_at(
    monkeypatch: pytest.MonkeyPatch, index: int, truncate: Callable[[], object], *, after_open: bool
) -> list[int]:
    """Run ``truncate`` once, when the push opens segment ``index`` (before or after)."""
    original = LocalLog.opened_segment
    fired: list[int] = []

    @contextlib.contextmanager
    def opened_segment(log: LocalLog, at: int) -> Iterator[OpenSegment | None]:
        if at == index and not after_open and not fired:
            fired.append(at)
            truncate()
        with original(log, at) as segment:
            if at == index and after_open and not fired:
                fired.append(at)
                truncate()
            yield segment

    monkeypatch.setattr(LocalLog, "opened_segment", opened_segment)
    return fired


def _first_record_in(records: list[mmwal.Record], index: int) -> int:
    return next(record.lsn for record in records if record.lsn >= index * SEGMENT_SIZE)


def _grow(log: Path, records: int) -> list[mmwal.Record]:
    with mmwal.open(log) as wal:
        for number in range(records):
            wal.append(f"record {number} ".encode() * 100)
        wal.sync()
        return list(wal)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_segment_truncated_before_it_is_read_is_a_conflict(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    write_log(log)
    archive, inner, root = _archive(kind, tmp_path)
    archived = archive.push(log)
    records = _grow(log, 300)
    gone = archived[-1] + 1  # the first segment the next push would upload
    with mmwal.open(log) as wal:
        fired = _truncate_at(
            monkeypatch,
            gone,
            lambda: wal.truncate_before(_first_record_in(records, gone + 2)),
            after_open=False,
        )
        with pytest.raises(
            mmwal.ArchiveConflictError, match=f"segment {gone} was removed"
        ) as caught:
            archive.push(log)
    assert fired == [gone]
    assert caught.value.index == gone
    assert isinstance(caught.value, mmwal.WalError)
    # The archive is as it was: nothing published, nothing left behind.
    assert [segment.index for segment in archive.segments()] == archived
    named = {f"{root}/segments/{segment.object_name}" for segment in archive.segments()}
    assert set(inner.find(f"{root}/segments")) == named
    # And the next push says the same, before it uploads anything.
    with pytest.raises(mmwal.ArchiveConflictError, match="the segments between are gone"):
        archive.push(log)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_an_empty_archive_starts_at_the_head_a_racing_truncation_left(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    write_log(log)
    records = _grow(log, 300)
    archive, _, _ = _archive(kind, tmp_path)
    with mmwal.open(log) as wal:
        head = _first_record_in(records, 2)
        fired = _truncate_at(monkeypatch, 0, lambda: wal.truncate_before(head), after_open=False)
        pushed = archive.push(log)
    assert fired == [0]
    assert pushed[0] == 2
    # Exactly what a push of the truncated log, with no race, archives.
    unraced, _, _ = _archive(kind, tmp_path)
    assert unraced.push(log) == pushed
    assert archive.segments()[0].first_lsn == head
    assert [(s.index, s.first_lsn, s.crc32c, s.next_record_lsn) for s in archive.segments()] == [
        (s.index, s.first_lsn, s.crc32c, s.next_record_lsn) for s in unraced.segments()
    ]


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_segment_truncated_while_open_is_published_whole(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    write_log(log)
    archive, _, _ = _archive(kind, tmp_path)
    archived = archive.push(log)
    records = _grow(log, 300)
    removed = archived[-1] + 1
    before = segment_bytes(log, removed)
    with mmwal.open(log) as wal:
        fired = _truncate_at(
            monkeypatch,
            removed,
            lambda: wal.truncate_before(_first_record_in(records, removed + 1)),
            after_open=True,
        )
        pushed = archive.push(log)
    assert fired == [removed]
    assert not (log / f"{removed:020d}.wal").exists()
    assert pushed[0] == removed
    segments = {segment.index: segment for segment in archive.segments()}
    # The whole segment as it was when opened: never a part of it.
    assert inner_bytes(archive, segments[removed]) == before
    for index in pushed[1:]:
        assert inner_bytes(archive, segments[index]) == segment_bytes(log, index)
    assert [record.lsn for record in archive.iter()] == [
        record.lsn
        for record in records
        if record.lsn + 8 + len(record.data) <= (pushed[-1] + 1) * SEGMENT_SIZE
    ]


def inner_bytes(archive: mmwal.Archive, segment: mmwal.ArchivedSegment) -> bytes:
    data: bytes = archive._fs.cat_file(archive._segment_path(segment))
    return data
