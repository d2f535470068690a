from collections.abc import Callable
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

class RecordViews:
    def __init__(
        self,
        feed: Callable[
            [int | None], tuple[memoryview, Buffer, Buffer, Buffer, Buffer | None, int] | None
        ],
        record_type: type[tuple[Any, ...]],
    ) -> None: ...
    def __iter__(self) -> RecordViews: ...
    def __next__(self) -> Any: ...
    def release_views(self) -> None: ...
    def close(self) -> None: ...

def crc32c(data: Buffer, value: int = 0, /) -> int: ...
def encode_frame(payload: bytes, /) -> bytes: ...
def encode_frames(payloads: list[bytes], /) -> bytes: ...
