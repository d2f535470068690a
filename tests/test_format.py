"""The wal-db 1.x format layer, checked against an independent oracle.

The oracle at the top of this file (a bitwise CRC-32C and a frame encoder and
decoder) is written from the format's text in the design brief and shares no
code with mmwal: if mmwal's framing drifted, both could not drift the same way.
"""

from __future__ import annotations

import mmap
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmwal import Record, _format
from mmwal import _crc as crc_module
from mmwal._format import (
    HEAD_FILE_SIZE,
    HEADER_SIZE,
    Stop,
    decode_batch,
    decode_head_file,
    diagnose,
    encode_frame,
    encode_frames,
    encode_head_file,
    frame_crc,
    frame_size,
    parse_segment_name,
    scan_frames,
    segment_name,
)

# -- the independent oracle ------------------------------------------------------

_POLY_REFLECTED = 0x82F63B78
_MASK = 0xFFFFFFFF


def oracle_crc32c_bitwise(data: bytes, value: int = 0) -> int:
    """CRC-32C, one bit at a time: reflected poly 0x82F63B78, init/xorout 0xFFFFFFFF."""
    crc = value ^ _MASK
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
    return crc ^ _MASK


def _oracle_table() -> list[int]:
    # Derived from the bitwise definition above: the CRC register after feeding
    # one byte into a zero register, without the init and final inversions.
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _oracle_table()


def oracle_crc32c(data: bytes, value: int = 0) -> int:
    """CRC-32C a byte at a time (table derived from the bitwise oracle)."""
    crc = value ^ _MASK
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc ^ _MASK


def oracle_frame(payload: bytes) -> bytes:
    """``crc32c(length_le ++ payload) | length | payload``, little-endian."""
    length = len(payload).to_bytes(4, "little")
    return oracle_crc32c(length + payload).to_bytes(4, "little") + length + payload


def oracle_decode(buf: bytes, max_record_size: int, base: int = 0) -> tuple[list[Record], int]:
    """Return the intact frames from offset 0 and where they end (a log offset)."""
    records: list[Record] = []
    pos = 0
    while pos + 8 <= len(buf):
        crc = int.from_bytes(buf[pos : pos + 4], "little")
        length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if length > max_record_size or pos + 8 + length > len(buf):
            break
        payload = buf[pos + 8 : pos + 8 + length]
        if oracle_crc32c(buf[pos + 4 : pos + 8] + payload) != crc:
            break
        records.append(Record(base + pos, payload))
        pos += 8 + length
    return records, base + pos


def oracle_head_file(head_lsn: int) -> bytes:
    raw = head_lsn.to_bytes(8, "little")
    return raw + oracle_crc32c(raw).to_bytes(4, "little")


def _hardware() -> crc_module.Crc32c:
    backend = crc_module.hardware_crc32c
    assert backend is not None, "the hardware crc32c package must be installed"
    return backend


def _crcmod() -> crc_module.Crc32c:
    backend = crc_module.crcmod_crc32c
    assert backend is not None, "the crcmod package must be installed"
    return backend


def _frames(payloads: list[bytes]) -> tuple[bytes, list[Record]]:
    stream = b""
    records = []
    for payload in payloads:
        records.append(Record(len(stream), payload))
        stream += oracle_frame(payload)
    return stream, records


_PAYLOADS = [b"hello", b"", b"x", bytes(range(256)) * 3, b"\0" * 13, b"\xff" * 7, b"wal-db"]

# -- CRC-32C -----------------------------------------------------------------------


def test_oracle_check_value() -> None:
    assert oracle_crc32c_bitwise(b"123456789") == 0xE3069283
    assert oracle_crc32c(b"123456789") == 0xE3069283


def test_every_backend_has_the_check_value() -> None:
    assert crc_module.CHECK_VALUE == 0xE3069283
    assert crc_module.crc32c(b"123456789") == 0xE3069283
    assert _hardware()(b"123456789") == 0xE3069283
    assert _crcmod()(b"123456789") == 0xE3069283


def test_hardware_backend_is_the_one_in_use() -> None:
    assert crc_module.BACKEND == "crc32c"
    assert crc_module.crc32c is crc_module.hardware_crc32c


def test_crc_of_empty_and_of_zero_bytes() -> None:
    for backend in (_hardware(), _crcmod(), oracle_crc32c_bitwise):
        assert backend(b"") == 0
        assert backend(bytes(4)) == 0x48674BC7


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_backends_agree_with_the_oracle(data: bytes) -> None:
    expected = oracle_crc32c_bitwise(data)
    assert oracle_crc32c(data) == expected
    assert _hardware()(data) == expected
    assert _crcmod()(data) == expected
    assert crc_module.crc32c(data) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=6))
