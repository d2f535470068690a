"""Byte compatibility with wal-db 1.x, checked with a codec written here from the spec.

The encoder and decoder below use nothing from mmwal: they are the format as the
design brief states it (little-endian ``crc32c | length | payload`` frames, CRC-32C
over the length field then the payload, segments of size S named by a 20-digit
index, a 12-byte head file). wal-db leaves files at their exact size: a single
file has no zero tail and the last segment is short.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from spec import spec_crc32c

from mmwal import FileStore, Record, SegmentStore, Wal, WalConfig, WalReadOnlyError

# -- the independent codec -------------------------------------------------------------


def spec_encode(payloads: list[bytes]) -> bytes:
    out = bytearray()
    for payload in payloads:
        length = len(payload).to_bytes(4, "little")
        out += spec_crc32c(length + payload).to_bytes(4, "little") + length + payload
    return bytes(out)


def spec_decode(log: bytes, start: int = 0, base: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    """Decode frames of ``log`` (``log[i]`` is log offset ``base + i``) from ``start``.

    Stops at the first short, implausible or failing frame (an all-zero header
    fails: the CRC of a zero length is not zero). Returns ``[(lsn, payload)]`` and
    the log offset where decoding stopped.
    """
    records: list[tuple[int, bytes]] = []
    pos = start - base
    while pos + 8 <= len(log):
        crc = int.from_bytes(log[pos : pos + 4], "little")
        length = int.from_bytes(log[pos + 4 : pos + 8], "little")
        if length > 64 * 1024 * 1024 or pos + 8 + length > len(log):
            break
        if spec_crc32c(log[pos + 4 : pos + 8 + length]) != crc:
            break
        records.append((base + pos, log[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return records, base + pos


def spec_head_file(head_lsn: int) -> bytes:
    raw = head_lsn.to_bytes(8, "little")
    return raw + spec_crc32c(raw).to_bytes(4, "little")


def spec_read_head(directory: Path) -> int:
    path = directory / "head"
    if not path.exists():
        return 0
    data = path.read_bytes()
    if len(data) < 12 or spec_crc32c(data[:8]) != int.from_bytes(data[8:12], "little"):
        return 0
    return int.from_bytes(data[:8], "little")


def spec_segment_name(index: int) -> str:
    return str(index).rjust(20, "0") + ".wal"


def spec_write_segments(directory: Path, log: bytes, size: int, first: int = 0) -> list[Path]:
    """Write log bytes ``[first*size, ...)`` as wal-db does: the last segment short."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset in range(first * size, len(log), size):
        path = directory / spec_segment_name(offset // size)
        path.write_bytes(log[offset : offset + size])
        paths.append(path)
    return paths


def spec_read_segments(directory: Path, size: int) -> tuple[bytes, int]:
    """Return the concatenated segments and the log offset of their first byte."""
    indices = sorted(
        int(p.name[:20])
        for p in directory.iterdir()
        if len(p.name) == 24 and p.name.endswith(".wal") and p.name[:20].isdigit()
    )
    assert indices == list(range(indices[0], indices[0] + len(indices))), "segment gap"
    data = b"".join((directory / spec_segment_name(i)).read_bytes() for i in indices)
    return data, indices[0] * size


def with_lsns(payloads: list[bytes], start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    for payload in payloads:
        out.append((start, payload))
        start += 8 + len(payload)
    return out


def payloads_for(count: int, max_size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, max_size, *(rng.randrange(max_size + 1) for _ in range(count - 3))]
    return [rng.randbytes(n) for n in sizes]


def as_pairs(records: list[Record]) -> list[tuple[int, bytes]]:
    return [(r.lsn, r.data) for r in records]


def test_spec_codec_self_check() -> None:
    assert spec_crc32c(b"123456789") == 0xE3069283
    assert spec_encode([b"hello"]).hex() == "a1b1174e0500000068656c6c6f"
    assert spec_decode(bytes(64)) == ([], 0)
    assert spec_segment_name(3) == "00000000000000000003.wal"


# -- (a) a wal-db single file: exact size, no zero tail ------------------------------------


@pytest.mark.parametrize("count", [0, 1, 50])
def test_waldb_single_file_opens_reads_and_extends(tmp_path: Path, count: int) -> None:
    path = tmp_path / "wal-db.log"
    payloads = payloads_for(count, 300, seed=count) if count >= 3 else [b"only"] * count
    original = spec_encode(payloads)
    path.write_bytes(original)
    with Wal.open(path) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads)
        assert wal.next_lsn == len(original)
        assert wal.recovery.end == len(original)
        assert wal.recovery.discarded_bytes == 0
        more = [b"mmwal one", b"", b"mmwal three" * 20]
        lsns = [wal.append(p) for p in more]
        assert lsns == [lsn for lsn, _ in with_lsns(more, len(original))]
    data = path.read_bytes()
    assert data.startswith(original)
    records, end = spec_decode(data)
    assert records == with_lsns(payloads + more)
    assert data[end:].count(0) == len(data) - end
    with Wal.open(path) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads + more)


