"""The record size limit, all-or-nothing batches, and ``WalConfig`` validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmwal import (
    CorruptionError,
    MemStore,
    Record,
    RecordTooLargeError,
    RecoveryPolicy,
    Wal,
    WalConfig,
    WalError,
)

LIMIT = 1000


def open_kind(kind: str, tmp_path: Path, config: WalConfig) -> Wal:
    if kind == "file":
        return Wal.open(tmp_path / "log", config)
    if kind == "segments":
        return Wal.open_segmented(tmp_path / "log", 256, config)
    return Wal.with_store(MemStore(4096), config)


def on_disk(tmp_path: Path) -> dict[str, bytes]:
    path = tmp_path / "log"
    if path.is_file():
        return {"log": path.read_bytes()}
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {}


KINDS = ["file", "segments", "memory"]


@pytest.mark.parametrize("kind", KINDS)
def test_exact_limit_accepted_one_more_rejected(tmp_path: Path, kind: str) -> None:
    config = WalConfig(max_record_size=LIMIT)
    with open_kind(kind, tmp_path, config) as wal:
        assert wal.append(b"a" * LIMIT) == 0
        assert wal.append_and_sync(b"b" * LIMIT) == LIMIT + 8
        assert wal.append_many([b"c" * LIMIT]) == [2 * (LIMIT + 8)]
        wal.sync()
        next_lsn = wal.next_lsn
        records = list(wal)
        before = on_disk(tmp_path)
        stats = wal.stats()
        attempts: list[Callable[[], object]] = [
            lambda: wal.append(b"x" * (LIMIT + 1)),
            lambda: wal.append(bytearray(LIMIT + 1)),
            lambda: wal.append(memoryview(bytes(LIMIT + 50))),
            lambda: wal.append_and_sync(b"x" * (LIMIT + 1)),
            lambda: wal.append_many([b"x" * (LIMIT + 1)]),
        ]
        for attempt in attempts:
            with pytest.raises(RecordTooLargeError) as info:
                attempt()
            error = info.value
            assert isinstance(error, ValueError)
            assert isinstance(error, WalError)
            assert error.size in (LIMIT + 1, LIMIT + 50)
            assert error.limit == LIMIT
            assert str(error.size) in str(error)
            assert str(LIMIT) in str(error)
            assert wal.next_lsn == next_lsn
            assert list(wal) == records
            assert on_disk(tmp_path) == before
        assert wal.stats().appends == stats.appends
        assert wal.stats().bytes_appended == stats.bytes_appended
        assert wal.append(b"fine") == next_lsn
    if kind != "memory":
        with open_kind(kind, tmp_path, config) as wal:
            assert [len(r.data) for r in wal] == [LIMIT, LIMIT, LIMIT, 4]


def test_too_large_is_caught_as_value_error(tmp_path: Path) -> None:
    with Wal.open(tmp_path / "log", WalConfig(max_record_size=10)) as wal:
        with pytest.raises(ValueError, match="max_record_size"):
            wal.append(bytes(11))
        assert wal.is_empty


def test_zero_limit_takes_only_empty_records(tmp_path: Path) -> None:
    config = WalConfig(max_record_size=0)
    with Wal.open(tmp_path / "log", config) as wal:
        assert wal.append(b"") == 0
        assert wal.append_many([b"", b""]) == [8, 16]
        with pytest.raises(RecordTooLargeError) as info:
            wal.append(b"x")
        assert (info.value.size, info.value.limit) == (1, 0)
    with Wal.open(tmp_path / "log", config) as wal:
        assert list(wal) == [Record(0, b""), Record(8, b""), Record(16, b"")]


def test_a_smaller_limit_reads_larger_records_and_changes_nothing(tmp_path: Path) -> None:
    """A record longer than today's limit whose CRC checks is a record, not damage.

    Catches: a configuration change reading synced records as a torn tail and
    quarantining them (found-item 1 of issue 8).
    """
    path = tmp_path / "log"
    with Wal.open(path, WalConfig(max_record_size=500)) as wal:
        wal.append_many([b"a", b"q" * 400, b"b"])
    (tmp_path / "log.recovery").unlink(missing_ok=True)  # the full scan meets the long record too
    before = path.read_bytes()
    with Wal.open(path, WalConfig(max_record_size=100)) as wal:
        assert [r.data for r in wal] == [b"a", b"q" * 400, b"b"]
        assert [r.data for r in wal.iter(9)] == [b"q" * 400, b"b"]
        with pytest.raises(RecordTooLargeError):
            wal.append(b"q" * 101)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "quarantine" in p.name) == []


@pytest.mark.parametrize("kind", ["file", "segments"])
def test_a_long_record_with_a_bad_crc_is_still_the_end(tmp_path: Path, kind: str) -> None:
    """Past the limit, only a CRC that checks makes a record: garbage stays the end."""
    with open_kind(kind, tmp_path, WalConfig(max_record_size=500)) as wal:
        wal.append_many([b"a", b"q" * 400])
    path = tmp_path / "log"
    side = tmp_path / "log.recovery" if path.is_file() else path / "recovery"
    side.unlink(missing_ok=True)
    target = path if path.is_file() else path / "00000000000000000000.wal"
    with target.open("r+b") as file:
        file.seek(9 + 8 + 200)
        file.write(b"X")
    with open_kind(kind, tmp_path, WalConfig(max_record_size=100)) as wal:
        assert [r.data for r in wal] == [b"a"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_longer_record_that_ends_the_log_is_read(tmp_path: Path, kind: str) -> None:
    """The last record, longer than today's limit, ends exactly where the log ends.

    Catches: a frame that ends at the walk's limit taken for one that runs past it.
    """
    records = [b"a", b"q" * 400]
    if kind == "memory":
        with Wal.with_store(MemStore(4096), WalConfig(max_record_size=500)) as first:
            first.append_many(records)
            store = first.store
            assert isinstance(store, MemStore)
            image = store.getvalue()
        wal = Wal.with_store(MemStore.from_bytes(image, 4096), WalConfig(max_record_size=100))
    else:
        with open_kind(kind, tmp_path, WalConfig(max_record_size=500)) as first:
            first.append_many(records)
        wal = open_kind(kind, tmp_path, WalConfig(max_record_size=100))
    with wal:
        assert wal.next_lsn == 8 + 1 + 8 + 400
        assert list(wal) == [Record(0, b"a"), Record(9, b"q" * 400)]
        assert list(wal.iter(9)) == [Record(9, b"q" * 400)]


@pytest.mark.parametrize("policy", list(RecoveryPolicy))
def test_a_damaged_record_of_exactly_the_limit_is_a_checksum_failure(
    tmp_path: Path, policy: RecoveryPolicy
) -> None:
    """A record of exactly ``max_record_size`` has a plausible length, crossing or not.

    So its checksum failure is what iteration reports, and what
    ``SKIP_BAD_RECORDS`` steps over. It crosses a segment boundary here.
    """
    config = WalConfig(max_record_size=300, recovery_policy=policy)
    with open_kind("segments", tmp_path, config) as wal:
        lsns = wal.append_many([b"a", b"q" * 300, b"b"])
        wal.store.write(lsns[1] + 8 + 100, b"X")
        walk = wal.iter()
        if policy is RecoveryPolicy.SKIP_BAD_RECORDS:
            assert [r.data for r in walk] == [b"a", b"b"]
            [error] = walk.skipped
        else:
            with pytest.raises(CorruptionError) as caught:
                list(walk)
            error = caught.value
    assert error.offset == lsns[1]
    assert error.reason == "checksum mismatch in a record of length 300"


# -- append_many is all or nothing ------------------------------------------------------


def _batches() -> list[tuple[str, list[object], type[Exception]]]:
    big = b"x" * (LIMIT + 1)
    return [
        ("too-large-first", [big, b"a", b"b"], RecordTooLargeError),
        ("too-large-middle", [b"a", big, b"b"], RecordTooLargeError),
        ("too-large-last", [b"a", b"b", big], RecordTooLargeError),
        ("str-middle", [b"a", "text", b"b"], TypeError),
        ("str-last", [b"a", b"b", "text"], TypeError),
        ("int-first", [5, b"a"], TypeError),
        ("none-last", [b"a", None], TypeError),
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("label", "batch", "error"), _batches(), ids=[b[0] for b in _batches()])
def test_append_many_is_all_or_nothing(
    tmp_path: Path, kind: str, label: str, batch: list[object], error: type[Exception]
) -> None:
    config = WalConfig(max_record_size=LIMIT)
    with open_kind(kind, tmp_path, config) as wal:
        wal.append_many([b"first", b"second"])
        wal.sync()
        next_lsn = wal.next_lsn
        before = on_disk(tmp_path)
        appends = wal.stats().appends
        with pytest.raises(error):
            wal.append_many(batch)  # type: ignore[arg-type]
        with pytest.raises(error):
            wal.append_many(iter(batch))  # type: ignore[arg-type]
        assert wal.next_lsn == next_lsn, label
        assert [r.data for r in wal] == [b"first", b"second"]
        assert on_disk(tmp_path) == before
        assert wal.stats().appends == appends
        wal.sync()
        assert on_disk(tmp_path) == before
    if kind != "memory":
        with open_kind(kind, tmp_path, config) as wal:
            assert [r.data for r in wal] == [b"first", b"second"]


def test_append_many_generator_failing_midway_writes_nothing(tmp_path: Path) -> None:
    def records() -> Iterator[bytes]:
        yield b"one"
        yield b"two"
        raise RuntimeError("source failed")

    with Wal.open(tmp_path / "log", WalConfig(max_record_size=LIMIT)) as wal:
        with pytest.raises(RuntimeError, match="source failed"):
            wal.append_many(records())
        assert wal.is_empty
        assert list(wal) == []


@pytest.mark.parametrize("kind", KINDS)
def test_empty_append_many_returns_empty_list(tmp_path: Path, kind: str) -> None:
    with open_kind(kind, tmp_path, WalConfig(max_record_size=LIMIT)) as wal:
        assert wal.append_many([]) == []
        assert wal.append_many(iter(())) == []
        assert wal.is_empty
        wal.append(b"x")
        next_lsn = wal.next_lsn
        assert wal.append_many([]) == []
        nothing: list[bytes] = []
        assert wal.append_many(b for b in nothing) == []
        assert wal.next_lsn == next_lsn
        assert [r.data for r in wal] == [b"x"]


# -- WalConfig -------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = WalConfig()
    assert config.max_record_size == 64 * 1024 * 1024
    assert config.recovery_policy is RecoveryPolicy.STOP_AT_FIRST_ERROR


@pytest.mark.parametrize("good", [0, 1, 4096, 0xFFFFFFFF])
def test_config_accepts_the_u32_range(good: int) -> None:
    assert WalConfig(max_record_size=good).max_record_size == good


@pytest.mark.parametrize("bad", [-1, -(1 << 40), 0x1_0000_0000, 1 << 64])
def test_config_rejects_out_of_range_sizes(bad: int) -> None:
    with pytest.raises(ValueError, match="max_record_size"):
        WalConfig(max_record_size=bad)


@pytest.mark.parametrize("bad", [True, False, 1.0, "4096", None, b"1"])
def test_config_rejects_non_int_sizes(bad: object) -> None:
    with pytest.raises(TypeError, match="max_record_size"):
        WalConfig(max_record_size=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["skip_bad_records", "STOP_AT_FIRST_ERROR", None, 1, True])
def test_config_rejects_wrong_policy_type(bad: object) -> None:
    with pytest.raises(TypeError, match="recovery_policy"):
        WalConfig(recovery_policy=bad)  # type: ignore[arg-type]


def test_config_accepts_both_policies() -> None:
    for policy in RecoveryPolicy:
        assert WalConfig(recovery_policy=policy).recovery_policy is policy
    assert {p.name for p in RecoveryPolicy} == {"STOP_AT_FIRST_ERROR", "SKIP_BAD_RECORDS"}


def test_config_is_frozen() -> None:
    config = WalConfig(max_record_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_record_size = 20  # type: ignore[misc]
    assert config.max_record_size == 10
    assert config == WalConfig(max_record_size=10)
    assert hash(config) == hash(WalConfig(max_record_size=10))