def test_chained_crc_equals_crc_of_the_concatenation(pieces: list[bytes]) -> None:
    whole = oracle_crc32c(b"".join(pieces))
    hardware, crcmod_fun = _hardware(), _crcmod()
    value_hw = value_crcmod = value_oracle = value_mixed = 0
    for index, piece in enumerate(pieces):
        value_hw = hardware(piece, value_hw)
        value_crcmod = crcmod_fun(piece, value_crcmod)
        value_oracle = oracle_crc32c_bitwise(piece, value_oracle)
        # Alternate the backends on one running value: they must be interchangeable.
        value_mixed = (hardware if index % 2 else crcmod_fun)(piece, value_mixed)
    assert value_hw == whole
    assert value_crcmod == whole
    assert value_oracle == whole
    assert value_mixed == whole


def test_backends_accept_memoryview_and_bytearray() -> None:
    data = bytes(range(200))
    expected = oracle_crc32c(data)
    assert _hardware()(memoryview(data)) == expected
    assert _hardware()(bytearray(data)) == expected
    assert _crcmod()(bytearray(data)) == expected


# -- frames ------------------------------------------------------------------------


def test_hello_frame_is_the_published_vector() -> None:
    vector = bytes.fromhex("a1b1174e 05000000 68656c6c6f")
    assert oracle_frame(b"hello") == vector
    assert encode_frame(b"hello") == vector
    assert encode_frames([b"hello"]) == vector
    assert frame_crc(b"hello") == 0x4E17B1A1


def test_empty_payload_frame() -> None:
    frame = encode_frame(b"")
    assert frame == bytes.fromhex("c74b6748 00000000")
    assert frame == oracle_frame(b"")
    assert len(frame) == frame_size(0) == HEADER_SIZE == 8
    scan = scan_frames(frame, 0, len(frame), max_record_size=0)
    assert scan.records == [Record(0, b"")]
    assert scan.end == 8
    assert scan.stop is None


def test_frame_size() -> None:
    assert frame_size(0) == 8
    assert frame_size(5) == 13
    assert frame_size(1 << 20) == (1 << 20) + 8


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_encoders_match_the_oracle(payloads: list[bytes]) -> None:
    stream, records = _frames(payloads)
    assert encode_frames(payloads) == stream
    assert b"".join(encode_frame(p) for p in payloads) == stream
    for payload in payloads:
        assert encode_frame(payload) == oracle_frame(payload)
        expected_crc = int.from_bytes(oracle_frame(payload)[:4], "little")
        assert frame_crc(payload) == expected_crc
        assert frame_crc(bytearray(payload)) == expected_crc
        assert frame_crc(memoryview(payload)) == expected_crc
    scan = scan_frames(stream, 0, len(stream), max_record_size=200)
    assert scan.records == records
    assert scan.end == len(stream)
    assert scan.stop is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.integers(0, 1 << 40))
def test_scan_reports_log_offsets_from_base(payloads: list[bytes], base: int) -> None:
    stream, records = _frames(payloads)
    scan = scan_frames(stream, 0, len(stream), base=base, max_record_size=64)
    assert scan.records == [Record(base + r.lsn, r.data) for r in records]
    assert scan.end == base + len(stream)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "mmap"])
def test_scan_accepts_every_buffer_kind(kind: str) -> None:
    stream, records = _frames(_PAYLOADS)
    buffer: bytes | bytearray | memoryview | mmap.mmap
    if kind == "bytes":
        buffer = stream
    elif kind == "bytearray":
        buffer = bytearray(stream)
    elif kind == "memoryview":
        buffer = memoryview(stream)
    else:
        buffer = mmap.mmap(-1, len(stream) + 100)
        buffer[: len(stream)] = stream
    try:
        scan = scan_frames(buffer, 0, len(buffer), max_record_size=1 << 10)
        assert scan.records == records
        assert all(type(r.data) is bytes for r in scan.records)
        assert scan.end == len(stream)
        expected_stop = None if kind != "mmap" else Stop.ZERO_HEADER
        assert scan.stop is expected_stop
        quiet = scan_frames(buffer, 0, len(buffer), max_record_size=1 << 10, collect=False)
        assert quiet.records == []
        assert quiet.end == len(stream)
    finally:
        if isinstance(buffer, mmap.mmap):
            buffer.close()


