from typing import Any

from ._store import Buffer

HARDWARE_CRC: int

def scan(
    buffer: Buffer,
    start: int,
    limit: int,
    base: int,
    max_record_size: int,
    record_type: type[tuple[Any, ...]] | None,
    max_records: int,
    max_bytes: int,
    /,
) -> tuple[list[Any] | None, int, int]: ...
def frames(
    buffer: Buffer,
    start: int,
    limit: int,
    base: int,
    max_record_size: int,
    max_records: int,
    max_bytes: int,
    /,
) -> tuple[bytes, bytes, bytes, int]: ...
def record_views(
    view: memoryview,
    lsns: Buffer,
    offsets: Buffer,
    lengths: Buffer,
    start: int,
    stop: int,
    record_type: type[tuple[Any, ...]],
    /,
) -> list[Any]: ...
def crc32c(data: Buffer, value: int = 0, /) -> int: ...
def encode_frame(payload: bytes, /) -> bytes: ...
def encode_frames(payloads: list[bytes], /) -> bytes: ...
