"""Fuzzing recovery: arbitrary bytes never crash, hang, or drive an allocation.

Targets: a single-file image through ``MemStore.from_bytes`` and as a real file
(``FileStore`` with small windows), and segment sets (several files with random
names and sizes, a ``head`` file good or bad, foreign files) opened with
``SegmentStore``. For every input, opening either succeeds or raises a documented
error (``CorruptionError``; ``ValueError`` naming ``segment_size`` when the files
contradict the size); a log that opens iterates without error to exactly its
end, in records no longer than ``max_record_size``, and takes a new append.
Each open runs under ``tracemalloc`` with a small ``max_record_size``: the peak
must stay within a bound that no hostile length field could respect, and under
a timer: an input that hangs fails.

Images are built from valid frames (CRC from the ``crc32c`` package, not from
mmwal), garbage, zero runs, and headers with hostile lengths, so the fuzzer
reaches past the first frame.

``MMWAL_SOAK=1``: every hypothesis test runs ``SOAK_EXAMPLES`` examples, and a
time-boxed random mutation loop runs ``MMWAL_FUZZ_SECONDS`` (600 by default,
about ten minutes) over all targets. ``fuzz/atheris_recovery.py`` is the same
recovery under atheris; its entry point is also run here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import signal
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmwal import CorruptionError, FileStore, MemStore, SegmentStore, Wal, WalConfig

SOAK = os.environ.get("MMWAL_SOAK") == "1"
SOAK_EXAMPLES = 5000
FUZZ_SECONDS = float(os.environ.get("MMWAL_FUZZ_SECONDS", "600"))
MAX_RECORD_SIZE = 256
CONFIG = WalConfig(max_record_size=MAX_RECORD_SIZE)
HEADER = 8
TIME_LIMIT = 20  # seconds one input may take before it counts as a hang
# What one open and walk may allocate at its peak: a few records, the 64 KiB
# blocks the zero-scan reads, a copy of the input (quarantine), interpreter noise.
# A hostile length (up to 4 GiB) driving an allocation would blow far past it.
FIXED_ALLOWANCE = 320 * 1024

soak_only = pytest.mark.skipif(not SOAK, reason="soak setting: run with MMWAL_SOAK=1")

FUZZ = settings(
    max_examples=SOAK_EXAMPLES if SOAK else 250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not SOAK,
)


# -- building images -----------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return struct.pack("<I", crc32c.crc32c(length + payload)) + length + payload


def head_file(lsn: int) -> bytes:
    encoded = struct.pack("<Q", lsn)
    return encoded + struct.pack("<I", crc32c.crc32c(encoded))


pieces = st.one_of(
    st.binary(max_size=MAX_RECORD_SIZE).map(frame),
    st.binary(max_size=MAX_RECORD_SIZE).map(lambda p: frame(p)[: len(p) // 2 + 4]),
    st.binary(min_size=1, max_size=200),
    st.integers(1, 700).map(bytes),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(MAX_RECORD_SIZE + 1, 2**32 - 1)).map(
        lambda fields: struct.pack("<II", *fields)
    ),
    st.binary(min_size=1, max_size=3).map(lambda b: bytes(8) + b),
)
images = st.lists(pieces, max_size=14).map(b"".join)


@st.composite
def segment_sets(draw: st.DrawFn) -> tuple[dict[str, bytes], int | None]:
    segment_size = draw(st.sampled_from([None, 32, 64, 512, 4096]))
    size = segment_size or draw(st.sampled_from([32, 64, 512, 4096]))
    stream = draw(images)
    files: dict[str, bytes] = {}
    count = -(-len(stream) // size)
    first = draw(st.integers(0, 3))
    for number in range(count):
        files[f"{first + number:020d}.wal"] = stream[number * size : (number + 1) * size]
    damage = draw(st.booleans())
    if damage and files:  # damage the set: drop, shorten, add, resize
        names = sorted(files)
        victim = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["drop", "shorten", "grow", "empty"]))
        if action == "drop":
            del files[victim]
        elif action == "shorten":
            files[victim] = files[victim][: draw(st.integers(0, len(files[victim])))]
        elif action == "grow":
            files[victim] += draw(st.binary(min_size=1, max_size=64))
        else:
            files[victim] = b""
    extra = draw(st.lists(st.integers(0, 40), max_size=2))
    for index in extra:
        files[f"{index:020d}.wal"] = draw(st.binary(max_size=size))
    head = draw(
        st.one_of(
            st.none(),
            st.integers(0, (first + count + 1) * size).map(head_file),
            st.binary(max_size=16),
        )
    )
    if head is not None:
        files["head"] = head
    for name in draw(
        st.lists(st.sampled_from(["head.tmp", "notes.txt", "0001.wal", "x.quarantine"]))
    ):
        files[name] = draw(st.binary(max_size=64))
    return files, segment_size


# -- the checks ------------------------------------------------------------------------


class HangError(Exception):
    """An input took longer than ``TIME_LIMIT``."""


@contextmanager
def bounded(input_size: int) -> Iterator[None]:
    """Fail on a hang, and on a peak allocation beyond what the input can justify."""

    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise HangError(f"recovery did not finish within {TIME_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    # Recovery's quarantine warning is expected on most inputs; pytest keeps every
    # captured record in one growing buffer, whose reallocation would count here.
    logger = logging.getLogger("mmwal")
    level = logger.level
    logger.setLevel(logging.ERROR)
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logger.setLevel(level)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    limit = FIXED_ALLOWANCE + 4 * MAX_RECORD_SIZE + 3 * input_size
    assert peak <= limit, f"peak allocation {peak} B > {limit} B for a {input_size} B input"


def check_log(wal: Wal) -> None:
    head, end = wal.head_lsn, wal.next_lsn
    position = head
    for record in wal:
        assert record.lsn == position
        assert len(record.data) <= MAX_RECORD_SIZE
        position += HEADER + len(record.data)
    assert position == end, f"records end at {position}, the log at {end}"
    lsn = wal.append(b"after")
    assert lsn == end
    wal.sync()
    assert [(r.lsn, r.data) for r in wal.iter(lsn)] == [(lsn, b"after")]


def open_and_check(opener: Callable[[], Wal], input_size: int) -> str:
    """Open, walk and append under the bounds; return "opened" or the refusal's kind."""
    with bounded(input_size):
        try:
            wal = opener()
        except CorruptionError:
            return "refused"
        except ValueError as error:
            if "segment_size" not in str(error):
                raise AssertionError(f"undocumented ValueError: {error}") from error
            return "contradicting sizes"
        try:
            check_log(wal)
        finally:
            wal.close()
    return "opened"