def test_scan_starts_midway_and_bounds_records() -> None:
    stream, records = _frames(_PAYLOADS)
    second = records[1].lsn
    scan = scan_frames(stream, second, len(stream), max_record_size=1 << 10)
    assert scan.records == records[1:]
    bounded = scan_frames(stream, 0, len(stream), max_record_size=1 << 10, max_records=2)
    assert bounded.records == records[:2]
    assert bounded.end == records[2].lsn
    assert bounded.stop is None

    # The same bound without collecting: exactly max_records frames are checked.
    for bound in (1, 2, 3):
        quiet = scan_frames(
            stream, 0, len(stream), max_record_size=1 << 10, collect=False, max_records=bound
        )
        assert (quiet.end, quiet.stop) == (records[bound].lsn, None)


@pytest.mark.parametrize("collect", [True, False])
def test_a_record_of_exactly_max_record_size_is_a_record(collect: bool) -> None:
    payload = b"m" * 40
    stream = encode_frames([payload, b"after"])
    scan = scan_frames(stream, 0, len(stream), max_record_size=40, collect=collect)
    assert scan.end == len(stream)
    assert scan.stop is None
    tight = scan_frames(stream, 0, len(stream), max_record_size=39, collect=collect)
    assert (tight.end, tight.stop, tight.length) == (0, Stop.BAD_LENGTH, 40)


# -- the end of a log: zeros, garbage, truncation -----------------------------------------


@pytest.mark.parametrize("size", [8, 9, 15, 16, 4096])
@pytest.mark.parametrize("max_record_size", [0, 1, 4096, 0xFFFFFFFF])
def test_all_zero_header_is_never_a_record(size: int, max_record_size: int) -> None:
    zeros = bytes(size)
    scan = scan_frames(zeros, 0, size, max_record_size=max_record_size)
    assert scan.records == []
    assert scan.end == 0
    assert scan.stop is Stop.ZERO_HEADER
    assert oracle_decode(zeros, max_record_size) == ([], 0)


def test_zero_tail_ends_the_log() -> None:
    stream, records = _frames(_PAYLOADS)
    scan = scan_frames(stream + bytes(1000), 0, len(stream) + 1000, max_record_size=1 << 10)
    assert scan.records == records
    assert scan.end == len(stream)
    assert scan.stop is Stop.ZERO_HEADER


def _garbage_kinds() -> list[tuple[str, bytes]]:
    rng = random.Random(7)
    bad_crc = bytearray(oracle_frame(b"payload"))
    bad_crc[0] ^= 0x01
    bad_payload = bytearray(oracle_frame(b"payload"))
    bad_payload[-1] ^= 0x80
    bad_length = bytearray(oracle_frame(b"payload"))
    bad_length[4] += 1
    return [
        ("ones", b"\xff" * 40),
        ("bad-crc", bytes(bad_crc)),
        ("bad-payload", bytes(bad_payload)),
        ("bad-length", bytes(bad_length) + b"\0" * 8),
        ("random", bytes(rng.randrange(256) for _ in range(64))),
        ("short-header", b"\x01\x02\x03"),
        ("claims-more", (7).to_bytes(4, "little") + (100).to_bytes(4, "little") + b"abc"),
    ]


@pytest.mark.parametrize(("name", "garbage"), _garbage_kinds())
def test_trailing_garbage_leaves_the_intact_prefix(name: str, garbage: bytes) -> None:
    stream, records = _frames(_PAYLOADS)
    buf = stream + garbage
    assert oracle_decode(buf, 1 << 10) == (records, len(stream)), name
    scan = scan_frames(buf, 0, len(buf), max_record_size=1 << 10)
    assert scan.records == records
    assert scan.end == len(stream)
    assert scan.stop is not None
    assert scan_frames(buf, 0, len(buf), max_record_size=1 << 10, collect=False).end == len(stream)


def test_garbage_stop_reasons() -> None:
    stream, _ = _frames([b"a"])
    cases = {
        Stop.BAD_CRC: dict(_garbage_kinds())["bad-crc"],
        Stop.BAD_LENGTH: b"\xff" * 16,
        Stop.SHORT_HEADER: b"\x01\x02\x03",
        Stop.SHORT_PAYLOAD: dict(_garbage_kinds())["claims-more"],
    }
    for stop, garbage in cases.items():
        buf = stream + garbage
        scan = scan_frames(buf, 0, len(buf), max_record_size=1 << 10)
        assert scan.stop is stop
        assert scan.end == len(stream)


