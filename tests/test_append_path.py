"""The append path: the C fast path (``_appendpath.c``) against the Python one (``_appending``).

A writer's ``wal.append`` and ``wal.append_many`` are bound to the C ``Appender``
when the extension is built; ``Wal.append(wal, ...)`` (the class's function) is
always the Python reference. Tests that compare the two skip on a pure-Python
run; the rest (the model comparison, errors, refusals, close and truncation
after appends) run on whichever path is active, so ``MMWAL_PURE_PYTHON=1``
covers the twin.
"""

from __future__ import annotations

import gc
import inspect
import mmap
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmwal
from mmwal import MemStore, RecordTooLargeError, Wal, WalBrokenError, WalClosedError, WalConfig
from mmwal._format import SPEEDUPS
from mmwal._reservations import INLINE_COPY_LIMIT
from mmwal._store import Buffer

if TYPE_CHECKING:
    from mmwal._speedups import Appender

needs_c = pytest.mark.skipif(not SPEEDUPS, reason="compares the C append path with Python's")

# -- an independent model of the frame format (shares no code with mmwal) ----------


def _model_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _model_table()


def model_crc(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def model_log(payloads: list[bytes]) -> bytes:
    """The bytes of a log holding ``payloads``: CRC-32C of length + payload, length, payload."""
    out = bytearray()
    for payload in payloads:
        length = struct.pack("<I", len(payload))
        out += struct.pack("<I", model_crc(length + payload)) + length + payload
    return bytes(out)


def test_the_model_encodes_the_published_vector() -> None:
    # Catches: a model as wrong as the code it judges (docs/FORMAT.md's vector).
    assert model_crc(b"123456789") == 0xE3069283


# -- inputs of every accepted kind ---------------------------------------------------


class BytesSubclass(bytes):
    pass


KINDS = ["bytes", "bytearray", "memoryview", "strided", "matrix", "mmap", "subclass"]


def _strided(payload: bytes) -> memoryview:
    # Not contiguous: every other byte of a buffer twice as long.
    doubled = bytearray(2 * len(payload))
    doubled[::2] = payload
    return memoryview(bytes(doubled))[::2]


def _matrix(payload: bytes) -> Buffer:
    # Contiguous, two-dimensional, not bytes: its buffer is its bytes in C order.
    if len(payload) % 2 or not payload:
        return payload
    return memoryview(payload).cast("B", shape=[2, len(payload) // 2])


def as_kind(kind: str, payload: bytes, keep: list[mmap.mmap]) -> Buffer:
    """Return ``payload`` as an input of ``kind`` (its logical bytes are ``payload``)."""
    if kind == "mmap" and payload:
        region = mmap.mmap(-1, len(payload))
        region[:] = payload
        keep.append(region)
        return region
    builders: dict[str, Callable[[bytes], Buffer]] = {
        "bytearray": bytearray,
        "memoryview": memoryview,
        "strided": _strided,
        "matrix": _matrix,
        "subclass": BytesSubclass,
    }
    return builders.get(kind, bytes)(payload)


def log_bytes(wal: Wal) -> bytes:
    return wal.store.read(wal.head_lsn, wal.next_lsn - wal.head_lsn)


def segmented(path: Path, segment_size: int, config: WalConfig | None = None) -> Wal:
    return Wal.open_segmented(path, segment_size, config)


def python_append(wal: Wal) -> Callable[[object], int]:
    """The Python reference path of ``wal`` (the class's function, not the C binding)."""
    return lambda data: Wal.append(wal, data)  # type: ignore[arg-type]


# -- the C path writes what the Python path writes -----------------------------------


@needs_c
def test_a_writer_is_bound_to_the_c_path(tmp_path: Path) -> None:
    # Catches: the C path silently not wired in (every append in Python, the
    # benchmarks measuring the fallback).
    with segmented(tmp_path / "log", 4096) as wal:
        assert type(wal.append).__name__ == "builtin_function_or_method"
        assert type(wal.append_many).__name__ == "builtin_function_or_method"


@needs_c
@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind_writes_the_same_log_as_python(tmp_path: Path, kind: str) -> None:
    # Catches: a kind copied from the wrong place or length (a strided view's
    # underlying buffer, a matrix's shape, an mmap's whole mapping), or a frame
    # the C path builds differently; sizes cross segment ends (rolls).
    sizes = [0, 1, 7, 8, 100, 255, 256, 1000, 4000, 4096, 5000, 9, 2]
    payloads = [bytes((i * 7 + n) % 256 for i in range(n)) for n in sizes]
    keep: list[mmap.mmap] = []
    with segmented(tmp_path / "c", 4096) as fast, segmented(tmp_path / "py", 4096) as slow:
        reference = python_append(slow)
        for payload in payloads:
            assert fast.append(as_kind(kind, payload, keep)) == reference(payload)
        assert fast.append_many([as_kind(kind, p, keep) for p in payloads]) == Wal.append_many(
            slow, payloads
        )
        assert log_bytes(fast) == log_bytes(slow) == model_log(payloads + payloads)
    for region in keep:
        region.close()


@needs_c
@pytest.mark.parametrize(
    "length", [INLINE_COPY_LIMIT - 1, INLINE_COPY_LIMIT, INLINE_COPY_LIMIT + 1]
)
def test_records_at_the_inline_copy_limit_match_python(tmp_path: Path, length: int) -> None:
    # Catches: the C path taking a record its fast path must leave to place (not
    # below INLINE_COPY_LIMIT), or getting the frame of one it takes wrong.
    payload = bytes(i % 251 for i in range(length))
    segment = 1 << 20
    with segmented(tmp_path / "c", segment) as fast, segmented(tmp_path / "py", segment) as slow:
        for _ in range(3):
            assert fast.append(bytearray(payload)) == Wal.append(slow, payload)
        assert log_bytes(fast) == log_bytes(slow)


# -- where the fast path stops (an Appender whose fallbacks record what they get) ----


class Declined:
    """Fallbacks that record what the fast path declined and append nothing."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def one(self, data: object) -> int:
        self.calls.append(data)
        return -1

    def many(self, records: object) -> list[int]:
        self.calls.append(records)
        return []


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[tuple[Wal, Appender, Declined]]:
    if not SPEEDUPS:
        pytest.skip("drives the C Appender")
    from mmwal._speedups import Appender

    wal = segmented(tmp_path / "log", 1 << 20, WalConfig(max_record_size=100_000))
    wal.append(b"first")  # the slow path maps the piece and opens the fast path
    declined = Declined()
    appender = Appender(wal._reservations, 100_000, INLINE_COPY_LIMIT, declined.one, declined.many)
    yield wal, appender, declined
    wal.close()


def test_a_frame_ending_exactly_at_fast_limit_takes_the_fast_path(
    recording: tuple[Wal, Appender, Declined],
) -> None:
    # Catches: `<` for `<=` (a frame that fits exactly sent to the slow path) and
    # `<=` for `<` the other way (one byte past it copied anyway).
    wal, appender, declined = recording
    reservations = wal._reservations
    start = reservations.next_lsn
    reservations.fast_limit = start + 8 + 10 - 1
    assert appender.append(b"0123456789") == -1
    assert declined.calls == [b"0123456789"]
    assert reservations.next_lsn == start
    reservations.fast_limit = start + 8 + 10
    assert appender.append(b"0123456789") == start
    assert reservations.next_lsn == start + 18
    assert len(declined.calls) == 1
    assert wal.store.read(start, 18) == model_log([b"0123456789"])


def test_a_zero_fast_limit_always_takes_the_slow_path(
    recording: tuple[Wal, Appender, Declined],
) -> None:
    # Catches: a fast path that trusts the piece instead of fast_limit (a broken,
    # closing or just truncated log keeps its piece; only fast_limit says no).
    wal, appender, declined = recording
    reservations = wal._reservations
    reservations.fast_limit = 0
    start = reservations.next_lsn
    appender.append(b"x")
    appender.append_many([b"y", b"z"])
    assert declined.calls == [b"x", [b"y", b"z"]]
    assert reservations.next_lsn == start


def test_a_fast_limit_past_the_piece_never_writes_past_it(
    recording: tuple[Wal, Appender, Declined],
) -> None:
    # Catches: a copy bounded by fast_limit alone, so a wrong fast_limit writes
    # past the mapping (a crash, or another segment's bytes) instead of declining.
    wal, appender, declined = recording
    reservations = wal._reservations
    piece_end = reservations.piece_base + len(reservations.piece)
    reservations.next_lsn = piece_end - 4
    reservations.fast_limit = piece_end + 100
    appender.append(b"too long for the rest")
    assert declined.calls == [b"too long for the rest"]
    assert reservations.next_lsn == piece_end - 4


def test_the_inline_copy_limit_and_max_record_size_go_to_the_slow_path(
    recording: tuple[Wal, Appender, Declined],
) -> None:
    # Catches: a large record copied under the lock by the C path, or one over
    # max_record_size written instead of refused (the fallback raises it).
    wal, appender, declined = recording
    start = wal._reservations.next_lsn
    appender.append(bytes(INLINE_COPY_LIMIT - 1))
    assert declined.calls == []
    appender.append(bytes(INLINE_COPY_LIMIT))
    appender.append_many([b"ok", bytes(100_001)])
    assert len(declined.calls) == 2
    assert wal._reservations.next_lsn == start + 8 + INLINE_COPY_LIMIT - 1


def test_a_payload_read_from_its_own_destination_is_copied_by_python(
    recording: tuple[Wal, Appender, Declined],
) -> None:
    # Catches: a copy from a view of the piece over the frame's own bytes: the
    # header written first clobbers the payload before it is copied (a frame
    # whose CRC does not match, or undefined memcpy overlap).
    wal, appender, declined = recording
    reservations = wal._reservations
    offset = reservations.next_lsn - reservations.piece_base
    with memoryview(reservations.piece)[offset : offset + 16] as view:
        appender.append(view)
        assert declined.calls == [view]
        declined.calls.clear()


def test_the_real_fallback_copies_an_overlapping_payload_correctly(tmp_path: Path) -> None:
    # Catches: the same overlap on the real path: the record must read back as
    # the 16 bytes the view held when append was called (zeros past the end).
    with segmented(tmp_path / "log", 1 << 20) as wal:
        wal.append(b"first")
        reservations = wal._reservations
        offset = reservations.next_lsn - reservations.piece_base
        with memoryview(reservations.piece)[offset : offset + 16] as view:
            lsn = wal.append(view)
        assert [record.data for record in wal.iter(lsn)] == [bytes(16)]


# -- the model, over any mix of kinds, sizes, rolls and batches ----------------------

PAYLOAD = st.binary(max_size=300)
STEP = st.tuples(
    st.sampled_from(["one", "many"]),
    st.lists(st.tuples(st.sampled_from(KINDS), PAYLOAD), min_size=0, max_size=6),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, max_size=12))
def test_any_appends_write_the_models_log(steps: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
    # Catches: any frame, LSN or batch the active path (C, or Python on a pure
    # run) gets wrong against a format encoder that shares no code with mmwal,
    # across 1 KiB chunks (frames straddle them).
    keep: list[mmap.mmap] = []
    appended: list[bytes] = []
    lsns: list[int] = []
    with Wal.with_store(MemStore(1024)) as wal:
        for how, items in steps:
            if how == "one":
                for kind, payload in items:
                    lsns.append(wal.append(as_kind(kind, payload, keep)))
                    appended.append(payload)
            else:
                lsns += wal.append_many([as_kind(kind, p, keep) for kind, p in items])
                appended += [payload for _, payload in items]
        expected = model_log(appended)
        assert log_bytes(wal) == expected
        starts, position = [], 0
        for payload in appended:
            starts.append(position)
            position += 8 + len(payload)
        assert lsns == starts
        assert wal.stats().appends == len(appended)
    for region in keep:
        region.close()


# -- errors are those of the Python path, and change nothing -------------------------

LIMIT = 1000

BAD_RECORDS: list[object] = [
    "text",
    42,
    None,
    [b"x"],
    bytes(LIMIT + 1),
    bytearray(LIMIT + 1),
    memoryview(bytes(2 * LIMIT + 2))[::2],
]
BAD_BATCHES: list[object] = [
    "text",
    b"one record",
    bytearray(b"one"),
    memoryview(b"one"),
    5,
    [b"ok", "bad"],
    [b"ok", bytes(LIMIT + 1)],
    [bytes(LIMIT + 1), 7],
    (item for item in [b"a", 1]),
]


def outcome(call: Callable[[], object]) -> tuple[type[BaseException], str, tuple[object, ...]]:
    with pytest.raises(Exception) as raised:
        call()
    error = raised.value
    return type(error), str(error), error.args


@pytest.mark.parametrize("bad", BAD_RECORDS, ids=repr)
def test_a_bad_record_raises_what_python_raises_and_appends_nothing(
    tmp_path: Path, bad: object
) -> None:
    # Catches: the C path raising its own error type or message (no str hint, a
    # plain ValueError for a record too large), or appending before refusing.
    config = WalConfig(max_record_size=LIMIT)
    with (
        segmented(tmp_path / "c", 4096, config) as fast,
        segmented(tmp_path / "py", 4096, config) as slow,
    ):
        fast.append(b"before")
        slow.append(b"before")
        got = outcome(lambda: fast.append(bad))  # type: ignore[arg-type]
        assert got == outcome(lambda: Wal.append(slow, bad))  # type: ignore[arg-type]
        assert fast.next_lsn == slow.next_lsn == 14
    if isinstance(bad, bytes) and len(bad) > LIMIT:
        assert got[0] is RecordTooLargeError
    if bad == "text":
        assert "hint: encode text first" in got[1]


@pytest.mark.parametrize("bad", range(len(BAD_BATCHES)))
def test_a_bad_batch_raises_what_python_raises_and_appends_none_of_it(
    tmp_path: Path, bad: int
) -> None:
    # Catches: a batch half written before a bad item is met (all or none), an
    # iterator read twice (the C path and then its fallback), errors of its own.
    config = WalConfig(max_record_size=LIMIT)
    batch, again = BAD_BATCHES[bad], BAD_BATCHES[bad]
    if inspect.isgenerator(batch):
        batch, again = (item for item in [b"a", 1]), (item for item in [b"a", 1])
    with (
        segmented(tmp_path / "c", 4096, config) as fast,
        segmented(tmp_path / "py", 4096, config) as slow,
    ):
        got = outcome(lambda: fast.append_many(batch))  # type: ignore[arg-type]
        assert got == outcome(lambda: Wal.append_many(slow, again))  # type: ignore[arg-type]
        assert fast.next_lsn == slow.next_lsn == 0


def test_an_iterator_batch_is_read_once(tmp_path: Path) -> None:
    # Catches: a generator consumed by the C path's checks and found empty by
    # the fallback (records silently lost), or read twice.
    with segmented(tmp_path / "log", 4096) as wal:
        lsns = wal.append_many(bytes([n]) * n for n in range(1, 6))
        assert [record.data for record in wal] == [bytes([n]) * n for n in range(1, 6)]
        assert lsns == [record.lsn for record in wal]
        assert wal.append_many(iter([])) == []


# -- refusals: a log that takes no writes refuses on the fast path too ---------------


def test_a_broken_log_refuses_appends(tmp_path: Path) -> None:
    # Catches: the fast path writing into a broken log's piece (breaking zeroes
    # fast_limit; the piece stays mapped).
    with segmented(tmp_path / "log", 1 << 20) as wal:
        wal.append(b"kept")
        with wal._reservations.lock:
            wal._group_commit.break_locked(OSError("injected"), "a test")
        end = wal.next_lsn
        with pytest.raises(WalBrokenError):
            wal.append(b"refused")
        with pytest.raises(WalBrokenError):
            wal.append_many([b"refused"])
        assert wal.next_lsn == end


def test_a_closed_log_refuses_appends(tmp_path: Path) -> None:
    # Catches: the fast path writing after close (a closed store's piece).
    wal = segmented(tmp_path / "log", 1 << 20)
    wal.append(b"kept")
    wal.close()
    with pytest.raises(WalClosedError):
        wal.append(b"refused")
    with pytest.raises(WalClosedError):
        wal.append_many([b"refused", bytearray(b"too")])


def test_a_read_only_handle_refuses_appends(tmp_path: Path) -> None:
    with segmented(tmp_path / "log", 4096) as wal:
        wal.append(b"kept")
        with (
            Wal.open_segmented(tmp_path / "log", readonly=True) as reader,
            pytest.raises(mmwal.WalReadOnlyError),
        ):
            reader.append(b"refused")


# -- the store can close, cut and swap its mappings after fast appends ---------------


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_rolls_truncations_and_close_after_fast_appends(tmp_path: Path, kind: str) -> None:
    # Catches: an export of the piece kept past a call: close, truncate_after
    # (which unmaps later segments) and growth raise BufferError on it.
    path = tmp_path / "log"
    wal = Wal.open(path) if kind == "file" else segmented(path, 4096)
    payloads = [bytes([n % 256]) * 300 for n in range(200)]
    lsns = [wal.append(memoryview(payload)) for payload in payloads]
    wal.truncate_after(lsns[120])
    lsns = lsns[:121] + wal.append_many(payloads[121:])
    wal.sync()
    head = wal.truncate_before(lsns[100])
    lsns += [wal.append(bytearray(b"after the cut"))]
    wal.close()
    with Wal.open(path) if kind == "file" else Wal.open_segmented(path) as again:
        kept = [record for record in again if record.lsn >= head]
    expected = [*payloads, b"after the cut"]
    assert [record.lsn for record in kept] == [lsn for lsn in lsns if lsn >= head]
    assert [record.data for record in kept] == [expected[lsns.index(r.lsn)] for r in kept]


# -- the lock protocol ---------------------------------------------------------------


def test_an_append_that_waits_for_the_lock_lands_after_what_moved_the_end(
    tmp_path: Path,
) -> None:
    # Catches: an LSN read before the reservation lock is taken (two records at
    # one LSN), or a fast path that writes without the lock.
    with segmented(tmp_path / "log", 1 << 20) as wal:
        wal.append(b"first")
        reservations = wal._reservations
        got: list[int] = []
        with reservations.lock:
            waiter = threading.Thread(target=lambda: got.append(wal.append(b"waiter")))
            waiter.start()
            time.sleep(0.05)  # the waiter is in acquire_contended by now, or soon
            assert got == []
            # Another append moves the end while the waiter waits.
            moved = model_log([b"moved"])
            start = reservations.next_lsn
            wal.store.write(start, moved)
            reservations.next_lsn = start + len(moved)
            reservations.appends += 1
        waiter.join(10)
        assert got == [start + len(moved)]
        assert [record.data for record in wal] == [b"first", b"moved", b"waiter"]


def test_a_follower_wakes_for_a_fast_append(tmp_path: Path) -> None:
    # Catches: the C path moving the end without waking a waiting follower
    # (it would sleep until its timeout).
    with segmented(tmp_path / "log", 1 << 20) as wal:
        wal.append(b"first")
        seen: list[bytes] = []

        def follow() -> None:
            for record in wal.follow(timeout=5):
                seen.append(record.data)
                if len(seen) == 2:
                    return

        follower = threading.Thread(target=follow)
        follower.start()
        deadline = time.monotonic() + 5
        while not wal._reservations.followers_waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        started = time.monotonic()
        wal.append(b"second")
        follower.join(5)
        assert seen == [b"first", b"second"]
        assert time.monotonic() - started < 2.5


# -- the handle ----------------------------------------------------------------------


def test_a_dropped_log_is_freed_without_a_collection(tmp_path: Path) -> None:
    # Catches: a reference cycle through the C binding (an Appender that refers
    # to the Wal): a dropped writer would keep its lock until a collection.
    gc.disable()
    try:
        wal = segmented(tmp_path / "log", 4096)
        wal.append(b"x")
        ref = weakref.ref(wal)
        del wal
        assert ref() is None
    finally:
        gc.enable()
    with segmented(tmp_path / "log", 4096) as again:
        assert [record.data for record in again] == [b"x"]


def test_help_states_the_crash_cost(tmp_path: Path) -> None:
    # Catches: the C binding hiding the documented crash cost or signature.
    def words(function: object) -> str:
        return " ".join((function.__doc__ or "").split())

    assert "Crash cost" in words(Wal.append)
    assert list(inspect.signature(Wal.append).parameters) == ["self", "data"]
    with segmented(tmp_path / "log", 4096) as wal:
        assert "Crash cost" in words(wal.append)
        assert "Crash cost" in words(wal.append_many)


def test_a_subclass_that_overrides_append_keeps_its_own(tmp_path: Path) -> None:
    # Catches: the C binding shadowing a subclass's append (its override never
    # called, silently).
    class Counting(Wal):
        calls = 0

        def append(self, data: Buffer) -> int:
            Counting.calls += 1
            return super().append(data)

    with Counting.open_segmented(tmp_path / "log", 4096) as wal:
        assert isinstance(wal, Counting)
        wal.append(b"x")
        assert Counting.calls == 1
        assert wal.append_many([b"y"]) == [9]
