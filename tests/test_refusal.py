"""Opening refuses what is not a log, and leaves it exactly as it found it.

When no valid frame starts at the head, ``open`` raises ``CorruptionError`` and every
file (log files, head file, unrelated files beside them) is byte-for-byte what it
was: same names, sizes and contents. The one exception is a crash during the very
first append: a partial first frame followed by zeros (every nonzero byte inside
the extent the first header claims) opens as an empty log.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import random
import re
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from spec import spec_frame as frame

import mmwal
from mmwal import CorruptionError, FileStore, SegmentStore, Wal, WalConfig

GRANULE = 4096

Snapshot = dict[str, tuple[int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every file under ``root``: relative path -> (size, sha256)."""
    files: Snapshot = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            data = path.read_bytes()
            files[str(path.relative_to(root))] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def test_the_frame_helper_matches_the_spec_vector() -> None:
    assert frame(b"hello") == bytes.fromhex("a1b1174e0500000068656c6c6f")


def assert_refusal_message(error: CorruptionError, path: Path, offset: int) -> None:
    """The error says where, what was found, and how to go on."""
    message = str(error)
    assert error.offset == offset
    assert error.path == str(path)
    assert str(path) in message
    assert f"offset {offset}" in message
    assert error.reason, "the error does not say what was found"
    assert error.reason in message
    assert "hint:" in message
    assert error.hint
    # A hint that names an mmwal function must name one that exists.
    for name in re.findall(r"mmwal\.(\w+)\(", message):
        assert hasattr(mmwal, name), f"the hint names mmwal.{name}(), which does not exist"


