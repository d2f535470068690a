import mmap
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ._commit_machine import CommitMachine, Holder, Ticket
from ._published import EndsPublisher
from ._recovery_point import PointKeeper
from ._reservations import Reservations
from ._store import Buffer, Store

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
    def append_and_sync(self, data: Buffer, /) -> int: ...
    sync_to: Callable[[int], None] | None
    as_bytes: Callable[[object], bytes] | None

# A class at runtime (``_lock.c``), typed as the threading.Lock it behaves as:
# typeshed makes threading.Lock final.
def ReservationLock() -> threading.Lock: ...  # noqa: N802
def release_tickets(tickets: list[Ticket], /) -> None: ...
def machine_wakeups(machine: CommitMachineBase, holder_none: Holder, /) -> list[Ticket]: ...

class CommitMachineBase:
    broken: BaseException | None
    broken_by: str
    callers: int
    closed: bool
    durable_lsn: int
    exclusive_waiting: int
    flush_seconds: float
    flushes: int
    holder: Holder
    parked: list[tuple[int | None, Ticket]]
    syncs_requested: int
    waiting: int
    wakeups_issued: int

class GroupCommitBase:
    leader_yields: int
    _holder_leader: Holder
    _holder_none: Holder
    _holder_point: Holder
    _points: PointKeeper
    publisher: EndsPublisher | None
    _machine: CommitMachine
    _mutex: threading.Lock
    _readonly: bool
    _reservations: Reservations
    _store: Store
    def sync_to(self, target: int, /) -> None: ...

def put_ends_slot(
    mapping: Buffer,
    slot: bytearray,
    position: int,
    sequence: int,
    written: int,
    durable: int,
    head: int,
    /,
) -> None: ...

class EndsPublisherBase:
    _mapping: mmap.mmap
    _slot: bytearray
    _said: tuple[int, ...] | None
    _sequence: int
    _stride: int
    def flushed(self, end: int, head: int, /) -> None: ...

class PointKeeperBase:
    _flushed: tuple[int, int]
    saved_end: int | None
    _saved_at: float
    _quiet_until: float
    _interval_seconds: float
    _interval_bytes: int
    _unit: int
    _enabled: bool
    def note_flushed(self, start: int, end: int, now: float, /) -> bool: ...
