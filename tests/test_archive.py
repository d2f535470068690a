"""mmwal.Archive over fsspec's memory and local file systems, with failures injected."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from archive_helpers import (
    SEGMENT_SIZE,
    Crash,
    FailingFileSystem,
    check_archive_is_valid,
    ending_by,
    listing,
    memory_archive,
    require,
    segment_bytes,
    write_log,
)

import mmwal
from mmwal.__main__ import main

require("fsspec", "the archive needs fsspec: pip install 'mmwal[archive]'")


@pytest.fixture(params=["memory", "file"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> mmwal.Archive:
    if request.param == "memory":
        return memory_archive()[0]
    return mmwal.Archive((tmp_path / "archive").as_uri())


def test_push_list_iterate_restore(archive: mmwal.Archive, tmp_path: Path) -> None:
    log = tmp_path / "log"
    records = write_log(log)
    files = listing(log)
    with mmwal.open(log) as wal:
        end = wal.next_lsn
        sealed = end // SEGMENT_SIZE
        assert archive.push(wal) == list(range(sealed))
        assert archive.push(wal) == []  # idempotent
    assert archive.push(log) == []  # the directory is the same log
    segments = archive.segments()
    assert [segment.index for segment in segments] == list(range(sealed))
    assert segments[0].first_lsn == 0
    for previous, segment in itertools.pairwise(segments):
        assert segment.first_lsn == previous.next_record_lsn
        assert segment.first_lsn in {record.lsn for record in records}
    check_archive_is_valid(archive, log, records)

    restored = tmp_path / "restored"
    restored_end = archive.restore(restored)
    assert listing(restored) == files[:sealed]
    for index in range(sealed):
        assert segment_bytes(restored, index) == segment_bytes(log, index)
    complete = ending_by(records, sealed * SEGMENT_SIZE)
    assert restored_end == complete[-1].lsn + 8 + len(complete[-1].data)
    with mmwal.open(restored, readonly=True) as wal:
        assert list(wal) == complete
        assert wal.next_lsn == restored_end
    with mmwal.open(restored) as wal:  # writable: the torn last record is set aside
        assert list(wal) == complete
        wal.append(b"after the restore")


def test_iter_from_a_record_and_refusals(archive: mmwal.Archive, tmp_path: Path) -> None:
    log = tmp_path / "log"
    records = write_log(log)
    archive.push(log)
    archived = list(archive.iter())
    middle = archived[len(archived) // 2]
    assert list(archive.iter(middle.lsn)) == archived[len(archived) // 2 :]
    with pytest.raises(mmwal.InvalidLSNError) as caught:
        list(archive.iter(middle.lsn + 1))
    assert caught.value.before == middle.lsn
    assert caught.value.after == middle.lsn + 8 + len(middle.data)
    assert records[: len(archived)] == archived


def test_restore_up_to_lsn(archive: mmwal.Archive, tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_log(log)
    archive.push(log)
    archived = list(archive.iter())
    for position in (1, len(archived) // 2, len(archived) - 1):
        cut = archived[position].lsn
        target = tmp_path / f"cut-{position}"
        assert archive.restore(target, up_to_lsn=cut) == cut
        with mmwal.open(target, readonly=True) as wal:
            assert list(wal) == archived[:position]
            assert wal.next_lsn == cut
    last = archived[-1]
    end = last.lsn + 8 + len(last.data)
    assert archive.restore(tmp_path / "all", up_to_lsn=end) == end
    with pytest.raises(mmwal.InvalidLSNError):
        archive.restore(tmp_path / "torn", up_to_lsn=archived[3].lsn + 5)
    with pytest.raises(mmwal.InvalidLSNError):  # past what the archive holds
        archive.restore(tmp_path / "past", up_to_lsn=archive.segments()[-1].end_lsn + 8)
    assert not (tmp_path / "torn").exists()
    assert not (tmp_path / "past").exists()


def test_restore_never_writes_into_an_existing_log(archive: mmwal.Archive, tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_log(log)
    archive.push(log)
    before = {name: (log / name).read_bytes() for name in listing(log)}
    with pytest.raises(FileExistsError):
        archive.restore(log)
    assert {name: (log / name).read_bytes() for name in listing(log)} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert archive.restore(empty) > 0
    assert [name for name in os.listdir(tmp_path) if "restoring" in name] == []


def test_a_different_log_conflicts_and_changes_nothing(
    archive: mmwal.Archive, tmp_path: Path
) -> None:
    records = write_log(tmp_path / "one", seed=1)
    write_log(tmp_path / "two", seed=2)
    pushed = archive.push(tmp_path / "one")
    before = archive.segments()
    with pytest.raises(mmwal.ArchiveConflictError) as caught:
        archive.push(tmp_path / "two")
    assert caught.value.index == 0
    assert isinstance(caught.value, mmwal.WalError)
    assert archive.segments() == before
    check_archive_is_valid(archive, tmp_path / "one", records)
    assert archive.push(tmp_path / "one") == []
    assert pushed


def test_a_log_that_lost_the_segments_the_archive_needs_conflicts(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    log = tmp_path / "log"
    write_log(log, records=60)
    assert archive.push(log) == [0]
    with mmwal.open(log) as wal:
        for _ in range(200):
            wal.append(os.urandom(1000))
        wal.truncate_before(list(wal)[-1].lsn)  # no archive attached: drops segments 0..
    with pytest.raises(mmwal.ArchiveConflictError, match="segments between are gone"):
        archive.push(log)


def test_a_log_with_a_head_archives_from_it(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    log = tmp_path / "log"
    records = write_log(log, records=300)
    head = next(record.lsn for record in records if record.lsn > 2 * SEGMENT_SIZE + 100)
    with mmwal.open(log) as wal:
        wal.truncate_before(head)
    pushed = archive.push(log)
    assert pushed[0] == 2
    assert archive.segments()[0].first_lsn == head
    restored = tmp_path / "restored"
    end = archive.restore(restored)
    with mmwal.open(restored, readonly=True) as wal:
        assert wal.head_lsn == head
        assert list(wal) == [r for r in records if head <= r.lsn and r.lsn + 8 + len(r.data) <= end]
    assert list(archive.iter()) == [r for r in records if head <= r.lsn and r.lsn < end]


def test_only_sealed_segments_are_pushed(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    log = tmp_path / "log"
    with mmwal.open(log, segment_size=SEGMENT_SIZE) as wal:
        wal.append(b"x" * (SEGMENT_SIZE - 8 - 100))
        wal.append(b"y" * 300)  # crosses into segment 1
        wal.sync()
        assert archive.push(wal) == [0]
        assert archive.segments()[0].next_record_lsn == SEGMENT_SIZE - 100 + 308
        big = wal.append(b"z" * (3 * SEGMENT_SIZE))  # spans segments 1..4
        assert archive.push(wal) == []  # not durable yet
        wal.sync()
        assert archive.push(wal) == [1, 2, 3]
        big_end = big + 8 + 3 * SEGMENT_SIZE
        assert [s.first_lsn for s in archive.segments()[1:]] == [big, big_end, big_end]
        records = list(wal)
    assert list(archive.iter()) == records[:2]
    assert list(archive.iter(records[2].lsn)) == []


def _fresh(kind: str, tmp_path: Path) -> tuple[Any, str]:
    """Return an empty archive's file system and root, in memory or in a local directory."""
    if kind == "memory":
        _, filesystem, root = memory_archive()
        return filesystem, root
    archive = mmwal.Archive((tmp_path / f"archive-{uuid.uuid4().hex[:8]}").as_uri())
    return archive._fs, archive._root


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("error", [OSError("network down"), Crash()], ids=["failure", "crash"])
def test_a_push_cut_short_at_any_step_resumes(
    tmp_path: Path, error: BaseException, kind: str
) -> None:
    log = tmp_path / "log"
    records = write_log(log, records=150)
    inner, root = _fresh(kind, tmp_path)
    counter = FailingFileSystem(inner)
    expected = mmwal.Archive.from_filesystem(counter, root).push(log)
    clean = mmwal.Archive.from_filesystem(inner, root).segments()
    steps = len(counter.calls)
    assert len(expected) >= 3
    assert steps >= 2 * len(expected)
    for fail_at in range(1, steps + 1):
        inner, root = _fresh(kind, tmp_path)
        failing = FailingFileSystem(inner, fail_at, error)
        with pytest.raises(type(error)):
            mmwal.Archive.from_filesystem(failing, root).push(log)
        archive = mmwal.Archive.from_filesystem(inner, root)
        published = [segment.index for segment in archive.segments()]
        assert published == list(range(len(published))), failing.calls
        check_archive_is_valid(archive, log, records)
        assert published + archive.push(log) == expected, (fail_at, failing.calls[-1])
        assert [s.crc32c for s in archive.segments()] == [s.crc32c for s in clean]
        # Nothing is left that no entry names: no upload, no unrenamed entry.
        named = {f"{root}/segments/{segment.object_name}" for segment in archive.segments()}
        assert set(inner.find(f"{root}/segments")) == named
        entries = {f"{root}/manifest/{index:020d}.json" for index in expected}
        assert set(inner.find(f"{root}/manifest")) == entries