def test_waldb_single_file_read_only_store(tmp_path: Path) -> None:
    """wal-db's exact-size file maps read-only without growing."""
    path = tmp_path / "wal-db.log"
    payloads = payloads_for(20, 200, seed=3)
    original = spec_encode(payloads)
    path.write_bytes(original)
    store = FileStore(path, writable=False)
    try:
        assert store.capacity == len(original)
        assert store.read(0, len(original)) == original
    finally:
        store.close()
    with Wal.open(path, readonly=True) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads)
        assert wal.next_lsn == len(original)
        with pytest.raises(WalReadOnlyError):
            wal.append(b"refused")
    assert path.read_bytes() == original


def test_waldb_segments_read_only_leave_the_short_file_alone(tmp_path: Path) -> None:
    directory = tmp_path / "segs"
    payloads = payloads_for(20, 150, seed=4)
    log = spec_encode(payloads)
    paths = spec_write_segments(directory, log, 64)
    sizes = [p.stat().st_size for p in paths]
    assert sizes[-1] < 64
    with Wal.open_segmented(directory, readonly=True) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads)
        with pytest.raises(WalReadOnlyError):
            wal.append(b"refused")
    assert [p.stat().st_size for p in paths] == sizes
    assert spec_read_segments(directory, 64)[0] == log


# -- (b) a wal-db segment directory: the last file short ---------------------------------


