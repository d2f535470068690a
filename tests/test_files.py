"""Files mmwal creates: private by default, never through a planted name.

Every file mmwal writes (segments, the single file, the head file and its
temporary, quarantine files, repair's files) is created ``0o600`` unless
``file_mode`` says otherwise, with ``O_EXCL | O_NOFOLLOW``. A symlink or a file
planted under any name mmwal writes is never followed, overwritten or written
through: the tests plant them next to a victim file outside the log and show the
victim (and the planted entry) unchanged.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import mmwal
from mmwal import FileStore, SegmentStore, Wal, WalConfig
from mmwal._format import HEAD_FILE_NAME, segment_name
from mmwal._published import ENDS_FILE_NAME

VICTIM_BYTES = b"not a log: must stay as it is\n" * 20


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Run under the common umask 022, so modes say what mmwal asked for."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim"
    path.write_bytes(VICTIM_BYTES)
    path.chmod(0o644)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def log_files(path: Path) -> list[Path]:
    """Return the log's files, the followers' state file included."""
    if not path.is_dir():
        return [path, path.with_name(f"{path.name}.{ENDS_FILE_NAME}")]
    return sorted(p for p in path.iterdir() if p.is_file())


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == VICTIM_BYTES
    assert mode(victim) == 0o644


def fill_segments(wal: Wal, segments: int, segment_size: int) -> list[int]:
    lsns = []
    while wal.next_lsn < segments * segment_size:
        lsns.append(wal.append(b"r" * 100))
    wal.sync()
    return lsns


# -- modes ------------------------------------------------------------------------------


def test_a_single_file_log_is_private_by_default(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "wal.log") as wal:
        wal.append(b"secret")
    assert mode(tmp_path / "wal.log") == 0o600


def test_segments_and_the_head_file_are_private_by_default(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=4096) as wal:
        lsns = fill_segments(wal, 3, 4096)
        wal.truncate_before(lsns[-1])
    files = log_files(path)
    assert (path / HEAD_FILE_NAME) in files
    assert (path / ENDS_FILE_NAME) in files
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(path) == 0o700


def test_quarantine_files_are_private(tmp_path: Path) -> None:
    for layout, log in (("file", tmp_path / "wal.log"), ("segments", tmp_path / "log")):
        wal = mmwal.open(log, segment_size=4096 if layout == "segments" else None)
        wal.append(b"kept")
        wal.close()
        # Bytes past the end (a torn record): the next open quarantines them.
        target = log / segment_name(0) if layout == "segments" else log
        with target.open("r+b") as file:
            file.seek(500)
            file.write(b"\xff" * 40)
        wal = mmwal.open(log)
        quarantine = wal.recovery.quarantine_path
        wal.close()
        assert quarantine is not None
        assert mode(Path(quarantine)) == 0o600, layout


@pytest.mark.parametrize("how", ["mmwal.open", "Wal.open", "FileStore"])
def test_file_mode_reaches_a_single_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "wal.log"
    if how == "mmwal.open":
        wal = mmwal.open(path, file_mode=0o640)
    elif how == "Wal.open":
        wal = Wal.open(path, file_mode=0o640)
    else:
        wal = Wal.with_store(FileStore(path, window_size=1 << 16, file_mode=0o640))
    wal.append(b"x")
    wal.close()
    assert {mode(p) for p in log_files(path)} == {0o640}


@pytest.mark.parametrize("how", ["mmwal.open", "Wal.open_segmented", "SegmentStore"])
def test_file_mode_reaches_segments_and_the_head_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "log"
    if how == "mmwal.open":
        wal = mmwal.open(path, segment_size=4096, file_mode=0o640)
    elif how == "Wal.open_segmented":
        wal = Wal.open_segmented(path, 4096, file_mode=0o640)
    else:
        wal = Wal.with_store(SegmentStore(path, 4096, file_mode=0o640))
    lsns = fill_segments(wal, 2, 4096)
    wal.truncate_before(lsns[-1])
    wal.close()
    assert {mode(p) for p in log_files(path)} == {0o640}
    assert mode(path) == 0o750


def test_a_state_file_of_the_logs_own_file_mode_is_kept_across_opens(tmp_path: Path) -> None:
    # A state file is taken back (removed and created afresh) only when it is not
    # one mmwal made: one made under file_mode 0o640 is reused, so a follower's
    # mapping of it stays the writer's.
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=4096, file_mode=0o640) as wal:
        wal.append(b"x")
    held = os.open(path / ENDS_FILE_NAME, os.O_RDONLY)
    try:
        with mmwal.open(path, segment_size=4096, file_mode=0o640) as wal:
            wal.append(b"y")
        assert os.fstat(held).st_nlink == 1  # not removed (held open, its inode stays its own)
        assert os.fstat(held).st_ino == (path / ENDS_FILE_NAME).stat().st_ino
    finally:
        os.close(held)
    assert mode(path / ENDS_FILE_NAME) == 0o640


@pytest.mark.parametrize("bad", [0o200, 0o400, 0o1600, -1, True, "0o600"])
def test_a_file_mode_the_owner_cannot_use_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="file_mode"):
        mmwal.open(tmp_path / "wal.log", file_mode=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "wal.log").exists()


# -- planted names ----------------------------------------------------------------------


def test_a_symlink_under_the_next_segment_name_is_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    path = tmp_path / "log"
    wal = mmwal.open(path, segment_size=4096)
    wal.append(b"first")
    wal.sync()
    (path / segment_name(1)).symlink_to(victim)
    with pytest.raises(FileExistsError):
        wal.append(b"y" * 5000)  # needs segment 1
    wal.close()
    assert_untouched(victim)
    assert (path / segment_name(1)).is_symlink()


def test_a_symlinked_segment_at_open_is_refused_not_written(tmp_path: Path, victim: Path) -> None:
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=len(VICTIM_BYTES)) as wal:
        wal.append(b"first")
    (path / segment_name(1)).symlink_to(victim)
    with pytest.raises(OSError, match="symbolic links"):
        mmwal.open(path)
    assert_untouched(victim)


def test_a_new_log_is_never_created_through_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "would-be-created"
    target.parent.mkdir()
    (tmp_path / "wal.log").symlink_to(target)
    with pytest.raises(FileExistsError):
        mmwal.open(tmp_path / "wal.log")
    assert not target.exists()


@pytest.mark.parametrize("planted", ["head", "head.tmp", "head-temporaries"])
def test_the_head_file_is_never_written_through_a_planted_name(
    tmp_path: Path, victim: Path, planted: str
) -> None:
    path = tmp_path / "log"
    wal = mmwal.open(path, segment_size=4096)
    lsns = fill_segments(wal, 3, 4096)
    if planted == "head-temporaries":
        # Every name the temporary could have had before it was made unique.
        for name in ("head.tmp", "head.tmp.1", ".head.tmp"):
            (path / name).symlink_to(victim)
    else:
        (path / planted).symlink_to(victim)
    assert wal.truncate_before(lsns[-1]) == lsns[-1]
    wal.close()
    assert_untouched(victim)
    assert (path / HEAD_FILE_NAME).is_file()
    assert not (path / HEAD_FILE_NAME).is_symlink()
    with mmwal.open(path) as again:
        assert again.head_lsn == lsns[-1]
    leftovers = [p.name for p in path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []


@pytest.mark.parametrize("layout", ["file", "segments"])
def test_a_crashs_leftover_temporaries_go_at_a_writable_open_only(
    tmp_path: Path, victim: Path, layout: str
) -> None:
    # What a crash inside a head-file or recovery-point replace leaves: a
    # temporary named as replace_file names it. Only exactly that name, as a
    # regular file, is ours to remove; a symlink under it and near misses stay.
    if layout == "segments":
        log = tmp_path / "log"
        with mmwal.open(log, segment_size=4096) as wal:
            fill_segments(wal, 2, 4096)
        directory, prefixes = log, [HEAD_FILE_NAME, "recovery"]
    else:
        log = tmp_path / "wal.log"
        with mmwal.open(log) as wal:
            wal.append(b"x")
        directory, prefixes = tmp_path, ["wal.log.recovery"]
    ours = [f"{prefix}.0123456789abcdef.tmp" for prefix in prefixes]
    others = [
        f"{prefixes[0]}.0123456789ABCDEF.tmp",  # not a name token_hex makes
        f"{prefixes[0]}.0123456789abcde.tmp",
        f"{prefixes[0]}.0123456789abcdef.tmp.1",
        f"x{prefixes[0]}.0123456789abcdef.tmp",
        "other.0123456789abcdef.tmp",
    ]
    for name in ours + others:
        (directory / name).write_bytes(b"half a head file")
    planted_link = directory / f"{prefixes[0]}.fedcba9876543210.tmp"
    planted_link.symlink_to(victim)

    with mmwal.open(log, readonly=True):
        pass
    assert all((directory / name).exists() for name in ours)
    with mmwal.open(log) as wal:
        assert [r.data for r in wal][:1] == ([b"x"] if layout == "file" else [b"r" * 100])
    assert not any((directory / name).exists() for name in ours)
    assert all((directory / name).read_bytes() == b"half a head file" for name in others)
    assert planted_link.is_symlink()
    assert_untouched(victim)


def test_a_symlinked_head_file_at_open_is_not_followed(tmp_path: Path, victim: Path) -> None:
    """A symlink named ``head`` reads as no head file: the victim is never read or written."""
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=4096) as wal:
        wal.append(b"x")
    (path / HEAD_FILE_NAME).symlink_to(victim)
    with mmwal.open(path) as wal:
        assert wal.head_lsn == 0
        assert [record.data for record in wal] == [b"x"]
    assert_untouched(victim)


@pytest.mark.parametrize("layout", ["file", "segments"])
def test_quarantine_never_writes_through_a_planted_name(
    tmp_path: Path, victim: Path, layout: str
) -> None:
    log = tmp_path / ("wal.log" if layout == "file" else "log")
    wal = mmwal.open(log, segment_size=4096 if layout == "segments" else None)
    wal.append(b"kept")
    wal.close()
    target = log / segment_name(0) if layout == "segments" else log
    with target.open("r+b") as file:
        file.seek(500)
        file.write(b"\xff" * 40)
    base = (
        log / f"quarantine-{12:020d}"
        if layout == "segments"
        else Path(f"{log}.quarantine-{12:020d}")
    )
    base.symlink_to(victim)
    Path(f"{base}.1").write_bytes(b"an earlier quarantine")
    wal = mmwal.open(log)
    assert wal.recovery.quarantine_path == f"{base}.2"
    wal.close()
    assert_untouched(victim)
    assert base.is_symlink()
    assert Path(f"{base}.1").read_bytes() == b"an earlier quarantine"
    assert Path(f"{base}.2").read_bytes().endswith(b"\xff" * 40)


def test_repair_never_writes_through_a_planted_name(tmp_path: Path, victim: Path) -> None:
    path = tmp_path / "log"
    with mmwal.open(path, segment_size=4096) as wal:
        fill_segments(wal, 4, 4096)
    # A gap: segment 2 is gone, so repair sets segment 3 aside as a .quarantine file.
    (path / segment_name(2)).unlink()
    (path / f"{segment_name(3)}.quarantine").symlink_to(victim)
    # And the head in a missing segment: repair writes a new head file.
    (path / segment_name(0)).unlink()
    (path / "head.tmp").symlink_to(victim)
    report = mmwal.repair(path, config=WalConfig())
    assert_untouched(victim)
    assert (path / f"{segment_name(3)}.quarantine").is_symlink()
    assert str(path / f"{segment_name(3)}.quarantine.1") in report.quarantined
    assert mode(path / f"{segment_name(3)}.quarantine.1") == 0o600
    assert mode(path / HEAD_FILE_NAME) == 0o600
    with mmwal.open(path) as again:
        assert again.head_lsn == report.head
