"""Typed records: codecs, ``wal.typed(codec)``, bytes on disk, rejection that writes nothing."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

import mmwal
from mmwal.codecs import Codec, Json, MsgPack, Pickle, Struct


@pytest.mark.parametrize(
    ("codec", "values"),
    [
        (Json(), [{"k": "v", "n": 1}, [1, 2.5, None], "text é", 7]),
        (Struct("<qd"), [(1, 2.5), (-(2**63), 0.0)]),
        (MsgPack(), [{"k": b"\x00bytes", "n": [1, 2]}, "str", 2**64 - 1]),
        (Pickle(), [{"set": {1, 2}}, (1, "a"), complex(1, 2)]),
    ],
    ids=["json", "struct", "msgpack", "pickle"],
)
def test_values_round_trip_through_a_reopen(
    tmp_path: Path, codec: Codec[Any], values: list[Any]
) -> None:
    path = tmp_path / "typed.wal"
    with mmwal.open(path) as wal:
        typed = wal.typed(codec)
        first = typed.append(values[0])
        rest = typed.append_many(values[1:])
        last = typed.append_and_sync(values[0])
    assert rest[0] > first
    assert last > rest[-1]
    with mmwal.open(path) as wal:
        records = list(wal.typed(codec))
        assert [record.value for record in records] == [*values, values[0]]
        assert [record.lsn for record in records] == [first, *rest, last]
        # From an LSN, as Wal.iter does.
        assert [record.value for record in wal.typed(codec).iter(last)] == [values[0]]


def test_bytes_on_disk_are_exactly_the_codecs_bytes(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        wal.typed(Json(sort_keys=True)).append({"b": 1, "a": [1, 2]})
        wal.typed(Struct("<iH")).append((-1, 7))
        assert [record.data for record in wal] == [
            b'{"a":[1,2],"b":1}',
            struct.pack("<iH", -1, 7),
        ]


@pytest.mark.parametrize(
    ("codec", "bad", "error"),
    [
        (Json(), {"x": object()}, TypeError),
        (Json(), math.nan, ValueError),
        (Struct("<b"), (300,), ValueError),
        (Struct("<bb"), (1,), ValueError),
        (Struct("<b"), 5, TypeError),
        (MsgPack(), object(), TypeError),
        (MsgPack(), 2**70, ValueError),
        (Pickle(), lambda: None, TypeError),
    ],
    ids=[
        "json-object",
        "json-nan",
        "struct-range",
        "struct-shape",
        "struct-not-tuple",
        "msgpack-object",
        "msgpack-bigint",
        "pickle-lambda",
    ],
)
def test_a_rejected_value_writes_nothing(
    tmp_path: Path, codec: Codec[Any], bad: Any, error: type[Exception]
) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        typed = wal.typed(codec)
        with pytest.raises(error):
            typed.append(bad)
        with pytest.raises(error):
            typed.append_and_sync(bad)
        assert wal.next_lsn == 0


def test_append_many_writes_nothing_of_a_batch_with_one_rejected_value(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        typed = wal.typed(Json())
        typed.append("kept")
        end = wal.next_lsn
        with pytest.raises(ValueError):
            typed.append_many(["a", "b", math.inf, "c"])
        assert wal.next_lsn == end
        assert [record.value for record in typed] == ["kept"]


def test_a_record_the_codec_cannot_read_names_its_lsn(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        wal.append(b'"fine"')
        lsn = wal.append(b"\xff not json")
        records = wal.typed(Json()).iter()
        assert next(records).value == "fine"
        with pytest.raises(ValueError, match=f"LSN {lsn}"):
            next(records)


def test_a_codec_that_returns_text_is_refused(tmp_path: Path) -> None:
    class Text:
        def encode(self, value: str) -> bytes:
            return value  # type: ignore[return-value]

        def decode(self, data: bytes) -> str:
            return data.decode()

    with mmwal.open(tmp_path / "a.wal") as wal:
        with pytest.raises(TypeError, match="not bytes"):
            wal.typed(Text()).append("x")
        assert wal.next_lsn == 0


def test_codecs_decode_garbage_as_value_error() -> None:
    for codec in (Json(), Struct("<q"), MsgPack(), Pickle()):
        with pytest.raises(ValueError):
            codec.decode(b"\xc1\x00garbage")


def test_json_bytes_are_standard_json() -> None:
    assert json.loads(Json().encode({"a": "é"})) == {"a": "é"}
    assert pickle.loads(Pickle().encode([1])) == [1]  # noqa: S301 - our own bytes


def test_follow_decodes_records_as_they_arrive(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        typed = wal.typed(Json())
        typed.append_many([{"n": 0}, {"n": 1}])
        seen = [record.value for record in typed.follow(timeout=0.2)]
        assert seen == [{"n": 0}, {"n": 1}]


def test_iter_checks_its_start_when_called(tmp_path: Path) -> None:
    with mmwal.open(tmp_path / "a.wal") as wal:
        wal.append(b'"x"')
        with pytest.raises((mmwal.CorruptionError, ValueError)):
            wal.typed(Json()).iter(3)


def test_the_public_modules_export_what_they_define() -> None:
    import mmwal.aio

    assert sorted(mmwal.codecs.__all__) == ["Codec", "Json", "MsgPack", "Pickle", "Struct"]
    assert sorted(mmwal.aio.__all__) == ["AsyncWal", "open"]
    for module in (mmwal.codecs, mmwal.aio):
        assert all(hasattr(module, name) for name in module.__all__)