def test_every_truncation_point_gives_the_intact_prefix() -> None:
    stream, records = _frames(_PAYLOADS)
    ends = [r.lsn + 8 + len(r.data) for r in records]
    for cut in range(len(stream) + 1):
        intact = [r for r, end in zip(records, ends, strict=True) if end <= cut]
        intact_end = max([0, *(end for end in ends if end <= cut)])
        for collect in (True, False):
            scan = scan_frames(stream[:cut], 0, cut, max_record_size=1 << 10, collect=collect)
            assert scan.records == (intact if collect else [])
            assert scan.end == intact_end, cut
            if cut == intact_end:
                assert scan.stop is None
            else:
                assert scan.stop in (Stop.SHORT_HEADER, Stop.SHORT_PAYLOAD)
        # The limit bounds the scan just as the buffer's end does.
        assert scan_frames(stream, 0, cut, max_record_size=1 << 10).records == intact


def test_every_torn_write_into_zeros_gives_a_prefix() -> None:
    """A frame cut short and followed by preallocated zeros never reads as more than was written."""
    stream, records = _frames(_PAYLOADS)
    for cut in range(len(stream) + 1):
        buf = stream[:cut] + bytes(len(stream) - cut + 16)
        expected, expected_end = oracle_decode(buf, 1 << 10)
        scan = scan_frames(buf, 0, len(buf), max_record_size=1 << 10)
        assert scan.records == expected
        assert scan.end == expected_end
        assert scan.records == records[: len(scan.records)]
        whole = sum(1 for r in records if r.lsn + 8 + len(r.data) <= cut)
        assert len(scan.records) >= whole


def test_implausible_length_stops_without_allocating() -> None:
    header = (0x12345678).to_bytes(4, "little") + (0xFFFFFFF0).to_bytes(4, "little")
    buf = header + b"tail"
    tracemalloc.start()
    try:
        scan = scan_frames(buf, 0, len(buf), max_record_size=1 << 20)
        plausible = scan_frames(buf, 0, len(buf), max_record_size=0xFFFFFFFF)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.stop is Stop.BAD_LENGTH
    assert scan.length == 0xFFFFFFF0
    assert scan.end == 0
    assert scan.records == []
    # A length the limit allows but the buffer cannot hold is short, not read.
    assert plausible.stop is Stop.SHORT_PAYLOAD
    assert plausible.end == 0
    assert peak < 1 << 20


def test_length_limit_is_inclusive() -> None:
    stream, records = _frames([b"abcd"])
    assert scan_frames(stream, 0, len(stream), max_record_size=4).records == records
    over = scan_frames(stream, 0, len(stream), max_record_size=3)
    assert over.records == []
    assert over.stop is Stop.BAD_LENGTH
    assert over.length == 4


# -- head file -----------------------------------------------------------------------


@pytest.mark.parametrize("head_lsn", [0, 1, 64, 4096, 1 << 32, (1 << 64) - 1])
def test_head_file_matches_the_oracle(head_lsn: int) -> None:
    data = encode_head_file(head_lsn)
    assert len(data) == HEAD_FILE_SIZE == 12
    assert data == oracle_head_file(head_lsn)
    assert decode_head_file(data) == head_lsn
    assert decode_head_file(oracle_head_file(head_lsn)) == head_lsn


