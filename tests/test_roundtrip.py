"""Round trips: what is appended comes back, after reopen, in every store.

LSNs are running byte offsets (``lsn[i+1] == lsn[i] + 8 + len(data[i])``), the same
inputs give the same bytes on disk, and ``append_many`` lays out exactly what
repeated ``append`` does.
"""

from __future__ import annotations

import array
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import mmwal
from mmwal import FileStore, MemStore, Record, SegmentStore, Wal, WalConfig

SMALL = WalConfig(max_record_size=4096)


def mixed_payloads(count: int, max_size: int, seed: int) -> list[bytes]:
    """``count`` payloads of mixed sizes, always including empty and exactly ``max_size``."""
    rng = random.Random(seed)
    sizes = [0, max_size, 1, max_size - 1, 7, 8, 9]
    while len(sizes) < count:
        roll = rng.random()
        if roll < 0.1:
            sizes.append(0)
        elif roll < 0.15:
            sizes.append(max_size)
        elif roll < 0.7:
            sizes.append(rng.randrange(0, min(64, max_size) + 1))
        else:
            sizes.append(rng.randrange(0, max_size + 1))
    rng.shuffle(sizes)
    return [rng.randbytes(size) for size in sizes[:count]]


def expected_records(payloads: list[bytes], start: int = 0) -> list[Record]:
    records = []
    lsn = start
    for payload in payloads:
        records.append(Record(lsn, payload))
        lsn += 8 + len(payload)
    return records


def log_end(payloads: list[bytes], start: int = 0) -> int:
    return start + sum(8 + len(p) for p in payloads)


def assert_running_offsets(lsns: list[int], payloads: list[bytes], start: int) -> None:
    assert len(lsns) == len(payloads)
    assert lsns[:1] == [start][: len(lsns)]
    for i in range(len(lsns) - 1):
        assert lsns[i + 1] == lsns[i] + 8 + len(payloads[i]), i


def log_files(directory: Path) -> list[Path]:
    """The files of the log itself: not the state file published for followers."""
    return sorted(p for p in directory.iterdir() if p.name != "mmwal-ends")


def dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in log_files(directory)}


# -- single file -------------------------------------------------------------------------