def test_a_damaged_upload_is_never_published(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_log(log)
    _, inner, root = memory_archive()
    archive = mmwal.Archive.from_filesystem(FailingFileSystem(inner, torn=True), root)
    with pytest.raises(OSError, match="did not land intact"):
        archive.push(log)
    assert archive.segments() == []
    assert inner.find(f"{root}/segments") == []
    assert mmwal.Archive.from_filesystem(inner, root).push(log)


def _wait_for(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_open_with_archive_pushes_in_the_background(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    with mmwal.open(tmp_path / "log", segment_size=SEGMENT_SIZE, archive=archive) as wal:
        for _ in range(100):
            wal.append(os.urandom(2000))
        wal.sync()
        sealed = wal.durable_lsn // SEGMENT_SIZE
        _wait_for(lambda: len(archive.segments()) == sealed)
        records = list(wal)
    assert list(archive.iter()) == ending_by(records, sealed * SEGMENT_SIZE)


def test_truncate_before_pushes_what_it_deletes_first(tmp_path: Path) -> None:
    _, inner, root = memory_archive()
    failing = FailingFileSystem(inner)
    archive = mmwal.Archive.from_filesystem(failing, root)
    with mmwal.open(tmp_path / "log", segment_size=SEGMENT_SIZE, archive=archive) as wal:
        wal._archiver.stop()  # type: ignore[union-attr]  # only the guard pushes here
        for _ in range(100):
            wal.append(os.urandom(2000))
        records = list(wal)
        cut = next(r.lsn for r in records if r.lsn > 2 * SEGMENT_SIZE)
        failing.fail_at = len(failing.calls) + 3
        with pytest.raises(OSError, match="injected"):
            wal.truncate_before(cut)
        assert wal.head_lsn == 0
        assert (tmp_path / "log" / f"{0:020d}.wal").exists()
        failing.fail_at = None
        assert wal.truncate_before(cut) == cut
        assert [s.index for s in archive.segments()][:2] == [0, 1]
        assert not (tmp_path / "log" / f"{0:020d}.wal").exists()
    # Exactly the deleted segments were pushed: every record wholly inside them.
    assert list(archive.iter()) == ending_by(records, 2 * SEGMENT_SIZE)


def test_truncate_before_refuses_a_bad_lsn_before_pushing_anything(tmp_path: Path) -> None:
    # Catches a guard that pushes segments for a truncation the LSN check refuses.
    archive = memory_archive()[0]
    with mmwal.open(tmp_path / "log", segment_size=SEGMENT_SIZE, archive=archive) as wal:
        wal._archiver.stop()  # type: ignore[union-attr]  # only the guard pushes here
        for _ in range(100):
            wal.append(os.urandom(2000))
        inside = next(r.lsn for r in wal if r.lsn > 2 * SEGMENT_SIZE) + 1
        with pytest.raises(mmwal.InvalidLSNError):
            wal.truncate_before(inside)
        with pytest.raises(mmwal.InvalidLSNError):
            wal.truncate_before(wal.next_lsn + 100)
        assert archive.segments() == []
        assert wal.head_lsn == 0


def test_open_with_archive_refuses_what_it_cannot_archive(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    write_log(tmp_path / "log")
    with pytest.raises(ValueError, match="read-only"):
        mmwal.open(tmp_path / "log", readonly=True, archive=archive)
    mmwal.open(tmp_path / "log").close()  # the refused open released the lock


def test_cli_push_ls_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_log(tmp_path / "log")
    url = (tmp_path / "archive").as_uri()
    assert main(["archive", "push", str(tmp_path / "log"), url]) == 0
    assert "pushed" in capsys.readouterr().out
    assert main(["archive", "push", str(tmp_path / "log"), url]) == 0
    assert "nothing to push" in capsys.readouterr().out
    assert main(["archive", "ls", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "index\tfirst_lsn\tsize\tcrc32c"
    assert f"0\t0\t{SEGMENT_SIZE}\t" in out
    cut = records[10].lsn
    assert main(["archive", "restore", url, str(tmp_path / "r"), "--up-to-lsn", str(cut)]) == 0
    assert f"ends at LSN {cut}" in capsys.readouterr().out
    with mmwal.open(tmp_path / "r", readonly=True) as wal:
        assert list(wal) == records[:10]
    assert main(["archive", "restore", url, str(tmp_path / "r")]) == 1
    assert "exists" in capsys.readouterr().err


def test_the_background_pusher_retries_a_failed_push(tmp_path: Path) -> None:
    _, inner, root = memory_archive()
    failing = FailingFileSystem(inner, fail_at=1)
    archive = mmwal.Archive.from_filesystem(failing, root)
    with mmwal.open(tmp_path / "log", segment_size=SEGMENT_SIZE, archive=archive) as wal:
        archiver = wal._archiver
        assert archiver is not None
        for _ in range(100):
            wal.append(os.urandom(2000))
        wal.sync()
        _wait_for(lambda: archiver.last_error is not None)
        sealed = wal.durable_lsn // SEGMENT_SIZE
        _wait_for(lambda: len(archive.segments()) == sealed)  # after a 1 s pause
        _wait_for(lambda: archiver.last_error is None)


def test_the_background_pusher_stops_at_a_conflict(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    write_log(tmp_path / "other", seed=7)
    archive.push(tmp_path / "other")
    with mmwal.open(tmp_path / "log", segment_size=SEGMENT_SIZE, archive=archive) as wal:
        archiver = wal._archiver
        assert archiver is not None
        for _ in range(100):
            wal.append(os.urandom(2000))
        wal.sync()
        _wait_for(lambda: isinstance(archiver.last_error, mmwal.ArchiveConflictError))
        assert not archiver._thread.is_alive()
        with pytest.raises(mmwal.ArchiveConflictError):
            wal.truncate_before(wal.next_lsn)
        assert wal.head_lsn == 0


def test_damage_in_the_archive_is_refused(tmp_path: Path) -> None:
    archive, filesystem, root = memory_archive()
    write_log(tmp_path / "log")
    archive.push(tmp_path / "log")
    segments = archive.segments()
    # A published object changed behind the archive's back.
    target = f"{root}/segments/{segments[1].object_name}"
    data = bytearray(filesystem.cat_file(target))
    data[100] ^= 0xFF
    filesystem.pipe_file(target, bytes(data))
    with pytest.raises(mmwal.CorruptionError, match="does not match its manifest entry"):
        list(archive.iter())
    with pytest.raises(mmwal.CorruptionError, match="arrived as"):
        archive.restore(tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    assert [name for name in os.listdir(tmp_path) if "restoring" in name] == []
    # An entry edited by hand, and then one removed: a gap.
    entry = f"{root}/manifest/{2:020d}.json"
    filesystem.pipe_file(entry, filesystem.cat_file(entry).replace(b'"size": ', b'"size": 1'))
    with pytest.raises(mmwal.CorruptionError, match="checksum"):
        archive.segments()
    filesystem.rm_file(entry)
    with pytest.raises(mmwal.CorruptionError, match="gap"):
        archive.restore(tmp_path / "restored")


def test_a_restored_log_reads_as_wal_db_reads_it(tmp_path: Path) -> None:
    """The restored directory, decoded by the spec codec that stands in for wal-db."""
    from spec import spec_crc32c
    from test_waldb_compat import spec_decode

    archive = memory_archive()[0]
    log = tmp_path / "log"
    records = write_log(log, records=300)
    head = next(record.lsn for record in records if record.lsn > SEGMENT_SIZE + 10)
    with mmwal.open(log) as wal:
        wal.truncate_before(head)
    archive.push(log)
    restored = tmp_path / "restored"
    end = archive.restore(restored)
    head_file = (restored / "head").read_bytes()
    assert len(head_file) == 12
    assert int.from_bytes(head_file[8:], "little") == spec_crc32c(head_file[:8])
    assert int.from_bytes(head_file[:8], "little") == head
    names = listing(restored)
    assert names[0] == f"{1:020d}.wal"
    image = b"".join((restored / name).read_bytes() for name in names if name != "head")
    decoded, stop = spec_decode(image, start=head, base=SEGMENT_SIZE)
    assert stop == end
    assert decoded == [(r.lsn, r.data) for r in list(archive.iter())]
    assert decoded == [(r.lsn, r.data) for r in ending_by(records, end) if r.lsn >= head]


def test_a_segment_whose_crossing_record_is_torn_is_not_sealed(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    log = tmp_path / "log"
    with mmwal.open(log, segment_size=SEGMENT_SIZE) as wal:
        wal.append(b"a" * (SEGMENT_SIZE - 8 - 100))
        crossing = wal.append(b"b" * 300)  # 92 bytes of it in segment 0, the rest in 1
    # A crash lost the crossing record's tail: segment 1 never reached the disk,
    # nor did the recovery point that names the record durable.
    (log / f"{1:020d}.wal").write_bytes(bytes(SEGMENT_SIZE))
    (log / "recovery").unlink(missing_ok=True)
    assert archive.push(log) == []  # recovery would cut segment 0's tail: not sealed
    with mmwal.open(log) as wal:  # recovery zeroes segment 0 from the torn record on
        assert wal.next_lsn == crossing
        wal.append(b"c" * 300)
        assert archive.push(wal) == []  # not durable yet
        wal.sync()
        assert archive.push(wal) == [0]
    assert [r.data[:1] for r in archive.iter()] == [b"a"]


def test_progress_reports_every_byte_transferred(tmp_path: Path) -> None:
    archive = memory_archive()[0]
    write_log(tmp_path / "log")
    pushed_bytes: list[int] = []
    pushed = archive.push(tmp_path / "log", progress=pushed_bytes.append)
    assert pushed_bytes == [SEGMENT_SIZE] * len(pushed)
    restored_bytes: list[int] = []
    archive.restore(tmp_path / "restored", progress=restored_bytes.append)
    assert restored_bytes == [SEGMENT_SIZE] * len(pushed)


@pytest.mark.parametrize("source", ["wal", "directory"])
def test_records_longer_than_max_record_size_are_sealed(tmp_path: Path, source: str) -> None:
    # A smaller limit than the writer's does not make its records damage: open,
    # iterate and verify read a longer frame whose CRC checks, and so must push.
    archive = memory_archive()[0]
    log = tmp_path / "log"
    with mmwal.open(log, segment_size=SEGMENT_SIZE) as wal:
        wal.append(b"a" * 5000)  # inside segment 0
        wal.append(b"b" * (SEGMENT_SIZE - 5000 - 3 * 8 - 100))
        wal.append(b"c" * 3000)  # crosses into segment 1
        wal.append(b"d" * (2 * SEGMENT_SIZE))  # spans segments 1..3
        wal.append(b"e" * 10)
        records = list(wal)
    small = mmwal.WalConfig(max_record_size=1000)
    if source == "wal":
        with mmwal.open(log, config=small) as wal:
            assert len(list(wal)) == len(records)
            pushed = archive.push(wal)
    else:
        pushed = archive.push(log, max_record_size=1000)
    assert pushed == [0, 1, 2]
    # Reading the archive with the smaller limit raised CorruptionError.
    assert list(archive.iter(max_record_size=1000)) == records[:3]
    assert list(archive.iter(records[2].lsn, max_record_size=1000)) == records[2:3]
    with pytest.raises(mmwal.InvalidLSNError):
        list(archive.iter(records[1].lsn + 8, max_record_size=1000))


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_damage_found_while_pushing_keeps_the_segments_before_it(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "log"
    records = write_log(log)
    inner, root = _fresh(kind, tmp_path)
    archive = mmwal.Archive.from_filesystem(inner, root)
    with mmwal.open(log) as wal:
        assert wal.durable_lsn >= 3 * SEGMENT_SIZE
        fd = os.open(log / f"{2:020d}.wal", os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xff" * 64, SEGMENT_SIZE // 2)  # inside a frame, below durable
        finally:
            os.close(fd)
        with pytest.raises(mmwal.CorruptionError):
            archive.push(wal)
    # The push's worker threads are gone with it.
    assert not [t for t in threading.enumerate() if t.name.startswith("mmwal-archive-")]
    # Segments 0 and 1 were verified before the damage was found: they are archived.
    assert [segment.index for segment in archive.segments()] == [0, 1]
    assert list(archive.iter()) == ending_by(records, 2 * SEGMENT_SIZE)


@pytest.mark.parametrize("damage", ["torn", "flipped"])
def test_a_damaged_local_copy_is_never_published(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmwal._archive_transfer import Target

    log = tmp_path / "log"
    write_log(log)
    archive = mmwal.Archive((tmp_path / "archive").as_uri())
    copy = Target._copy_local

    def damaged_copy(target: Target, segment: Any, path: str) -> None:
        copy(target, segment, path)
        with open(path, "r+b") as landed:
            if damage == "torn":
                landed.truncate(SEGMENT_SIZE // 2)
            else:  # the same size, another CRC-32C
                landed.seek(SEGMENT_SIZE // 2)
                byte = landed.read(1)[0]
                landed.seek(SEGMENT_SIZE // 2)
                landed.write(bytes([byte ^ 0x01]))

    monkeypatch.setattr(Target, "_copy_local", damaged_copy)
    with pytest.raises(OSError, match="did not land intact"):
        archive.push(log)
    assert archive.segments() == []
    segments = f"{archive._root}/segments"
    # The copy that failed its check was removed at once.
    assert not [path for path in archive._fs.find(segments) if "/" + "0" * 20 + "-" in path]
    monkeypatch.undo()
    assert archive.push(log)
    # What the failed push left unpublished is gone after the next one.
    named = {f"{segments}/{segment.object_name}" for segment in archive.segments()}
    assert set(archive._fs.find(segments)) == named