def memstore_target(image: bytes, chunk: int) -> str:
    return open_and_check(
        lambda: Wal.with_store(MemStore.from_bytes(image, chunk_size=chunk), CONFIG), len(image)
    )


def file_target(image: bytes, window: int) -> str:
    with tempfile.TemporaryDirectory(prefix="mmwal-fuzz-") as name:
        path = Path(name) / "wal.log"
        path.write_bytes(image)
        return open_and_check(lambda: Wal(FileStore(path, window_size=window), CONFIG), len(image))


def segments_target(files: dict[str, bytes], segment_size: int | None) -> str:
    with tempfile.TemporaryDirectory(prefix="mmwal-fuzz-") as name:
        directory = Path(name)
        for file_name, data in files.items():
            (directory / file_name).write_bytes(data)
        total = sum(len(data) for data in files.values())
        return open_and_check(lambda: Wal(SegmentStore(directory, segment_size), CONFIG), total)


# -- hypothesis tests ------------------------------------------------------------------


@FUZZ
@given(image=st.one_of(images, st.binary(max_size=3000)), chunk=st.sampled_from([16, 64, 4096]))
def test_memstore_images_recover_or_refuse(image: bytes, chunk: int) -> None:
    memstore_target(image, chunk)


@pytest.mark.slow
@FUZZ
@given(image=images, window=st.sampled_from([4096, 8192]))
def test_single_files_recover_or_refuse(image: bytes, window: int) -> None:
    file_target(image, window)


@pytest.mark.slow
@FUZZ
@given(segment_set=segment_sets())
def test_segment_sets_recover_or_refuse(segment_set: tuple[dict[str, bytes], int | None]) -> None:
    files, segment_size = segment_set
    segments_target(files, segment_size)


def recovery_point(end: int, lsn: int, crc: int, length: int, unit: int) -> bytes:
    """A recovery point file as FORMAT.md lays it out (built here, not by mmwal)."""
    body = struct.pack("<8sQQIIQI", b"mmwalRP1", end, lsn, crc, length, unit, 0)
    return body + struct.pack("<I", crc32c.crc32c(body))


@st.composite
def points_for(draw: st.DrawFn, image: bytes) -> bytes:
    """A recovery point for ``image``: garbage, or one naming a header the image holds."""
    if not image or draw(st.booleans()):
        return draw(st.binary(max_size=60))
    lsn = draw(st.integers(0, max(0, len(image) - 8)))
    crc, length = struct.unpack_from("<II", image.ljust(lsn + 8, b"\0"), lsn)
    return recovery_point(lsn + 8 + length, lsn, crc, length, 0)


def check_log_with_point(wal: Wal) -> None:
    """Walk the log: to its end, or to damage below the recovery point (reported, not cut)."""
    point = wal.recovery.recovery_point
    damage: CorruptionError | None = None
    try:
        check_log(wal)
    except CorruptionError as error:
        damage = error
    if damage is not None:
        assert point is not None, f"damage without a recovery point: {damage}"
        assert damage.offset < point, f"damage at {damage.offset} past the point {point}"


