"""The recovery point: written when it should be, trusted only when it agrees, never a lie.

A writable log keeps ``recovery`` beside its segments (``<file>.recovery`` beside a
single file). These tests check: its byte layout; when it is written (first flush,
sealed segment, byte interval, close, truncation); that it never vouches for bytes
a power loss could still take (the power-loss simulator, with crash images taken
inside every flush and every save); that one which disagrees with the log (stale,
rewritten log, restored backup, torn or foreign file) is ignored and the log
opens exactly as without it; that damage past it is still a torn tail; and that
a failure to write it never breaks the log.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

import mmwal
from mmwal import Syscalls, Wal, WalConfig
from mmwal import _recovery_point as recovery_point_module
from mmwal._format import (
    RECOVERY_POINT_SIZE,
    RecoveryPoint,
    decode_recovery_point,
    encode_recovery_point,
    segment_name,
)
from mmwal.testing import (
    LOG_FILE_NAME,
    SEGMENT_DIRECTORY,
    CrashImage,
    Layout,
    PowerLossSimulator,
)

HEADER = 8


def side_path(path: Path) -> Path:
    return path / "recovery" if path.is_dir() else Path(f"{path}.recovery")


def read_point(path: Path) -> RecoveryPoint | None:
    return decode_recovery_point(side_path(path).read_bytes())


def make(kind: str, root: Path) -> Path:
    return root / ("log" if kind == "seg" else "log.wal")


def open_kind(kind: str, path: Path, config: WalConfig | None = None, **options: object) -> Wal:
    if kind == "seg":
        return Wal.open_segmented(path, 256, config, **options)  # type: ignore[arg-type]
    return Wal.open(path, config, **options)  # type: ignore[arg-type]


KINDS = ["file", "seg"]

# -- the byte layout ------------------------------------------------------------------


def test_layout_round_trips_and_rejects_every_damaged_byte() -> None:
    point = RecoveryPoint(end=1013, last_lsn=1000, last_crc=0xDEADBEEF, last_length=5, unit_size=64)
    data = encode_recovery_point(point)
    assert len(data) == RECOVERY_POINT_SIZE
    assert decode_recovery_point(data) == point
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        assert decode_recovery_point(bytes(damaged)) is None, at
    assert decode_recovery_point(data[:-1]) is None
    assert decode_recovery_point(data + b"\0") is None
    assert decode_recovery_point(b"") is None
    with pytest.raises(ValueError, match="must end where its record ends"):
        encode_recovery_point(point._replace(end=1014))


# -- when it is written ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_close_leaves_a_point_at_the_end_and_open_scans_from_it(tmp_path: Path, kind: str) -> None:
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        lsns = wal.append_many([b"a" * 40, b"b" * 300, b"c"])
        end = wal.next_lsn
    point = read_point(path)
    assert point is not None
    assert point == RecoveryPoint(end, lsns[-1], point.last_crc, 1, 256 if kind == "seg" else 0)
    assert oct(side_path(path).stat().st_mode & 0o777) == oct(0o600)
    with open_kind(kind, path) as wal:
        assert wal.recovery.recovery_point == end
        assert wal.next_lsn == end
        assert [record.lsn for record in wal] == lsns


def test_a_sealed_segment_and_the_byte_interval_write_a_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_point_module, "POINT_INTERVAL_SECONDS", 3600.0)
    path = tmp_path / "log"
    with Wal.open_segmented(path, 256) as wal:
        wal.append_and_sync(b"a" * 10)
        first = read_point(path)
        assert first is not None
        assert first.end == wal.durable_lsn  # the first flush writes one
        wal.append_and_sync(b"b" * 10)
        assert read_point(path) == first  # within the segment and the interval: no write
        wal.append_and_sync(b"c" * 300)  # durable past the end of segment 0: sealed
        sealed = read_point(path)
        assert sealed is not None
        assert sealed.end == wal.durable_lsn
        wal.append(b"d")  # appended, not durable: no point may name it
        assert read_point(path) == sealed
    path = tmp_path / "log.wal"
    monkeypatch.setattr(recovery_point_module, "POINT_INTERVAL_BYTES", 100)
    with Wal.open(path) as wal:
        wal.append_and_sync(b"a")
        first = read_point(path)
        wal.append_and_sync(b"b" * 50)
        assert read_point(path) == first
        wal.append_and_sync(b"c" * 50)
        moved = read_point(path)
        assert moved is not None
        assert moved.end == wal.durable_lsn


def test_the_point_is_renamed_into_place_only_after_the_flush_that_covers_it(
    tmp_path: Path,
) -> None:
    events: list[str] = []

    class Recording(Syscalls):
        def msync(self, address: int, length: int) -> None:
            super().msync(address, length)
            events.append("msync")

        def fdatasync(self, fd: int) -> None:
            super().fdatasync(fd)
            events.append("msync")  # the data flush, whichever the method

        def replace(self, source: str, target: str) -> None:
            super().replace(source, target)
            events.append(f"replace {os.path.basename(target)}")

        def fsync_directory(self, path: str) -> None:
            super().fsync_directory(path)
            events.append("fsync_directory")

    path = tmp_path / "log.wal"
    with Wal.with_store(mmwal.FileStore(path, syscalls=Recording())) as wal:
        events.clear()
        wal.append_and_sync(b"record")
        assert events == ["msync", "replace log.wal.recovery", "fsync_directory"]


@pytest.mark.parametrize("kind", KINDS)
def test_truncate_after_moves_the_point_before_it_cuts(tmp_path: Path, kind: str) -> None:
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        lsns = wal.append_many([b"x" * 100 for _ in range(10)])
        wal.sync()
        wal.truncate_after(lsns[3])
        point = read_point(path)
        assert point is not None
        assert (point.last_lsn, point.end) == (lsns[3], lsns[4])
        wal.append(b"again")  # not synced: the point must not name it
        assert read_point(path) == point
    with open_kind(kind, path) as wal:
        assert [r.data for r in wal] == [b"x" * 100] * 4 + [b"again"]


def test_truncate_before_leaves_a_point_the_new_head_can_use(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Wal.open_segmented(path, 256) as wal:
        lsns = wal.append_many([b"x" * 100 for _ in range(10)])
        wal.truncate_before(lsns[7])
        point = read_point(path)
        assert point is not None
        assert point.last_lsn >= wal.head_lsn
    with Wal.open_segmented(path) as wal:
        assert wal.recovery.recovery_point == lsns[-1] + 108
        assert [r.lsn for r in wal] == lsns[7:]


def test_truncate_before_the_end_leaves_no_point_naming_a_dropped_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Checkpoint, then drop everything: the point saved at the end named the last
    # record, now deleted; the next open ignored it with a warning that the point
    # "does not match the log", on a log closed cleanly.
    path = tmp_path / "log"
    with Wal.open_segmented(path, 256) as wal:
        wal.append_many([b"x" * 100 for _ in range(10)])
        wal.sync()
        end = wal.next_lsn
        assert wal.truncate_before(end) == end
    point = read_point(path) if side_path(path).exists() else None
    assert point is None or point.last_lsn >= end
    with Wal.open_segmented(path) as wal:
        assert (wal.head_lsn, wal.next_lsn) == (end, end)
        wal.append_and_sync(b"after")
    assert not [m for m in caplog.messages if "does not match the log" in m]
    with Wal.open_segmented(path) as wal:
        assert [r.data for r in wal] == [b"after"]


def test_a_failure_to_write_the_point_never_breaks_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingRename(Syscalls):
        def replace(self, source: str, target: str) -> None:
            raise OSError(28, "No space left on device (injected)")

    path = tmp_path / "log.wal"
    with Wal.with_store(mmwal.FileStore(path, syscalls=FailingRename())) as wal:
        wal.append_and_sync(b"one")
        wal.append_and_sync(b"two")
        wal.append_and_sync(b"three" * 100)
    warnings = [m for m in caplog.messages if "could not write the recovery point" in m]
    # The first flush failed; the next ones wait out the interval; close tries again.
    assert len(warnings) == 2
    assert not side_path(path).exists()
    beside = sorted(p.name for p in tmp_path.iterdir() if p.name != "log.wal.mmwal-ends")
    assert beside == ["log.wal"], "a temporary was left"
    with Wal.open(path) as wal:
        assert [r.data for r in wal] == [b"one", b"two", b"three" * 100]


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "log.wal"
    os.symlink(victim, tmp_path / "log.wal.recovery.tmp")
    with Wal.open(path) as wal:
        wal.append_and_sync(b"one")
    assert victim.read_bytes() == b"precious"
    assert read_point(path) is not None


# -- a point that disagrees is ignored --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_no_point_opens_as_a_full_scan(tmp_path: Path, kind: str) -> None:
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        lsns = wal.append_many([b"a", b"b"])
    side_path(path).unlink()
    with open_kind(kind, path) as wal:
        assert wal.recovery.recovery_point is None
        assert [r.lsn for r in wal] == lsns


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_point_still_finds_the_records_after_it(tmp_path: Path, kind: str) -> None:
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        wal.append_many([b"a", b"b"])
    stale = side_path(path).read_bytes()
    with open_kind(kind, path) as wal:
        more = wal.append_many([b"c" * 300, b"d"])
        end = wal.next_lsn
    side_path(path).write_bytes(stale)
    with open_kind(kind, path) as wal:
        assert wal.recovery.recovery_point == more[0]
        assert wal.next_lsn == end
        assert [r.data for r in wal.iter(more[0])] == [b"c" * 300, b"d"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["rewritten", "restored backup", "torn", "foreign", "symlink"])
def test_a_point_that_disagrees_is_ignored(tmp_path: Path, kind: str, case: str) -> None:
    """Each would either hide records or call a torn tail damage if it were trusted."""
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        wal.append_many([b"a" * 30, b"b" * 30, b"c" * 30])
    point_bytes = side_path(path).read_bytes()
    if case == "rewritten":
        # Another writer rewrote the log: same length, other records.
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        with open_kind(kind, path) as wal:
            wal.append_many([b"x" * 30, b"y" * 30, b"z" * 30])
        side_path(path).write_bytes(point_bytes)
        # And tore its last record: trusted, the old point would call that damage.
    elif case == "restored backup":
        # Files restored from before the last records: the point names records
        # the log no longer holds.
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        with open_kind(kind, path) as wal:
            wal.append_many([b"a" * 30])
        side_path(path).write_bytes(point_bytes)
    elif case == "torn":
        side_path(path).write_bytes(point_bytes[:20])
    elif case == "foreign":
        side_path(path).write_bytes(os.urandom(RECOVERY_POINT_SIZE))
    else:
        target = tmp_path / "elsewhere"
        target.write_bytes(point_bytes)
        side_path(path).unlink()
        os.symlink(target, side_path(path))
    expected = [r.data for r in Wal.open(path, readonly=True)] if kind == "file" else None
    with open_kind(kind, path) as wal:
        assert wal.recovery.recovery_point is None
        if expected is not None:
            assert [r.data for r in wal] == expected
        assert wal.recovery.discarded_bytes == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_torn_tail_past_the_point_is_still_quarantined(tmp_path: Path, kind: str) -> None:
    path = make(kind, tmp_path)
    with open_kind(kind, path) as wal:
        kept = wal.append_many([b"a" * 30, b"b" * 30])
    point = side_path(path).read_bytes()
    with open_kind(kind, path) as wal:
        torn = wal.append_many([b"c" * 30, b"d" * 30])
    side_path(path).write_bytes(point)  # the crash came before a later point
    # Tear c: its last bytes never reached the disk.
    offset = torn[1] - 4
    target = path / segment_name(offset // 256) if kind == "seg" else path
    with target.open("r+b") as file:
        file.seek(offset % 256 if kind == "seg" else offset)
        file.write(bytes(4))
    with open_kind(kind, path) as wal:
        assert wal.recovery.recovery_point == torn[0]
        assert wal.next_lsn == torn[0]
        assert wal.recovery.quarantine_path is not None
        assert [r.lsn for r in wal] == kept


# -- the point never vouches for bytes a power loss could take -----------------------------


class LosingSimulator(PowerLossSimulator):
    """A disk whose ``msync`` writes nothing back: a negative control for the check below.

    ``fsync`` still writes (so the point's own file, and a new segment's first
    bytes, reach the disk): the points are written after each "flush" and crash
    images lack the bytes they name.
    """

    def msync(self, address: int, length: int) -> None:
        del address, length

    def fdatasync(self, fd: int) -> None:
        del fd


def _log_bytes(image: CrashImage, start: int, end: int) -> bytes:
    layout = image.layout
    if layout.segment_size is None:
        return image.files.get(LOG_FILE_NAME, b"")[start:end].ljust(end - start, b"\0")
    size = layout.segment_size
    out = bytearray()
    for index in range(start // size, -(-end // size)):
        name = f"{SEGMENT_DIRECTORY}/{segment_name(index)}"
        out += image.files.get(name, b"").ljust(size, b"\0")
    first = start // size * size
    return bytes(out[start - first : end - first])


def _violations(
    simulator: type[PowerLossSimulator],
    root: Path,
    seed: int,
    checked: list[int],
    layout: Layout,
) -> list[str]:
    """Run a workload on the real store; at seam calls check each image against its point."""
    rng = random.Random(seed)
    sim = simulator(root / f"run-{seed}", layout)
    store = sim.open_store()
    side = f"{SEGMENT_DIRECTORY}/recovery" if layout.segmented else f"{LOG_FILE_NAME}.recovery"
    found: list[str] = []
    busy = False

    def crash(call: str) -> None:
        nonlocal busy
        if busy or store.closed:
            return
        busy = True  # reading the store may map a chunk: a seam call of its own
        try:
            for _ in range(2):
                image = sim.crash_image(rng)
                data = image.files.get(side)
                point = decode_recovery_point(data) if data else None
                if point is None:
                    continue
                checked.append(point.end)
                cached = store.read(store.head_lsn, point.end - store.head_lsn)
                if _log_bytes(image, store.head_lsn, point.end) != cached:
                    found.append(f"{call}: the point at {point.end} names bytes not on disk")
        finally:
            busy = False

    sim.crash_hook = crash
    wal = Wal.with_store(store, WalConfig(max_record_size=4096))
    lsns: list[int] = []
    for _ in range(120):
        roll = rng.random()
        if roll < 0.6:
            lsns.append(wal.append(os.urandom(rng.randrange(0, 300))))
        elif roll < 0.85:
            wal.sync()
        elif roll < 0.95 and len(lsns) > 2:
            keep = rng.randrange(len(lsns))
            wal.truncate_after(lsns[keep])
            del lsns[keep + 1 :]
        else:
            crash("between operations")
    sim.crash_hook = None
    wal.close()
    return found


@pytest.mark.parametrize("layout", [Layout(segment_size=512), Layout(window_size=4096)], ids=str)
def test_the_point_never_names_bytes_a_power_loss_can_take(
    tmp_path: Path, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the real stores over the simulator: every crash image holds what its point names."""
    monkeypatch.setattr(recovery_point_module, "POINT_INTERVAL_BYTES", 700)
    checked: list[int] = []
    violations = [
        v
        for seed in range(6)
        for v in _violations(PowerLossSimulator, tmp_path, seed, checked, layout)
    ]
    assert violations == []
    assert len(checked) > 200
    assert len(set(checked)) > 20, "the point hardly moved"
    # The check sees a lie: over a disk whose msync writes nothing, points are
    # still written after each "flush", and crash images lack their bytes.
    lies = [
        v
        for seed in range(3)
        for v in _violations(LosingSimulator, tmp_path / "losing", seed, [], layout)
    ]
    assert lies