@pytest.mark.parametrize(("segment_size", "explicit"), [(64, False), (64, True), (100, False)])
def test_waldb_segments_open_read_and_extend(
    tmp_path: Path, segment_size: int, explicit: bool
) -> None:
    directory = tmp_path / "segs"
    payloads = payloads_for(30, 250, seed=segment_size)
    log = spec_encode(payloads)
    if len(log) % segment_size == 0:
        payloads.append(b"make the last segment short")
        log = spec_encode(payloads)
    paths = spec_write_segments(directory, log, segment_size)
    assert len(paths) >= 3
    assert paths[-1].stat().st_size < segment_size
    assert {p.stat().st_size for p in paths[:-1]} == {segment_size}

    with Wal.open_segmented(directory, segment_size if explicit else None) as wal:
        assert isinstance(wal.store, SegmentStore)
        assert wal.store.segment_size == segment_size
        assert as_pairs(list(wal)) == with_lsns(payloads)
        assert wal.next_lsn == len(log)
        # The short segment was extended to full size with zeros, nothing else changed.
        assert paths[-1].stat().st_size == segment_size
        assert spec_read_segments(directory, segment_size)[0][: len(log)] == log
        more = [b"x" * 10, b"", b"y" * (3 * segment_size)]
        lsns = wal.append_many(more)
        assert lsns == [lsn for lsn, _ in with_lsns(more, len(log))]

    # mmwal's recovery point and its state file for followers lie beside the
    # segments, under names wal-db ignores.
    files = sorted(p.name for p in directory.iterdir() if p.name not in {"recovery", "mmwal-ends"})
    end = len(log) + sum(8 + len(p) for p in more)
    assert files == [spec_segment_name(i) for i in range(-(-end // segment_size))]
    assert {(directory / name).stat().st_size for name in files} == {segment_size}
    data, base = spec_read_segments(directory, segment_size)
    assert base == 0
    records, decoded_end = spec_decode(data)
    assert records == with_lsns(payloads + more)
    assert decoded_end == end
    assert data[end:].count(0) == len(data) - end
    with Wal.open_segmented(directory) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads + more)


def test_waldb_segments_header_split_across_files(tmp_path: Path) -> None:
    """A frame header cut by a segment boundary, and the last segment only a few bytes."""
    directory = tmp_path / "segs"
    # 8 + 50 = 58 bytes: the second header straddles the 64-byte boundary.
    payloads = [b"a" * 50, b"b" * 10, b"c" * 3]
    log = spec_encode(payloads)
    spec_write_segments(directory, log, 64)
    assert len(log) == 58 + 18 + 11
    assert (directory / spec_segment_name(1)).stat().st_size == len(log) - 64
    with Wal.open_segmented(directory) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads)
        assert wal.append(b"d") == len(log)
    records, _ = spec_decode(spec_read_segments(directory, 64)[0])
    assert records == with_lsns([*payloads, b"d"])


def test_waldb_segments_with_an_empty_last_file(tmp_path: Path) -> None:
    directory = tmp_path / "segs"
    payloads = [b"z" * 56, b"q" * 56]
    log = spec_encode(payloads)
    assert len(log) == 128
    spec_write_segments(directory, log, 64)
    (directory / spec_segment_name(2)).write_bytes(b"")
    with Wal.open_segmented(directory, 64) as wal:
        assert as_pairs(list(wal)) == with_lsns(payloads)
        assert wal.append(b"third") == 128
    assert (directory / spec_segment_name(2)).stat().st_size == 64
    records, _ = spec_decode(spec_read_segments(directory, 64)[0])
    assert records == with_lsns([*payloads, b"third"])


# -- (c) what mmwal writes decodes with the spec codec ------------------------------------


def test_mmwal_single_file_decodes_with_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payloads = payloads_for(200, 1000, seed=21)
    with Wal.open(path, WalConfig(max_record_size=1000)) as wal:
        wal.append_many(payloads[:100])
        for payload in payloads[100:]:
            wal.append(payload)
    data = path.read_bytes()
    records, end = spec_decode(data)
    assert records == with_lsns(payloads)
    assert end == sum(8 + len(p) for p in payloads)
    assert data[:end] == spec_encode(payloads)
    assert data[end:].count(0) == len(data) - end


@pytest.mark.parametrize("segment_size", [64, 100, 4096])
def test_mmwal_segments_decode_with_the_spec(tmp_path: Path, segment_size: int) -> None:
    directory = tmp_path / "segs"
    payloads = payloads_for(120, 300, seed=segment_size)
    with Wal.open_segmented(directory, segment_size) as wal:
        lsns = wal.append_many(payloads)
    assert not (directory / "head").exists()
    data, base = spec_read_segments(directory, segment_size)
    assert base == 0
    records, end = spec_decode(data)
    assert records == with_lsns(payloads)
    assert data[:end] == spec_encode(payloads)
    assert data[end:].count(0) == len(data) - end
    assert lsns == [lsn for lsn, _ in records]


@pytest.mark.parametrize("segment_size", [64, 100])
def test_mmwal_segments_after_truncate_before_decode_with_the_spec(
    tmp_path: Path, segment_size: int
) -> None:
    directory = tmp_path / "segs"
    payloads = payloads_for(80, 200, seed=7 + segment_size)
    more = payloads_for(20, 200, seed=8)
    with Wal.open_segmented(directory, segment_size) as wal:
        lsns = wal.append_many(payloads)
        head = lsns[50]
        assert wal.truncate_before(head) == head
        wal.append_many(more)
    assert spec_read_head(directory) == head
    assert (directory / "head").read_bytes() == spec_head_file(head)
    data, base = spec_read_segments(directory, segment_size)
    assert base == head // segment_size * segment_size
    records, end = spec_decode(data, start=head, base=base)
    expected = with_lsns(payloads + more)
    assert records == [r for r in expected if r[0] >= head]
    tail = end - base
    assert data[tail:].count(0) == len(data) - tail


# -- (d) a head file written here ------------------------------------------------------------


@pytest.mark.parametrize("keep_dropped_segments", [False, True])
def test_head_file_written_by_the_spec_starts_iteration(
    tmp_path: Path, keep_dropped_segments: bool
) -> None:
    directory = tmp_path / "segs"
    size = 64
    payloads = payloads_for(40, 150, seed=33)
    log = spec_encode(payloads)
    expected = with_lsns(payloads)
    head = expected[25][0]
    first = 0 if keep_dropped_segments else head // size
    spec_write_segments(directory, log, size, first=first)
    (directory / "head").write_bytes(spec_head_file(head))
    with Wal.open_segmented(directory) as wal:
        assert wal.head_lsn == head
        assert wal.recovery.head == head
        assert as_pairs(list(wal)) == expected[25:]
        assert as_pairs(list(wal.iter())) == expected[25:]
        assert as_pairs(list(wal.iter_from(expected[30][0]))) == expected[30:]
        assert wal.next_lsn == len(log)
        assert wal.append(b"new") == len(log)
    assert spec_read_head(directory) == head
    assert not (directory / spec_segment_name(head // size - 1)).exists()
    data, base = spec_read_segments(directory, size)
    assert base == head // size * size
    records, _ = spec_decode(data, start=head, base=base)
    assert records == [*expected[25:], (len(log), b"new")]
    with Wal.open_segmented(directory, size) as wal:
        assert as_pairs(list(wal)) == [*expected[25:], (len(log), b"new")]


@pytest.mark.parametrize("damage", ["short", "bad-crc", "empty"])
def test_unusable_head_file_means_head_zero(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "segs"
    payloads = payloads_for(20, 100, seed=44)
    log = spec_encode(payloads)
    spec_write_segments(directory, log, 64)
    head_file = spec_head_file(with_lsns(payloads)[10][0])
    if damage == "short":
        head_file = head_file[:11]
    elif damage == "bad-crc":
        head_file = head_file[:8] + bytes([head_file[8] ^ 1]) + head_file[9:]
    else:
        head_file = b""
    (directory / "head").write_bytes(head_file)
    with Wal.open_segmented(directory) as wal:
        assert wal.head_lsn == 0
        assert as_pairs(list(wal)) == with_lsns(payloads)
