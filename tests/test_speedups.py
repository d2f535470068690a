"""The C frame walk (``mmwal._speedups``) gives exactly what the Python reference gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import crc32c as crc32c_package
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmwal import _format
from mmwal._format import Record, encode_frames

speedups = pytest.importorskip("mmwal._speedups", reason="the C extension is not built here")

LIMITS = st.sampled_from([0, 1, 7, 64, 300, 1 << 20])


def _python_walk(buf: bytes, start: int, limit: int, base: int, max_size: int) -> object:
    return _format._decode_batch_python(buf, start, limit, base, max_size, -1)


def _c_walk(buf: bytes, start: int, limit: int, base: int, max_size: int) -> object:
    records, stop, walked = speedups.scan(buf, start, limit, base, max_size, Record, -1, -1)
    assert records is not None
    assert walked == len(records)
    return records, base + stop


@st.composite
def logs(draw: st.DrawFn) -> bytes:
    payloads = draw(st.lists(st.binary(max_size=80), max_size=12))
    image = bytearray(encode_frames(payloads))
    for _ in range(draw(st.integers(0, 3))):
        if image:
            at = draw(st.integers(0, len(image) - 1))
            image[at] = draw(st.integers(0, 255))
    return bytes(image) + draw(st.binary(max_size=20))


@given(logs(), st.integers(0, 40), st.integers(0, 2000), LIMITS, st.integers(0, 1 << 40))
@settings(max_examples=400, deadline=None)
def test_the_c_walk_matches_the_python_walk(
    image: bytes, start: int, limit: int, max_size: int, base: int
) -> None:
    limit = min(limit, len(image))
    start = min(start, limit)
    assert _c_walk(image, start, limit, base, max_size) == _python_walk(
        image, start, limit, base, max_size
    )
    view = memoryview(image)
    python_stop, python_checked = _format._verify_python(view, start, limit, max_size, -1)
    _, c_stop, c_walked = speedups.scan(view, start, limit, 0, max_size, None, -1, -1)
    assert (c_stop, c_walked) == (python_stop, python_checked)


@given(st.binary(max_size=300), st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_walk_as_in_python(image: bytes, tail: bytes) -> None:
    data = image + tail
    assert _c_walk(data, 0, len(data), 0, 1 << 30) == _python_walk(data, 0, len(data), 0, 1 << 30)


HOSTILE_WALK = Path(__file__).with_name("hostile_walk.py")


def test_hostile_bytes_never_read_past_the_buffer() -> None:
    """Every hostile sample ends flush against a PROT_NONE page: an over-read faults.

    In a subprocess, so a fault fails this test instead of killing pytest. (Checked
    by hand: a build whose length check lets a frame claim one byte more than the
    buffer holds dies with SIGSEGV here.)
    """
    done = subprocess.run(
        [sys.executable, str(HOSTILE_WALK)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout.split()[0]) > 10_000


def test_the_guard_page_faults() -> None:
    """The harness can fail: reading the byte after a guarded buffer kills the process."""
    probe = (
        "import ctypes, sys; sys.path.insert(0, sys.argv[1]); import hostile_walk as h; "
        "m, offset = h.guarded(b'x' * 100); "
        "address = ctypes.addressof(ctypes.c_char.from_buffer(m)); "
        "ctypes.string_at(address + offset + 99, 1); print('inside', flush=True); "
        "ctypes.string_at(address + offset + 100, 1); print('past')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(HOSTILE_WALK.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout == "inside\n"
    assert done.returncode == -signal.SIGSEGV


def test_max_records_bounds_the_walk() -> None:
    image = encode_frames([b"a", b"bb", b"ccc"])
    records, stop, walked = speedups.scan(image, 0, len(image), 0, 100, Record, 2, -1)
    assert records == [Record(0, b"a"), Record(9, b"bb")]
    assert (stop, walked) == (19, 2)


@given(logs(), st.integers(1, 5), st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_bounded_batches_match(image: bytes, max_records: int, max_bytes: int) -> None:
    python = _format._decode_batch_python(image, 0, len(image), 0, 100, max_records, max_bytes)
    records, stop, _ = speedups.scan(image, 0, len(image), 0, 100, Record, max_records, max_bytes)
    assert (records, stop) == python


def test_a_limit_beyond_the_buffer_is_clipped() -> None:
    image = encode_frames([b"abc"])
    records, stop, _ = speedups.scan(image, 0, 10**9, 0, 100, Record, -1, -1)
    assert records == [Record(0, b"abc")]
    assert stop == len(image)


def test_record_type_must_be_a_tuple_subclass() -> None:
    with pytest.raises(TypeError):
        speedups.scan(b"", 0, 0, 0, 0, dict, -1, -1)


@given(st.binary(max_size=5000), st.integers(0, 0xFFFFFFFF))
@settings(max_examples=300, deadline=None)
def test_the_c_crc_matches_the_crc32c_package(data: bytes, value: int) -> None:
    assert speedups.crc32c(data) == crc32c_package.crc32c(data)
    assert speedups.crc32c(data, value) == crc32c_package.crc32c(data, value)


def test_pure_python_can_be_forced(tmp_path: Path) -> None:
    script = (
        "import mmwal, sys\n"
        "from mmwal import _format\n"
        "assert not _format.SPEEDUPS\n"
        "with mmwal.open(sys.argv[1]) as wal:\n"
        "    wal.append_many([b'one', b'two'])\n"
        "with mmwal.open(sys.argv[1]) as wal:\n"
        "    print([r.data for r in wal])\n"
    )
    environment = {**os.environ, "MMWAL_PURE_PYTHON": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a.wal")],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[b'one', b'two']"


@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=300, deadline=None)
def test_the_c_encoders_match_the_python_encoders(payloads: list[bytes]) -> None:
    assert speedups.encode_frames(payloads) == _format._encode_frames_python(payloads)
    for payload in payloads:
        assert speedups.encode_frame(payload) == _format._encode_frame_python(payload)


def test_the_c_encoders_take_only_bytes() -> None:
    with pytest.raises(TypeError):
        speedups.encode_frame(bytearray(b"x"))
    with pytest.raises(TypeError):
        speedups.encode_frames([b"ok", "text"])
    with pytest.raises(TypeError):
        speedups.encode_frames((b"a",))


def _as_lists(result: tuple[bytes, bytes, bytes, int]) -> tuple[list[int], ...]:
    lsns, offsets, lengths, stop = result
    return (
        memoryview(lsns).cast("q").tolist(),
        memoryview(offsets).cast("q").tolist(),
        memoryview(lengths).cast("q").tolist(),
        [stop],
    )


@given(
    logs(),
    st.integers(0, 40),
    st.integers(0, 2000),
    LIMITS,
    st.integers(0, 1 << 40),
    st.integers(-1, 5),
    st.integers(-1, 300),
)
@settings(max_examples=400, deadline=None)
def test_the_c_offsets_walk_matches_its_python_twin_and_the_record_walk(  # noqa: PLR0917
    image: bytes,
    start: int,
    limit: int,
    max_size: int,
    base: int,
    max_records: int,
    max_bytes: int,
) -> None:
    limit = min(limit, len(image))
    start = min(start, limit)
    arguments = (image, start, limit, base, max_size, max_records, max_bytes)
    c_walk = _as_lists(speedups.frames(*arguments))
    assert c_walk == _as_lists(_format._walk_frames_python(*arguments))
    records, stop, _ = speedups.scan(
        image, start, limit, base, max_size, Record, max_records, max_bytes
    )
    assert records is not None
    assert c_walk[0] == [record.lsn for record in records]
    assert c_walk[3] == [stop]
    assert [
        image[offset : offset + length] for offset, length in zip(c_walk[1], c_walk[2], strict=True)
    ] == [record.data for record in records]


def test_the_offsets_walk_grows_past_its_first_allocation() -> None:
    image = encode_frames([b""] * 5000 + [b"last"])
    lsns, offsets, lengths, stop = speedups.frames(image, 0, len(image), 7, 100, -1, -1)
    assert memoryview(lsns).cast("q").tolist() == [7 + 8 * i for i in range(5001)]
    assert memoryview(lengths).cast("q").tolist() == [0] * 5000 + [4]
    assert memoryview(offsets).cast("q")[-1] == 8 * 5000 + 8
    assert stop == len(image)


# -- the three-stream CRC ---------------------------------------------------------------

# Lengths around the interleaved blocks (3 x 64, 3 x 256, 3 x 1024 and 3 x 8192 bytes) and their
# multiples: a wrong shift table or an off-by-one block split shows up here.
_CRC_EDGES = sorted(
    {
        n + d
        for n in (
            *(0, 8, 192, 192 + 768, 768, 1536, 2304, 3072, 3072 + 768 + 192, 4100, 6144),
            *(24576, 49152, 24576 + 3072, 24576 + 768, 100_000),
        )
        for d in (-9, -8, -1, 0, 1, 7, 8, 9)
        if n + d >= 0
    }
)


@pytest.mark.parametrize("length", _CRC_EDGES)
def test_the_c_crc_matches_at_the_interleaving_edges(length: int) -> None:
    data = os.urandom(length + 7)
    for skew in range(8):  # every alignment of the first byte
        part = memoryview(data)[skew : skew + length]
        assert speedups.crc32c(part) == crc32c_package.crc32c(part)
        assert speedups.crc32c(part, 0xDEADBEEF) == crc32c_package.crc32c(part, 0xDEADBEEF)


@given(st.integers(0, 70_000), st.integers(0, 0xFFFFFFFF), st.integers(0, 7))
@settings(max_examples=200, deadline=None)
def test_the_c_crc_matches_on_long_random_inputs(length: int, value: int, skew: int) -> None:
    data = memoryview(os.urandom(length + skew))[skew:]
    assert speedups.crc32c(data, value) == crc32c_package.crc32c(data, value)
    # Continuing from a split point gives the CRC of the whole.
    half = length // 3
    assert speedups.crc32c(data[half:], speedups.crc32c(data[:half])) == speedups.crc32c(data)