def test_thousand_records_survive_reopen_single_file(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payloads = mixed_payloads(1000, 4096, seed=1)
    with Wal.open(path, SMALL) as wal:
        assert wal.is_empty
        assert wal.next_lsn == 0
        lsns = [wal.append(p) for p in payloads]
        assert_running_offsets(lsns, payloads, 0)
        assert wal.next_lsn == log_end(payloads)
        assert list(wal) == expected_records(payloads)
        wal.sync()
        assert wal.durable_lsn == wal.next_lsn
    with Wal.open(path, SMALL) as wal:
        assert list(wal) == expected_records(payloads)
        assert wal.next_lsn == wal.durable_lsn == log_end(payloads)
        assert wal.head_lsn == 0
        assert not wal.is_empty
        assert wal.recovery.end == log_end(payloads)
        assert wal.recovery.discarded_bytes == 0
        assert wal.append(b"after reopen") == log_end(payloads)
    with Wal.open(path, SMALL) as wal:
        assert list(wal) == expected_records([*payloads, b"after reopen"])


def test_default_config_takes_a_64_mib_record(tmp_path: Path) -> None:
    path = tmp_path / "log"
    big = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    assert len(big) == WalConfig().max_record_size
    with Wal.open(path) as wal:
        assert wal.append(b"a") == 0
        assert wal.append(big) == 9
        assert wal.append(b"") == 9 + 8 + len(big)
    with Wal.open(path) as wal:
        records = list(wal)
        assert [r.lsn for r in records] == [0, 9, 9 + 8 + len(big)]
        assert records[1].data == big
        assert records[2].data == b""
        assert wal.next_lsn == 9 + 8 + len(big) + 8


# -- segmented ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment_size", "count", "max_size"),
    [(32, 300, 100), (64, 300, 200), (4096, 1000, 4096), (5000, 1000, 4096)],
)
def test_records_survive_reopen_segmented(
    tmp_path: Path, segment_size: int, count: int, max_size: int
) -> None:
    directory = tmp_path / "log"
    config = WalConfig(max_record_size=max_size)
    payloads = mixed_payloads(count, max_size, seed=segment_size)
    with Wal.open_segmented(directory, segment_size, config) as wal:
        lsns = wal.append_many(payloads[: count // 2])
        lsns += [wal.append(p) for p in payloads[count // 2 :]]
        assert_running_offsets(lsns, payloads, 0)
        wal.sync()
        assert list(wal) == expected_records(payloads)
    end = log_end(payloads)
    files = sorted(p.name for p in directory.glob("*.wal"))
    assert files == [f"{i:020d}.wal" for i in range(-(-end // segment_size))]
    assert {p.stat().st_size for p in directory.glob("*.wal")} == {segment_size}
    with Wal.open_segmented(directory, None, config) as wal:
        assert list(wal) == expected_records(payloads)
        assert wal.next_lsn == end
        assert wal.append(b"tail") == end
    with Wal.open_segmented(directory, segment_size, config) as wal:
        assert list(wal) == expected_records([*payloads, b"tail"])


# -- reopen cycles ------------------------------------------------------------------------


def _opener(kind: str, base: Path) -> Callable[[], Wal]:
    if kind == "file":
        return lambda: Wal.open(base / "log", SMALL)
    if kind == "segments":
        return lambda: Wal.open_segmented(base / "log", 256, SMALL)
    return lambda: mmwal.open(base / "log", config=SMALL)


@pytest.mark.parametrize("kind", ["file", "segments", "mmwal.open"])
def test_five_open_append_sync_cycles(tmp_path: Path, kind: str) -> None:
    opener = _opener(kind, tmp_path)
    everything: list[bytes] = []
    for cycle in range(5):
        with opener() as wal:
            assert list(wal) == expected_records(everything)
            assert wal.next_lsn == log_end(everything)
            batch = mixed_payloads(40 + cycle, 300, seed=100 + cycle)
            lsns = [wal.append(p) for p in batch]
            assert lsns[0] == log_end(everything)
            assert_running_offsets(lsns, batch, log_end(everything))
            wal.sync()
            assert wal.durable_lsn == log_end([*everything, *batch])
            everything += batch
    with opener() as wal:
        assert list(wal) == expected_records(everything)


# -- determinism ---------------------------------------------------------------------------


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    payloads = mixed_payloads(300, 2000, seed=5)
    for name in ("a", "b"):
        with Wal.open(tmp_path / name, SMALL) as wal:
            for payload in payloads:
                wal.append(payload)
            wal.sync()
            wal.append(b"unsynced tail")
    first, second = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    assert len(first) == 64 * 1024 * 1024
    assert first == second


def test_same_inputs_give_byte_identical_segments(tmp_path: Path) -> None:
    payloads = mixed_payloads(200, 500, seed=6)
    for name in ("a", "b"):
        with Wal.open_segmented(tmp_path / name, 1024, SMALL) as wal:
            for index, payload in enumerate(payloads):
                wal.append(payload)
                if index % 50 == 0:
                    wal.sync()
    first, second = dir_bytes(tmp_path / "a"), dir_bytes(tmp_path / "b")
    assert len(first) > 1
    assert first == second


@pytest.mark.parametrize("segment_size", [None, 64, 1000])
def test_append_many_lays_out_the_bytes_of_repeated_append(
    tmp_path: Path, segment_size: int | None
) -> None:
    payloads = mixed_payloads(200, 300, seed=9)

    def open_log(name: str) -> Wal:
        if segment_size is None:
            return Wal.open(tmp_path / name, SMALL)
        return Wal.open_segmented(tmp_path / name, segment_size, SMALL)

    with open_log("one") as wal:
        single = [wal.append(p) for p in payloads]
    with open_log("many") as wal:
        batched = wal.append_many(payloads[:50])
        batched += wal.append_many(iter(payloads[50:51]))
        batched += wal.append_many(p for p in payloads[51:])
    assert batched == single
    assert_running_offsets(batched, payloads, 0)
    if segment_size is None:
        assert (tmp_path / "one").read_bytes() == (tmp_path / "many").read_bytes()
    else:
        assert dir_bytes(tmp_path / "one") == dir_bytes(tmp_path / "many")


# -- input types ---------------------------------------------------------------------------


def test_bytearray_and_memoryview_are_accepted(tmp_path: Path) -> None:
    source = bytes(range(100))
    numbers = array.array("H", [1, 2, 0xFFFF])
    inputs: list[bytes | bytearray | memoryview] = [
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        memoryview(source)[10:20],
        memoryview(source)[::3],
        memoryview(numbers),
        bytearray(),
        memoryview(b""),
    ]
    expected = [bytes(x) if not isinstance(x, memoryview) else x.tobytes() for x in inputs]
    assert expected[4] == numbers.tobytes()
    with Wal.open(tmp_path / "log", SMALL) as wal:
        lsns = [wal.append(x) for x in inputs]
        lsns += wal.append_many(inputs)
        lsns.append(wal.append_and_sync(memoryview(numbers)))
        lsns.append(wal.append_and_sync(bytearray(b"synced")))
        everything = [*expected, *expected, numbers.tobytes(), b"synced"]
        assert_running_offsets(lsns, everything, 0)
        assert list(wal) == expected_records(everything)
        assert wal.durable_lsn == wal.next_lsn
    with Wal.open(tmp_path / "log", SMALL) as wal:
        assert list(wal) == expected_records(everything)
        assert all(type(r.data) is bytes for r in wal)


def test_appending_a_mutable_buffer_copies_it(tmp_path: Path) -> None:
    buffer = bytearray(b"original")
    with Wal.open(tmp_path / "log", SMALL) as wal:
        wal.append(buffer)
        wal.append_many([buffer])
        buffer[:] = b"mutated!"
        assert [r.data for r in wal] == [b"original", b"original"]


_BAD_RECORDS: list[object] = ["text", 5, 3.5, None, [1, 2], (b"a",), {b"a"}]


@pytest.mark.parametrize("bad", _BAD_RECORDS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("segmented", [False, True])
def test_wrong_types_raise_and_leave_the_log_unchanged(
    tmp_path: Path, bad: object, segmented: bool
) -> None:
    path = tmp_path / "log"
    wal = Wal.open_segmented(path, 64, SMALL) if segmented else Wal.open(path, SMALL)
    with wal:
        wal.append_many([b"one", b"two", b""])
        wal.sync()
        before = list(wal)
        next_lsn = wal.next_lsn
        appends = wal.stats().appends
        on_disk = dir_bytes(path) if segmented else path.read_bytes()
        attempts: list[Callable[[], object]] = [
            lambda: wal.append(bad),  # type: ignore[arg-type]
            lambda: wal.append_and_sync(bad),  # type: ignore[arg-type]
            lambda: wal.append_many([b"ok", bad]),  # type: ignore[list-item]
            lambda: wal.append_many([bad]),  # type: ignore[list-item]
        ]
        for attempt in attempts:
            with pytest.raises(TypeError):
                attempt()
            assert wal.next_lsn == next_lsn
            assert list(wal) == before
            assert wal.stats().appends == appends
        assert (dir_bytes(path) if segmented else path.read_bytes()) == on_disk
        assert wal.append(b"still usable") == next_lsn
    with Wal.open_segmented(path, 64, SMALL) if segmented else Wal.open(path, SMALL) as wal:
        assert [r.data for r in wal] == [b"one", b"two", b"", b"still usable"]


@pytest.mark.parametrize("single", [b"abc", bytearray(b"abc"), memoryview(b"abc"), "abc"])
def test_append_many_refuses_a_single_record(
    tmp_path: Path, single: bytes | bytearray | memoryview | str
) -> None:
    with Wal.open(tmp_path / "log", SMALL) as wal:
        with pytest.raises(TypeError):
            wal.append_many(single)  # type: ignore[arg-type]
        assert wal.is_empty
        assert list(wal) == []


def test_str_error_suggests_encoding(tmp_path: Path) -> None:
    with Wal.open(tmp_path / "log", SMALL) as wal, pytest.raises(TypeError, match="encode"):
        wal.append("text")  # type: ignore[arg-type]


# -- mmwal.open ------------------------------------------------------------------------------


def test_mmwal_open_segment_size_means_segmented(tmp_path: Path) -> None:
    directory = tmp_path / "segs"
    with mmwal.open(directory, segment_size=128) as wal:
        assert isinstance(wal.store, SegmentStore)
        assert wal.store.segment_size == 128
        wal.append(b"x" * 300)
    assert directory.is_dir()
    assert sorted(p.name for p in directory.glob("*.wal")) == [f"{i:020d}.wal" for i in range(3)]
    # An existing directory is a segmented log; its segment size is inferred.
    with mmwal.open(directory) as wal:
        assert isinstance(wal.store, SegmentStore)
        assert wal.store.segment_size == 128
        assert [r.data for r in wal] == [b"x" * 300]


def test_mmwal_open_empty_directory_is_segmented(tmp_path: Path) -> None:
    directory = tmp_path / "empty"
    directory.mkdir()
    with mmwal.open(directory) as wal:
        assert isinstance(wal.store, SegmentStore)
        wal.append(b"x")
    assert (directory / "00000000000000000000.wal").is_file()


def test_mmwal_open_a_path_is_a_single_file(tmp_path: Path) -> None:
    path = tmp_path / "log.wal"
    with mmwal.open(path, config=SMALL) as wal:
        assert isinstance(wal.store, FileStore)
        wal.append(b"single")
    assert path.is_file()
    with mmwal.open(str(path)) as wal:
        assert isinstance(wal.store, FileStore)
        assert list(wal) == [Record(0, b"single")]


# -- MemStore -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [64, 4096, 1 << 20])
def test_memstore_round_trip(chunk_size: int) -> None:
    payloads = mixed_payloads(500, 4096, seed=chunk_size)
    store = MemStore(chunk_size)
    with Wal.with_store(store, SMALL) as wal:
        lsns = [wal.append(p) for p in payloads[:250]] + wal.append_many(payloads[250:])
        assert_running_offsets(lsns, payloads, 0)
        wal.sync()
        assert list(wal) == expected_records(payloads)
        image = store.getvalue()
        assert image[log_end(payloads) :].count(0) == len(image) - log_end(payloads)
    assert store.closed
    # The image is a wal-db single-file log: loading it gives the same records.
    with Wal.with_store(MemStore.from_bytes(image), SMALL) as wal:
        assert list(wal) == expected_records(payloads)
        assert wal.next_lsn == log_end(payloads)


def test_memstore_from_bytes_of_a_single_file_image(tmp_path: Path) -> None:
    path = tmp_path / "log"
    payloads = mixed_payloads(200, 4096, seed=11)
    with Wal.open(path, SMALL) as wal:
        wal.append_many(payloads)
    image = path.read_bytes()
    end = log_end(payloads)
    for data in (image[: end + 100], bytearray(image[:end]), memoryview(image)[:end]):
        with Wal.with_store(MemStore.from_bytes(data), SMALL) as wal:
            assert list(wal) == expected_records(payloads)
            assert wal.next_lsn == end
            assert wal.append(b"more") == end
            assert list(wal)[-1] == Record(end, b"more")
    # The file itself was only read.
    assert path.read_bytes() == image


def test_with_store_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        Wal.with_store(b"not a store")  # type: ignore[arg-type]
