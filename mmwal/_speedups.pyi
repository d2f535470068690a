import threading
from collections.abc import Callable, Iterable
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

class ReservationsBase:
    appends: int
    fast_limit: int
    followers_waiting: int
    lock: threading.Lock
    next_lsn: int
    piece: Buffer
    piece_base: int

class Appender:
    def __init__(
        self,
        reservations: ReservationsBase,
        max_record_size: int,
        inline_copy_limit: int,
        fallback_one: Callable[[Buffer], int],
        fallback_many: Callable[[Iterable[Buffer]], list[int]],
        /,
    ) -> None: ...
    def append(self, data: Buffer, /) -> int: ...
    def append_many(self, records: Iterable[Buffer], /) -> list[int]: ...

# A class at runtime (``_lock.c``), typed as the threading.Lock it behaves as:
# typeshed makes threading.Lock final.
def ReservationLock() -> threading.Lock: ...  # noqa: N802