@FUZZ
@given(data=st.data(), image=images)
def test_single_files_with_a_recovery_point_recover_or_refuse(
    data: st.DataObject, image: bytes
) -> None:
    side = data.draw(points_for(image))
    with tempfile.TemporaryDirectory(prefix="mmwal-fuzz-") as name:
        path = Path(name) / "wal.log"
        path.write_bytes(image)
        Path(f"{path}.recovery").write_bytes(side)
        with bounded(len(image)):
            try:
                wal = Wal(FileStore(path, window_size=4096), CONFIG)
            except CorruptionError:
                return
            try:
                check_log_with_point(wal)
            finally:
                wal.close()


def load_harness() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "fuzz" / "atheris_recovery.py"
    spec = importlib.util.spec_from_file_location("atheris_recovery", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = load_harness()


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(st.binary(max_size=2000), images.map(lambda b: b"\x00\x01" + b)))
def test_the_atheris_entry_point_holds(data: bytes) -> None:
    with bounded(len(data)):
        HARNESS.check_one_input(data)


def test_the_bounds_catch_a_hostile_allocation() -> None:
    """Mutation check: an opener that allocates what a hostile length says fails."""
    hostile = struct.pack("<II", 0, 50_000_000)

    def greedy() -> Wal:
        length = struct.unpack_from("<I", hostile, 4)[0]
        bytearray(length)  # what a reader that trusted the length would do
        raise CorruptionError(0, "refused after allocating")

    with pytest.raises(AssertionError, match="peak allocation"):
        open_and_check(greedy, len(hostile))


def test_the_timer_catches_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: an opener that never returns fails instead of hanging the run."""
    monkeypatch.setattr(f"{__name__}.TIME_LIMIT", 0.2)

    def endless() -> Wal:
        while True:
            time.sleep(0.01)

    with pytest.raises(HangError):
        open_and_check(endless, 0)


def test_hostile_lengths_everywhere_in_a_real_log() -> None:
    """A valid log with a hostile length written over each header in turn."""
    payloads = [bytes([n]) * (n * 7 % MAX_RECORD_SIZE) for n in range(1, 30)]
    log = b"".join(frame(p) for p in payloads)
    starts = []
    position = 0
    for payload in payloads:
        starts.append(position)
        position += HEADER + len(payload)
    for start in starts:
        damaged = bytearray(log)
        damaged[start + 4 : start + 8] = struct.pack("<I", 0xFFFF_FFF0)
        assert memstore_target(bytes(damaged), 4096) in {"opened", "refused"}


# -- the soak: a time-boxed mutation loop ----------------------------------------------


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.3 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif roll < 0.45 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif roll < 0.6 and len(buf) >= 8:
            at = rng.randrange(len(buf) - 7)
            buf[at + 4 : at + 8] = struct.pack("<I", rng.randrange(2**32))
        elif roll < 0.75:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 64))
        elif roll < 0.9 and buf:
            at = rng.randrange(len(buf))
            buf[at : at + 512] = bytes(min(512, len(buf) - at))
        else:
            buf += frame(rng.randbytes(rng.randint(0, MAX_RECORD_SIZE)))
    return bytes(buf)


def random_log(rng: random.Random) -> bytes:
    return b"".join(
        frame(rng.randbytes(rng.randint(0, MAX_RECORD_SIZE))) for _ in range(rng.randint(0, 30))
    )


@pytest.mark.slow
@soak_only
def test_soak_mutation_fuzz() -> None:
    rng = random.Random(int(os.environ.get("MMWAL_SOAK_SEED", "1000000")))
    deadline = time.monotonic() + FUZZ_SECONDS
    outcomes: dict[str, int] = {}
    cases = 0
    while time.monotonic() < deadline:
        image = mutate(rng, random_log(rng))
        target = cases % 3
        if target == 0:
            outcome = memstore_target(image, rng.choice([16, 64, 4096]))
        elif target == 1:
            outcome = file_target(image, 4096)
        else:
            size = rng.choice([32, 64, 512, 4096])
            files = {
                f"{index:020d}.wal": image[index * size : (index + 1) * size]
                for index in range(-(-len(image) // size))
            }
            if files and rng.random() < 0.3:
                del files[rng.choice(sorted(files))]
            if rng.random() < 0.3:
                files["head"] = head_file(rng.randrange(len(image) + 1))
            outcome = segments_target(files, rng.choice([None, size]))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        cases += 1
    print(f"mutation fuzz: {cases} cases in {FUZZ_SECONDS:.0f} s: {outcomes}")
    assert cases > 0


@pytest.mark.parametrize(
    "sizes",
    [[0, 0], [0, 64], [0, 64, 64, 10]],
    ids=["two-empty", "empty-then-full", "empty-first-of-four"],
)
def test_an_empty_first_segment_gets_a_documented_answer(sizes: list[int]) -> None:
    """Found by the fuzzer: an empty first segment file and ``segment_size=None``.

    The size is inferred from the first file; an empty one made the inference
    fall back to the default without checking the other files, and the scan
    then hit the unmapped first segment with an undocumented ``ValueError``.
    """
    files = {f"{index:020d}.wal": b"\x01" * size for index, size in enumerate(sizes)}
    assert segments_target(files, None) in {"opened", "refused", "contradicting sizes"}
