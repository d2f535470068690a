"""Recovery finds exactly the clean prefix of a damaged log, and never lets a ghost back.

The expected outcome of every damaged image comes from an oracle written here from
the format in DESIGN.md (its own CRC-32C, its own frame walk), never from mmwal.
Logs live in four layouts: a single file mapped in small windows, segment
directories of 32- and 64-byte segments (records and headers span files), and
``MemStore.from_bytes`` with small chunks.
"""

from __future__ import annotations

import os
import struct
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec import spec_crc32c, spec_frame

from mmwal import (
    CorruptionError,
    FileStore,
    MemStore,
    SegmentStore,
    Syscalls,
    Wal,
    WalConfig,
)
from mmwal._format import HEAD_FILE_NAME, encode_head_file, segment_name
from mmwal._syscalls import DEFAULT_SYNC_METHOD, SYNC_METHODS

# -- the oracle: the format, from the spec ----------------------------------------


@dataclass
class Expected:
    records: list[tuple[int, bytes]]
    end: int
    refused: bool
    discarded: int


def oracle(image: bytes, max_record_size: int) -> Expected:
    """What opening ``image`` (log bytes from offset 0, zeros beyond) must give."""
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 8 <= len(image):
        crc, length = struct.unpack_from("<II", image, pos)
        if length > max_record_size or pos + 8 + length > len(image):
            break
        if spec_crc32c(image[pos + 4 : pos + 8 + length]) != crc:
            break
        records.append((pos, image[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    refused = False
    if pos == 0 and len(image) >= 8 and any(image[:8]):
        # No valid frame at the head: refused unless a crash explains every nonzero
        # byte (a partial first frame then zeros, a lost first sector, or a lost
        # sector, 512 zero bytes in a row, starting inside the first frame's claim).
        claimed = 8
        (length,) = struct.unpack_from("<I", image, 4)
        lost_sector = -1
        if length <= max_record_size:
            claimed += length
            lost_sector = (image + bytes(512)).find(bytes(512), 8)
        refused = any(image[claimed:]) and not 0 <= lost_sector < claimed
    tail = image[pos:].rstrip(b"\0")
    return Expected(records, pos, refused, len(tail))


def test_oracle_matches_the_spec_vectors() -> None:
    assert spec_crc32c(b"123456789") == 0xE3069283
    assert spec_crc32c(b"\0\0\0\0") == 0x48674BC7
    assert spec_frame(b"hello") == bytes.fromhex("a1b1174e0500000068656c6c6f")


# -- where a log lives ------------------------------------------------------------

GRANULE = 4096  # mmap.ALLOCATIONGRANULARITY on Linux; FileStore checks it
SEGMENTED = {"seg32": 32, "seg64": 64}
KINDS = ["file", "seg32", "seg64", "mem"]
MEM_CHUNK = 40


@dataclass
class Target:
    """One log location of a given kind; writes raw images and reads raw bytes back."""

    kind: str
    root: Path
    mem_image: bytes = b""
    syscalls: Syscalls | None = None
    sync_method: str = DEFAULT_SYNC_METHOD

    @property
    def segment_size(self) -> int:
        return SEGMENTED[self.kind]

    @property
    def path(self) -> Path:
        return self.root / ("log.wal" if self.kind == "file" else "log")

    def forget_point(self) -> None:
        """Remove mmwal's recovery point: the log is as wal-db, or a crash before one, left it."""
        if self.kind == "file":
            Path(f"{self.path}.recovery").unlink(missing_ok=True)
        elif self.kind != "mem":
            (self.path / "recovery").unlink(missing_ok=True)

    def write_image(self, image: bytes, *, pad: bool) -> None:
        """Lay ``image`` out as this kind stores it; ``pad`` fills the last unit with zeros."""
        self.forget_point()
        if self.kind == "mem":
            self.mem_image = image
        elif self.kind == "file":
            if pad:
                image = image + bytes(-len(image) % GRANULE)
            self.path.write_bytes(image)
        else:
            size = self.segment_size
            self.path.mkdir(exist_ok=True)
            for name in os.listdir(self.path):
                os.remove(self.path / name)
            if pad:
                image = image + bytes(-len(image) % size)
            count = max(1, -(-len(image) // size))
            for index in range(count):
                piece = image[index * size : (index + 1) * size]
                (self.path / f"{index:020d}.wal").write_bytes(piece)

    def open(self, config: WalConfig | None = None) -> Wal:
        if self.kind == "mem":
            return Wal.with_store(MemStore.from_bytes(self.mem_image, MEM_CHUNK), config)
        if self.kind == "file":
            store = FileStore(
                self.path,
                window_size=GRANULE,
                syscalls=self.syscalls,
                sync_method=self.sync_method,
            )
            return Wal.with_store(store, config)
        segments = SegmentStore(
            self.path, self.segment_size, syscalls=self.syscalls, sync_method=self.sync_method
        )
        return Wal.with_store(segments, config)

    def close(self, wal: Wal) -> None:
        if self.kind == "mem":
            store = wal.store
            assert isinstance(store, MemStore)
            self.mem_image = store.getvalue()
        wal.close()

    def segment_indices(self) -> list[int]:
        return sorted(int(name[:20]) for name in os.listdir(self.path) if name.endswith(".wal"))

    def raw(self, wal: Wal | None = None) -> bytes:
        """The log's bytes from offset 0 as they are now (the page cache, for files)."""
        if self.kind == "mem":
            if wal is not None and not wal.closed:
                store = wal.store
                assert isinstance(store, MemStore)
                return store.getvalue()
            return self.mem_image
        if self.kind == "file":
            return self.path.read_bytes()
        size = self.segment_size
        parts: list[bytes] = []
        for position, index in enumerate(self.segment_indices()):
            assert index == position, "segment numbering has a gap"
            data = (self.path / f"{index:020d}.wal").read_bytes()
            assert len(data) == size, f"segment {index} is {len(data)} bytes, not {size}"
            parts.append(data)
        return b"".join(parts)


@contextmanager
def target_of(kind: str) -> Iterator[Target]:
    with tempfile.TemporaryDirectory() as scratch:
        yield Target(kind, Path(scratch))


def records_of(wal: Wal) -> list[tuple[int, bytes]]:
    return [(record.lsn, record.data) for record in wal.iter()]


def assert_recovered(target: Target, wal: Wal, expected: Expected) -> None:
    assert records_of(wal) == expected.records
    assert wal.recovery.head == 0
    assert wal.recovery.end == expected.end
    assert wal.next_lsn == expected.end
    assert wal.durable_lsn == expected.end
    assert wal.is_empty == (expected.end == 0)
    assert wal.recovery.discarded_bytes == expected.discarded
    raw = target.raw(wal)
    assert not any(raw[expected.end :]), "nonzero bytes survived past the recovered end"
    if target.kind in SEGMENTED:
        # Segment files wholly past the end are removed, not kept zeroed.
        first_whole = -(-expected.end // target.segment_size)
        assert all(index < first_whole for index in target.segment_indices())


def assert_appends_continue(target: Target, wal: Wal, expected: Expected) -> None:
    """A record appended after recovery lands at the end and a reopen sees exactly it."""
    new = b"after-recovery\xff"
    lsn = wal.append(new)
    assert lsn == expected.end
    wal.sync()
    target.close(wal)
    with target.open() as again:
        assert records_of(again) == [*expected.records, (lsn, new)]
        assert again.recovery.discarded_bytes == 0
        target.close(again)


# -- hypothesis: cut anywhere, garble anything -------------------------------------

SMALL_PAYLOADS = st.lists(st.binary(max_size=70), min_size=1, max_size=7)
FILE_PAYLOADS = st.lists(
    st.one_of(st.binary(max_size=60), st.binary(min_size=1500, max_size=3000)),
    min_size=1,
    max_size=6,
)


def payloads_for(kind: str) -> st.SearchStrategy[list[bytes]]:
    return FILE_PAYLOADS if kind == "file" else SMALL_PAYLOADS


def capacity_after_cut(kind: str, cut: int) -> int:
    """The log bytes a store of ``kind`` backs once it opened a log cut at ``cut``."""
    if kind == "file":
        return -(-cut // GRANULE) * GRANULE
    if kind == "mem":
        return -(-cut // MEM_CHUNK) * MEM_CHUNK
    size = SEGMENTED[kind]
    return max(1, -(-cut // size)) * size


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_cut_log_recovers_exactly_its_clean_prefix(kind: str, data: st.DataObject) -> None:
    payloads = data.draw(payloads_for(kind), label="payloads")
    image = b"".join(spec_frame(payload) for payload in payloads)
    cut = data.draw(st.integers(0, len(image)), label="cut")
    cut_image = image[:cut]
    strict = oracle(cut_image, 1 << 26)
    # A store may back whole units, zero past the cut: a frame whose cut-off bytes
    # were zeros anyway (an empty payload's length field) is then whole again. Both
    # readings keep a prefix of what was appended; either is accepted.
    lenient = oracle(cut_image + bytes(capacity_after_cut(kind, cut) - cut), 1 << 26)
    # A cut never leaves bytes beyond the first frame's claim: it is never refused.
    assert not strict.refused
    assert not lenient.refused
    with target_of(kind) as target:
        target.write_image(cut_image, pad=False)
        wal = target.open()
        expected = lenient if wal.recovery.end == lenient.end else strict
        assert_recovered(target, wal, expected)
        assert_appends_continue(target, wal, expected)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_garbled_byte_recovers_exactly_the_clean_prefix(kind: str, data: st.DataObject) -> None:
    payloads = data.draw(payloads_for(kind), label="payloads")
    image = bytearray(b"".join(spec_frame(payload) for payload in payloads))
    position = data.draw(st.integers(0, len(image) - 1), label="position")
    image[position] ^= data.draw(st.integers(1, 255), label="xor")
    max_record_size = data.draw(st.sampled_from([4096, 1 << 26]), label="max_record_size")
    config = WalConfig(max_record_size=max_record_size)
    expected = oracle(bytes(image), max_record_size)
    with target_of(kind) as target:
        target.write_image(bytes(image), pad=True)
        before = target.raw()
        if expected.refused:
            with pytest.raises(CorruptionError) as caught:
                target.open(config)
            assert caught.value.offset == 0
            assert target.raw() == before, "a refused log was modified"
            return
        wal = target.open(config)
        assert_recovered(target, wal, expected)
        assert_appends_continue(target, wal, expected)


# -- implausible lengths, zero logs -----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("max_record_size", "bad_length"),
    [(1024, 0xFFFFFFF0), (1024, 1025), (None, 0xFFFFFFF0), (None, (1 << 26) - 8)],
)
def test_an_implausible_length_is_the_end_and_allocates_nothing(
    kind: str, max_record_size: int | None, bad_length: int
) -> None:
    config = WalConfig() if max_record_size is None else WalConfig(max_record_size)
    good = spec_frame(b"first record")
    # A header claiming ``bad_length`` bytes, then a little payload-like garbage.
    bogus = struct.pack("<II", 0xDEADBEEF, bad_length) + b"\xa5" * 40
    image = good + bogus
    expected = oracle(image, config.max_record_size)
    assert expected.records == [(0, b"first record")]
    with target_of(kind) as target:
        target.write_image(image, pad=True)
        tracemalloc.start()
        try:
            wal = target.open(config)
            records = records_of(wal)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"recovery allocated {peak} bytes for a length of {bad_length}"
        assert records == expected.records
        assert wal.recovery.end == len(good)
        assert wal.recovery.discarded_bytes == len(bogus)
        assert not any(target.raw(wal)[len(good) :])
        target.close(wal)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("units", [1, 3])
def test_an_all_zero_log_is_empty(kind: str, units: int) -> None:
    with target_of(kind) as target:
        unit = GRANULE if kind in ("file", "mem") else SEGMENTED[kind]
        target.write_image(bytes(units * unit), pad=False)
        with target.open() as wal:
            assert wal.is_empty
            assert records_of(wal) == []
            assert wal.recovery.end == 0
            assert wal.recovery.discarded_bytes == 0
            assert wal.recovery.skipped == []
            assert wal.append(b"one") == 0
            target.close(wal)
        with target.open() as wal:
            assert records_of(wal) == [(0, b"one")]
            target.close(wal)


def test_an_empty_image_is_an_empty_log() -> None:
    with Wal.with_store(MemStore.from_bytes(b"", MEM_CHUNK)) as wal:
        assert wal.is_empty
        assert wal.append(b"x") == 0
        assert records_of(wal) == [(0, b"x")]


@pytest.mark.parametrize("size", [32, 64])
def test_an_empty_last_segment_file_is_taken_over(size: int) -> None:
    """A crash right after creating a segment leaves it empty: it is no damage."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "log"
        payloads = [bytes([i + 1]) * (size - 8) for i in range(3)]  # one frame per segment
        image = b"".join(spec_frame(payload) for payload in payloads)
        directory.mkdir()
        for index in range(3):
            chunk = image[index * size : (index + 1) * size]
            (directory / f"{index:020d}.wal").write_bytes(chunk)
        (directory / f"{3:020d}.wal").write_bytes(b"")
        with Wal.open_segmented(directory, size) as wal:
            assert records_of(wal) == [(i * size, p) for i, p in enumerate(payloads)]
            assert wal.recovery.discarded_bytes == 0
            lsn = wal.append(b"next")
            assert lsn == 3 * size
        with Wal.open_segmented(directory, size) as wal:
            assert records_of(wal)[-1] == (3 * size, b"next")
        assert (directory / f"{3:020d}.wal").stat().st_size == size


def test_a_zero_file_shorter_than_a_window_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "short.wal"
    path.write_bytes(bytes(100))
    with Wal.with_store(FileStore(path, window_size=GRANULE)) as wal:
        assert wal.is_empty
        assert records_of(wal) == []


# -- the ghost ----------------------------------------------------------------------

# Payload sizes of A, B, C, D per kind. For the file (4 KiB windows) B straddles the
# window boundary and C lies in the second window; for 32/64-byte segments C and D
# lie in segments wholly past A.
GHOST_SIZES = {
    "file": (4000, 100, 50, 30),
    "seg32": (10, 20, 20, 30),
    "seg64": (10, 20, 20, 90),
    "mem": (10, 20, 20, 30),
}
# Plus cases where A ends exactly on a segment (window, chunk) boundary.
GHOST_CASES = [
    *GHOST_SIZES.items(),
    ("file", (4088, 100, 50, 30)),
    ("seg32", (24, 20, 20, 30)),
    ("seg64", (56, 20, 20, 30)),
    ("mem", (32, 20, 20, 30)),
]


def write_and_tear_b(
    target: Target, sizes: tuple[int, int, int, int]
) -> tuple[list[bytes], list[int]]:
    """Write A, B, C, D through mmwal, then garble the tail of B's payload on disk."""
    payloads = [bytes([ord(name)]) * size for name, size in zip("ABCD", sizes, strict=True)]
    if target.kind == "file":
        target.path.write_bytes(b"")
    elif target.kind in SEGMENTED:
        target.path.mkdir()
    wal = Wal.with_store(MemStore(MEM_CHUNK)) if target.kind == "mem" else target.open()
    lsns = [wal.append(payload) for payload in payloads]
    wal.sync()
    target.close(wal)
    # The tear stands for a crash before B was known durable: no point vouches for it.
    target.forget_point()
    image = bytearray(target.raw())
    written = b"".join(spec_frame(payload) for payload in payloads)
    assert bytes(image[: len(written)]) == written, "mmwal did not write the spec's frames"
    assert not any(image[len(written) :])
    b_end = lsns[2]
    image[b_end - 6 : b_end] = b"\0\0\x17\0\0\0"  # a torn tail: B's last page half written
    torn = bytes(image)
    if target.kind == "mem":
        target.mem_image = torn
    elif target.kind == "file":
        target.path.write_bytes(torn)
    else:
        size = target.segment_size
        for index in range(len(torn) // size):
            (target.path / f"{index:020d}.wal").write_bytes(torn[index * size : (index + 1) * size])
    return payloads, lsns


@pytest.mark.parametrize(("kind", "sizes"), GHOST_CASES)
def test_a_ghost_never_comes_back(kind: str, sizes: tuple[int, int, int, int]) -> None:
    with target_of(kind) as target:
        payloads, lsns = write_and_tear_b(target, sizes)
        a, _, c, d = payloads
        a_end, c_start = lsns[1], lsns[2]
        log_end = lsns[3] + 8 + len(d)
        expected = oracle(target.raw(), WalConfig().max_record_size)
        assert expected.records == [(0, a)]

        wal = target.open()
        # Right after open, before anything else happens: only A, zeros after it.
        raw = target.raw(wal)
        assert not any(raw[a_end:])
        assert records_of(wal) == [(0, a)]
        assert wal.recovery.end == a_end
        assert wal.recovery.discarded_bytes == log_end - a_end
        if kind in SEGMENTED:
            holding_end = (a_end - 1) // target.segment_size
            assert target.segment_indices() == list(range(holding_end + 1))

        # The nasty part: a new record that ends exactly where old C began.
        new = b"N" * (c_start - a_end - 8)
        assert wal.append(new) == a_end
        assert wal.next_lsn == c_start
        wal.sync()
        assert records_of(wal) == [(0, a), (a_end, new)]
        target.close(wal)

        for _ in range(2):
            wal = target.open()
            assert records_of(wal) == [(0, a), (a_end, new)], "an old record came back"
            assert wal.recovery.end == c_start
            assert wal.recovery.discarded_bytes == 0
            assert c not in target.raw(wal)[c_start:]
            target.close(wal)

        # And appending on from there gives fresh records, still no C or D.
        wal = target.open()
        after = wal.append(b"fresh")
        assert after == c_start
        target.close(wal)
        wal = target.open()
        assert records_of(wal) == [(0, a), (a_end, new), (c_start, b"fresh")]
        target.close(wal)


# -- the zeroing is durable before open returns -----------------------------------


def _mapping_of(address: int) -> tuple[str, int]:
    """Return (path, file offset) of the mapped file byte at ``address``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start_text, end_text = fields[0].split("-")
            start, end = int(start_text, 16), int(end_text, 16)
            if start <= address < end and len(fields) == 6:
                return fields[5].strip(), int(fields[2], 16) + address - start
    raise AssertionError(f"msync of unmapped address {address:#x}")


@dataclass
class Flushed:
    path: str
    offset: int
    data: bytes  # the file's bytes in the flushed range at the moment of the msync


class RecordingSyscalls(Syscalls):
    """Real syscalls, recording what each data flush (msync, fdatasync) wrote back, and removals."""

    def __init__(self) -> None:
        self.flushes: list[Flushed] = []
        self.events: list[tuple[str, str]] = []

    def msync(self, address: int, length: int) -> None:
        path, offset = _mapping_of(address)
        super().msync(address, length)
        with open(path, "rb") as file:
            file.seek(offset)
            self.flushes.append(Flushed(os.path.realpath(path), offset, file.read(length)))
        self.events.append(("msync", os.path.realpath(path)))

    def fdatasync(self, fd: int) -> None:
        path = os.path.realpath(f"/proc/self/fd/{fd}")
        super().fdatasync(fd)
        with open(path, "rb") as file:
            self.flushes.append(Flushed(path, 0, file.read()))  # the whole file
        self.events.append(("fdatasync", path))

    def fsync_directory(self, path: str) -> None:
        super().fsync_directory(path)
        self.events.append(("fsync_directory", os.path.realpath(path)))

    def remove(self, path: str) -> None:
        super().remove(path)
        self.events.append(("remove", os.path.realpath(path)))


def flushed_as_zero(syscalls: RecordingSyscalls, path: str, offset: int) -> bool:
    real = os.path.realpath(path)
    for flush in syscalls.flushes:
        covers = flush.path == real and flush.offset <= offset < flush.offset + len(flush.data)
        if covers and flush.data[offset - flush.offset] == 0:
            return True
    return False


@pytest.mark.parametrize("method", SYNC_METHODS)
@pytest.mark.parametrize("kind", ["file", "seg32", "seg64"])
def test_recovery_zeroing_is_durable_before_open_returns(kind: str, method: str) -> None:
    with target_of(kind) as target:
        target.sync_method = method
        _, lsns = write_and_tear_b(target, GHOST_SIZES[kind])
        a_end = lsns[1]
        before = target.raw()
        dirty = [offset for offset in range(a_end, len(before)) if before[offset]]
        assert dirty

        recorder = RecordingSyscalls()
        target.syscalls = recorder
        wal = target.open()
        events_at_open = list(recorder.events)
        if kind == "file":
            for offset in dirty:
                assert flushed_as_zero(recorder, str(target.path), offset), (
                    f"the zeroing of file offset {offset} was not flushed before open returned"
                )
        else:
            size = target.segment_size
            removed = {path for op, path in events_at_open if op == "remove"}
            kept = (a_end - 1) // size
            for offset in dirty:
                index = offset // size
                segment = str(target.path / f"{index:020d}.wal")
                if index > kept:
                    assert os.path.realpath(segment) in removed
                else:
                    assert flushed_as_zero(recorder, segment, offset % size)
            # The removals are followed by an fsync of the directory before open returns.
            last_remove = max(i for i, (op, _) in enumerate(events_at_open) if op == "remove")
            directory = os.path.realpath(target.path)
            assert ("fsync_directory", directory) in events_at_open[last_remove + 1 :]
        # Read through another descriptor right after open: nothing past A.
        assert not any(target.raw()[a_end:])
        target.close(wal)


# -- the window of the search for a lost sector in the first frame, byte-exact ----------------


@pytest.mark.parametrize(
    ("zeros_from", "refused"),
    [
        (1023, False),  # a lost sector starting at the last byte the first header claims
        (1024, True),  # one byte later: past the claim, so the bytes after are foreign
    ],
)
def test_a_lost_sector_counts_only_when_it_starts_within_the_first_claim(
    tmp_path: Path, zeros_from: int, refused: bool
) -> None:
    # The first header claims exactly max_record_size bytes (still a plausible
    # length) and its CRC fails; nonzero bytes follow the zero run.
    payload_size = 1024
    image = bytearray(struct.pack("<II", 0xDEADBEEF, payload_size))
    image += b"\x55" * payload_size + b"\x55" * 600
    image[8 + zeros_from : 8 + zeros_from + 512] = bytes(512)
    path = tmp_path / "log"
    path.write_bytes(bytes(image))
    config = WalConfig(max_record_size=payload_size)
    assert oracle(bytes(image), payload_size).refused == refused
    if refused:
        with pytest.raises(CorruptionError):
            Wal.open(path, config)
        assert path.read_bytes() == image
    else:
        with Wal.open(path, config) as wal:
            assert wal.recovery.end == 0
            assert wal.recovery.quarantine_path is not None


# -- a lost sector inside the first header, byte-exact ----------------------------------------


def _head_log(directory: Path, segment_size: int, segments: int, head: int, header: bytes) -> None:
    """Write a segmented log by hand: ``header`` at ``head``, nonzero bytes after it.

    The bytes after the header hold no 512 zero bytes in a row and its length
    field claims nothing plausible past them, so only the header's own shape can
    make the open take the bytes for a crash's leftovers.
    """
    directory.mkdir()
    image = bytearray(b"\x77" * (segment_size * segments))
    image[head : head + 8] = header
    for index in range(segments):
        part = image[index * segment_size : (index + 1) * segment_size]
        (directory / segment_name(index)).write_bytes(bytes(part))
    (directory / HEAD_FILE_NAME).write_bytes(encode_head_file(head))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("split", range(1, 8))
@pytest.mark.parametrize("lost", ["first sector", "second sector"])
@pytest.mark.parametrize(
    ("segment_size", "boundary"),
    [(4096, 512), (64, 64)],  # a sector boundary in a file; a segment boundary
)
def test_a_first_header_split_by_a_lost_sector_is_a_crash(
    tmp_path: Path, split: int, lost: str, segment_size: int, boundary: int
) -> None:
    # A head ``split`` bytes before a boundary (as truncate_before leaves), the
    # sector on one side lost (zero): an unsynced first record torn by a crash.
    head = boundary - split
    header = bytes(split) + b"\xff" * (8 - split)
    if lost == "second sector":
        header = b"\xff" * split + bytes(8 - split)
    directory = tmp_path / "log"
    _head_log(directory, segment_size, 4096 // segment_size, head, header)
    with Wal.open_segmented(directory) as wal:
        assert wal.recovery.head == wal.recovery.end == head
        assert wal.recovery.quarantine_path is not None
        assert list(wal) == []


@pytest.mark.parametrize(
    ("segment_size", "head", "header"),
    [
        (4096, 512 - 3, b"\xff" * 8),  # split at a sector boundary, nothing lost
        (64, 64 - 3, b"\xff" * 8),  # split at a segment boundary, nothing lost
        (4096, 512 - 3, bytes(2) + b"\xff" * 6),  # zeros, but they end before the boundary
        (4096, 512 - 3, b"\xff" * 4 + bytes(4)),  # zeros, but they start after it
    ],
)
def test_a_first_header_no_lost_sector_explains_is_refused(
    tmp_path: Path, segment_size: int, head: int, header: bytes
) -> None:
    directory = tmp_path / "log"
    _head_log(directory, segment_size, 4096 // segment_size, head, header)
    before = _files(directory)
    with pytest.raises(CorruptionError) as caught:
        Wal.open_segmented(directory)
    assert caught.value.offset == head
    assert _files(directory) == before