@settings(max_examples=100, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_head_file_round_trips(head_lsn: int) -> None:
    assert decode_head_file(oracle_head_file(head_lsn)) == head_lsn
    assert encode_head_file(head_lsn) == oracle_head_file(head_lsn)


def test_short_head_file_means_zero() -> None:
    data = oracle_head_file(4096)
    for length in range(HEAD_FILE_SIZE):
        assert decode_head_file(data[:length]) == 0


def test_bad_crc_head_file_means_zero() -> None:
    data = oracle_head_file(4096)
    for bit in range(HEAD_FILE_SIZE * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        assert decode_head_file(bytes(damaged)) == 0, bit


def test_head_file_with_trailing_bytes_decodes() -> None:
    assert decode_head_file(oracle_head_file(777) + b"\xff\xff") == 777
    assert decode_head_file(bytes(12)) == 0


# -- segment names ---------------------------------------------------------------------


def test_segment_name() -> None:
    assert segment_name(0) == "00000000000000000000.wal"
    assert segment_name(1) == "00000000000000000001.wal"
    assert segment_name(12345) == "00000000000000012345.wal"
    assert segment_name((1 << 64) - 1) == "18446744073709551615.wal"
    with pytest.raises(ValueError, match="-1"):
        segment_name(-1)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_segment_name_round_trips(index: int) -> None:
    name = segment_name(index)
    assert name == f"{index:020d}.wal"
    assert len(name) == 24
    assert parse_segment_name(name) == index


@pytest.mark.parametrize(
    "name",
    [
        "head",
        "head.tmp",
        "",
        ".wal",
        "00000000000000000000",
        "0000000000000000000.wal",
        "000000000000000000000.wal",
        "00000000000000000000.WAL",
        "00000000000000000000.wal.tmp",
        "00000000000000000000.wal~",
        "00000000000000000000.wal.wal",
        "x00000000000000000000.wal",
        "0000000000000000000a.wal",
        "+0000000000000000001.wal",
        "-0000000000000000001.wal",
        " 0000000000000000001.wal",
        "0000000000_000000001.wal",
        "\u0660" * 20 + ".wal",
        "\u00b2" + "0" * 19 + ".wal",
        "00000000000000000000.log",
    ],
)
def test_parse_segment_name_rejects_other_names(name: str) -> None:
    assert parse_segment_name(name) is None


# -- why a walk stopped, and the bounds of one batch ----------------------------------


def test_diagnose_says_why_and_the_length_it_read() -> None:
    frame = encode_frame(b"payload")
    assert diagnose(frame[:5], 0, 5, 100) == (Stop.SHORT_HEADER, 0)
    assert diagnose(bytes(16), 0, 16, 100) == (Stop.ZERO_HEADER, 0)
    assert diagnose(frame, 0, len(frame) - 1, 100) == (Stop.SHORT_PAYLOAD, 7)
    assert diagnose(frame, 0, len(frame), 6) == (Stop.BAD_LENGTH, 7)
    # A zero CRC alone, or a zero length alone, is damage, not the end of the log.
    zero_crc = bytes(4) + frame[4:]
    assert diagnose(zero_crc, 0, len(zero_crc), 100) == (Stop.BAD_CRC, 7)
    empty_bad = b"\x01\x00\x00\x00" + bytes(4)
    assert diagnose(empty_bad, 0, 8, 100) == (Stop.BAD_CRC, 0)
    for collect in (True, False):
        short = scan_frames(frame + frame[:5], 0, len(frame) + 5, max_record_size=100)
        assert (short.end, short.stop, short.length) == (len(frame), Stop.SHORT_HEADER, 0)
        whole = scan_frames(frame, 0, len(frame), max_record_size=100, collect=collect)
        assert (whole.end, whole.stop, whole.length) == (len(frame), None, 0)
        bounded = scan_frames(
            frame * 2, 0, 2 * len(frame), max_record_size=100, collect=collect, max_records=1
        )
        assert (bounded.end, bounded.stop, bounded.length) == (len(frame), None, 0)


def test_decode_batch_bounds_and_base() -> None:
    stream, records = _frames(_PAYLOADS)
    got, end = decode_batch(stream, 0, len(stream), max_record_size=1 << 10, max_records=-1)
    assert (got, end) == (records, len(stream))  # base 0: LSNs are buffer offsets
    first = records[1].lsn  # the size of the first frame
    for max_bytes, count in ((1, 1), (first, 1), (first + 1, 2), (0, 0)):
        got, end = decode_batch(
            stream,
            0,
            len(stream),
            max_record_size=1 << 10,
            max_records=-1,
            max_bytes=max_bytes,
        )
        assert got == records[:count], max_bytes
        assert end == (records[count].lsn if count else 0)
    shifted, end = decode_batch(
        stream, 0, len(stream), base=1000, max_record_size=1 << 10, max_records=2
    )
    assert shifted == [Record(1000 + r.lsn, r.data) for r in records[:2]]
    assert end == 1000 + records[2].lsn


def test_the_python_encoder_frames_lengths_it_has_not_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Python encoder caches the CRC state after each length; a cold cache frames right."""
    monkeypatch.setattr(_format, "_length_crc", {})
    for payload in (b"", b"cold", bytes(range(200))):
        expected = oracle_frame(payload)
        assert _format._encode_frame_python(payload) == expected
        assert _format._encode_frame_python(payload) == expected  # warm now
        assert _format._encode_frames_python([payload, payload]) == expected * 2