def assert_lock_released(path: Path) -> None:
    """Nothing of the refused open still holds the writer's lock (an flock) on ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- single files that are not logs ------------------------------------------------


def random_bytes(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(random.Random(size).randbytes(size))

    return make


def text_file(path: Path) -> None:
    source = Path(mmwal.__file__).read_text()
    path.write_text(source * 3)


def sqlite_file(path: Path) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("create table t (k integer primary key, v text)")
        connection.executemany("insert into t (v) values (?)", [("x" * 50,)] * 200)
    connection.close()


def gzip_file(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not a log\n" * 5000, mtime=0))


FOREIGN_FILES = {
    "random-1000": random_bytes(1000),
    "random-window": random_bytes(GRANULE),
    "random-3-windows-and-a-bit": random_bytes(3 * GRANULE + 17),
    "text": text_file,
    "sqlite": sqlite_file,
    "gzip": gzip_file,
}

OPENERS: dict[str, Callable[[Path], Wal]] = {
    "Wal.open": Wal.open,
    "mmwal.open": mmwal.open,
    "small-windows": lambda path: Wal.with_store(FileStore(path, window_size=GRANULE)),
}


@pytest.mark.parametrize("opener", sorted(OPENERS))
@pytest.mark.parametrize("kind", sorted(FOREIGN_FILES))
def test_a_foreign_file_is_refused_and_left_untouched(
    tmp_path: Path, kind: str, opener: str
) -> None:
    path = tmp_path / "data.bin"
    FOREIGN_FILES[kind](path)
    (tmp_path / "neighbour.txt").write_text("leave me alone\n")
    before = snapshot(tmp_path)

    with pytest.raises(CorruptionError) as caught:
        OPENERS[opener](path)

    assert snapshot(tmp_path) == before, "a refused open changed the files"
    assert_refusal_message(caught.value, path, 0)
    assert_lock_released(path)


def test_a_refused_file_is_refused_again_and_stays_untouched(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    random_bytes(5000)(path)
    before = snapshot(tmp_path)
    for _ in range(3):
        with pytest.raises(CorruptionError):
            Wal.open(path)
    assert snapshot(tmp_path) == before


def test_a_damaged_first_record_with_intact_records_after_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.wal"
    image = bytearray(frame(b"first") + frame(b"second") + frame(b"third"))
    image[10] ^= 0x40  # inside the first payload
    path.write_bytes(bytes(image) + bytes(GRANULE - len(image)))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.with_store(FileStore(path, window_size=GRANULE))
    assert snapshot(tmp_path) == before
    assert_refusal_message(caught.value, path, 0)


def test_following_the_hint_makes_the_log_open(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    random_bytes(3000)(path)
    with pytest.raises(CorruptionError) as caught:
        Wal.open(path)
    names = re.findall(r"mmwal\.(\w+)\(", str(caught.value))
    assert names, "the hint names no way forward"
    assert "force=True" in str(caught.value)
    getattr(mmwal, names[0])(path, force=True)
    with Wal.open(path) as wal:
        assert wal.is_empty


# -- a crash during the very first append ------------------------------------------


@pytest.mark.parametrize(
    ("payload_size", "written"),
    [(100, 1), (100, 4), (100, 7), (100, 8), (100, 60), (100, 107), (5000, 4200)],
)
def test_a_torn_first_append_opens_as_an_empty_log(
    tmp_path: Path, payload_size: int, written: int
) -> None:
    payload = bytes(range(1, 256)) * (payload_size // 255 + 1)
    payload = payload[:payload_size]
    partial = frame(payload)[:written]
    path = tmp_path / "log.wal"
    path.write_bytes(partial + bytes(2 * GRANULE - len(partial)))
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty
        assert wal.recovery.end == 0
        assert list(wal.iter()) == []
        assert not any(path.read_bytes()), "the torn frame was not zeroed"
        assert wal.append(b"fresh") == 0
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert [(r.lsn, r.data) for r in wal.iter()] == [(0, b"fresh")]


@pytest.mark.parametrize("segment_size", [32, 64])
def test_a_torn_first_append_spanning_segments_opens_as_an_empty_log(
    tmp_path: Path, segment_size: int
) -> None:
    payload = bytes(range(1, 200))
    partial = frame(payload)[: 8 + 150]  # header and most of the payload: 3+ segments
    image = partial + bytes(-len(partial) % segment_size + segment_size)
    directory = tmp_path / "log"
    directory.mkdir()
    for index in range(len(image) // segment_size):
        piece = image[index * segment_size : (index + 1) * segment_size]
        (directory / f"{index:020d}.wal").write_bytes(piece)
    with Wal.open_segmented(directory, segment_size) as wal:
        assert wal.is_empty
        assert list(wal.iter()) == []
        for name in os.listdir(directory):
            if name.endswith(".wal"):
                assert not any((directory / name).read_bytes())


@pytest.mark.parametrize("length", [0, 1, 100, 4000])
def test_the_first_frames_claim_is_the_exact_boundary(tmp_path: Path, length: int) -> None:
    """A nonzero byte at the last claimed offset is a torn append; one past it is not.

    The claimed payload holds no lost sector (512 zero bytes in a row), which would
    itself show a torn write; see the test after this one.
    """
    claimed_end = 8 + length
    path = tmp_path / "log.wal"
    header = struct.pack("<II", 0x12345678, length)  # a header whose CRC cannot match

    inside = bytearray(2 * GRANULE)
    inside[:8] = header
    inside[8:claimed_end] = b"\x01" * length
    inside[claimed_end - 1] = 0x5A
    path.write_bytes(bytes(inside))
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty

    outside = bytearray(2 * GRANULE)
    outside[:8] = header
    outside[8:claimed_end] = b"\x01" * length
    outside[claimed_end] = 0x5A
    path.write_bytes(bytes(outside))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.with_store(FileStore(path, window_size=GRANULE))
    assert snapshot(tmp_path) == before
    assert_refusal_message(caught.value, path, 0)
    assert str(claimed_end) in caught.value.reason


def test_a_lost_sector_in_the_first_frame_is_a_crash_not_foreign_bytes(tmp_path: Path) -> None:
    """A torn first frame (a zeroed sector) with later pages on disk opens empty.

    Before the first sync the kernel may write any page of the appends back and
    lose any other; the bytes are quarantined, not wiped, and not refused.
    """
    path = tmp_path / "log.wal"
    first = bytearray(frame(b"A" * 1500))
    first[600:1112] = bytes(512)  # a lost sector inside the first payload
    image = bytes(first) + frame(b"second")
    path.write_bytes(image + bytes(GRANULE - len(image)))
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty
        assert wal.recovery.quarantine_path is not None
        kept = Path(wal.recovery.quarantine_path).read_bytes()
    assert kept == image


def test_a_lost_first_sector_is_a_crash_not_foreign_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.wal"
    image = bytes(512) + frame(b"a later record whose page reached the disk")
    path.write_bytes(image + bytes(GRANULE - len(image)))
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty


def test_an_implausible_first_length_claims_only_its_header(tmp_path: Path) -> None:
    path = tmp_path / "log.wal"
    image = bytearray(2 * GRANULE)
    image[:8] = struct.pack("<II", 0x12345678, 5000)
    image[100] = 1
    path.write_bytes(bytes(image))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.with_store(FileStore(path, window_size=GRANULE), WalConfig(max_record_size=1000))
    assert snapshot(tmp_path) == before
    assert "length" in caught.value.reason
    # With a limit that makes the length plausible it is a torn first append.
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty


# -- segment directories -----------------------------------------------------------


def write_segments(directory: Path, image: bytes, size: int, *, short_tail: bool = False) -> None:
    directory.mkdir(exist_ok=True)
    if not short_tail:
        image = image + bytes(-len(image) % size)
    for index in range(-(-len(image) // size)):
        (directory / f"{index:020d}.wal").write_bytes(image[index * size : (index + 1) * size])


def make_log(directory: Path, size: int, count: int) -> list[int]:
    with Wal.open_segmented(directory, size) as wal:
        return wal.append_many(f"record {i:03d}".encode() for i in range(count))


@pytest.mark.parametrize("short_tail", [False, True])
@pytest.mark.parametrize("size", [32, 64])
def test_a_segment_directory_with_a_garbage_first_segment_is_refused(
    tmp_path: Path, size: int, short_tail: bool
) -> None:
    directory = tmp_path / "log"
    image = random.Random(size).randbytes(5 * size - (7 if short_tail else 0))
    write_segments(directory, image, size, short_tail=short_tail)
    (directory / "README").write_text("not a segment\n")
    (directory / "00000000000000000007.wal.bak").write_bytes(b"\x01" * 10)
    before = snapshot(tmp_path)
    openers: list[Callable[[], Wal]] = [
        lambda: Wal.open_segmented(directory, size),
        lambda: Wal.open_segmented(directory),
        lambda: mmwal.open(directory),
        lambda: Wal.with_store(SegmentStore(directory, size)),
    ]
    for opener in openers:
        with pytest.raises(CorruptionError) as caught:
            opener()
        assert snapshot(tmp_path) == before
        assert_refusal_message(caught.value, directory, 0)
    assert_lock_released(directory)


def test_a_log_whose_first_segment_was_overwritten_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    make_log(directory, 32, 12)
    (directory / f"{0:020d}.wal").write_bytes(b"\xee" * 32)
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError):
        Wal.open_segmented(directory, 32)
    assert snapshot(tmp_path) == before


def test_a_garbage_head_segment_keeps_the_stale_segments_below_it(tmp_path: Path) -> None:
    """A refused open must not even finish an interrupted drop (remove stale segments)."""
    directory = tmp_path / "log"
    size = 32
    lsns = make_log(directory, size, 20)
    head = next(lsn for lsn in lsns if lsn >= 3 * size)
    with Wal.open_segmented(directory, size) as wal:
        wal.truncate_before(head)
    # Put back stale segments below the head, as a drop cut short leaves them...
    for index in range(head // size):
        (directory / f"{index:020d}.wal").write_bytes(b"\x11" * size)
    # ...and make every byte from the head to the end of its segment garbage.
    segment = directory / f"{head // size:020d}.wal"
    data = bytearray(segment.read_bytes())
    data[head % size :] = b"\xee" * (size - head % size)
    segment.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.open_segmented(directory, size)
    assert snapshot(tmp_path) == before
    assert_refusal_message(caught.value, directory, head)


@pytest.mark.parametrize("missing", [1, 2, 5])
def test_a_gap_in_segment_numbering_is_refused_and_nothing_deleted(
    tmp_path: Path, missing: int
) -> None:
    directory = tmp_path / "log"
    make_log(directory, 32, 20)
    count = len([n for n in os.listdir(directory) if n.endswith(".wal")])
    assert count > 6
    os.remove(directory / f"{missing:020d}.wal")
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.open_segmented(directory, 32)
    assert snapshot(tmp_path) == before
    error = caught.value
    assert error.offset == missing * 32
    assert error.path == str(directory)
    message = str(error)
    assert f"{missing - 1:020d}.wal" in message
    assert f"{missing + 1:020d}.wal" in message
    assert "hint:" in message
    for name in re.findall(r"mmwal\.(\w+)\(", message):
        assert hasattr(mmwal, name)
    assert_lock_released(directory)


def test_a_gap_in_zero_segments_past_the_end_is_still_refused(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    make_log(directory, 64, 2)
    (directory / f"{5:020d}.wal").write_bytes(bytes(64))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError):
        Wal.open_segmented(directory, 64)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("head_file", ["missing", "bad-crc", "short"])
def test_a_lost_head_file_after_segment_zero_is_gone_is_refused(
    tmp_path: Path, head_file: str
) -> None:
    directory = tmp_path / "log"
    size = 32
    lsns = make_log(directory, size, 20)
    head = next(lsn for lsn in lsns if lsn >= 2 * size)
    with Wal.open_segmented(directory, size) as wal:
        assert wal.truncate_before(head) == head
    assert not (directory / f"{0:020d}.wal").exists()
    head_path = directory / "head"
    data = head_path.read_bytes()
    assert struct.unpack_from("<Q", data)[0] == head
    if head_file == "missing":
        os.remove(head_path)
    elif head_file == "bad-crc":
        head_path.write_bytes(data[:8] + bytes(b ^ 0xFF for b in data[8:]))
    else:
        head_path.write_bytes(data[:11])
    before = snapshot(tmp_path)
    with pytest.raises(CorruptionError) as caught:
        Wal.open_segmented(directory, size)
    assert snapshot(tmp_path) == before
    error = caught.value
    assert error.path == str(directory)
    message = str(error)
    assert f"{0:020d}.wal" in message, "the error does not name the missing segment"
    first_present = min(int(n[:20]) for n in os.listdir(directory) if n.endswith(".wal"))
    assert f"{first_present:020d}.wal" in message
    assert "hint:" in message
    for name in re.findall(r"mmwal\.(\w+)\(", message):
        assert hasattr(mmwal, name)
    assert_lock_released(directory)


def test_a_directory_of_other_files_is_an_empty_log_and_they_stay(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / "notes.txt").write_text("hello\n")
    (directory / "1.wal").write_bytes(random.Random(1).randbytes(100))
    (directory / "000000000000000000001.wal").write_bytes(b"\xff" * 64)  # 21 digits
    before = snapshot(directory)
    with Wal.open_segmented(directory, 64) as wal:
        assert wal.is_empty
        assert list(wal.iter()) == []
    after = snapshot(directory)
    for name, digest in before.items():
        assert after[name] == digest
