"""What ``StoreTests`` uses to reach into a store: a held flush, a store refusing piece writes.

``FlushHold`` stops a store's flush inside the ``Syscalls`` seam (``held_syscalls``
makes a ``Syscalls`` class, the power-loss simulator too, whose data flushes wait
on it), so a test can grow the store while the flush is in the middle.
``PieceWritesRefused`` wraps any store, declares no ``writes_into_pieces`` and
hands out pieces that refuse assignment: a log over it that writes into a piece
fails at once instead of losing the bytes.
"""

from __future__ import annotations

import threading
from typing import TypeVar, cast

from mmwal._store import Buffer, Store
from mmwal._syscalls import Syscalls

__all__ = ["HOLD_DEADLINE", "FlushHold", "PieceWritesRefused", "held_syscalls"]

#: Seconds a held flush waits for its release, and a test for what it waits on,
#: before the test fails (a deadlock shows up as a failure, not a hang).
HOLD_DEADLINE = 30.0

_S = TypeVar("_S", bound=Syscalls)


class FlushHold:
    """Hold the first data flush after ``arm`` until ``release``.

    The store's seam calls ``reached`` at the start of every data flush (``msync``,
    ``fdatasync``); the armed one sets ``entered`` and waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._released = threading.Event()
        #: Set when the held flush is waiting in the seam.
        self.entered = threading.Event()

    def arm(self) -> None:
        """Hold the next data flush that starts."""
        with self._lock:
            self._armed = True

    def reached(self) -> None:
        """Wait here if this is the armed flush; return at once otherwise."""
        with self._lock:
            held, self._armed = self._armed, False
        if not held:
            return
        self.entered.set()
        if not self._released.wait(HOLD_DEADLINE):
            # Not an OSError: a flush failure the store would report as the disk's.
            raise RuntimeError("a held flush was never released")

    def release(self) -> None:
        """Let the held flush go on (and every later one pass); harmless twice."""
        with self._lock:
            self._armed = False
        self._released.set()


def held_syscalls(base: type[_S], hold: FlushHold) -> type[_S]:
    """Return a subclass of ``base`` whose ``msync`` and ``fdatasync`` call ``hold.reached`` first.

    The hold waits before ``base``'s call starts (outside any lock ``base`` takes),
    as a slow disk would. Instances take ``base``'s arguments, so a simulator's
    images open with the same class.
    """

    def msync(self: Syscalls, address: int, length: int) -> None:
        hold.reached()
        base.msync(self, address, length)

    def fdatasync(self: Syscalls, fd: int) -> None:
        hold.reached()
        base.fdatasync(self, fd)

    namespace = {"msync": msync, "fdatasync": fdatasync, "__doc__": base.__doc__}
    return cast("type[_S]", type(f"Held{base.__name__}", (base,), namespace))


class _RefusedPiece(bytes):
    """A copy of a piece's bytes that fails loudly when written to."""

    __slots__ = ()

    def __setitem__(self, key: object, value: object) -> None:
        raise AssertionError(
            "the log wrote into a piece of a store that does not declare writes_into_pieces"
        )


class PieceWritesRefused(Store):
    """Wrap ``inner``: the same bytes, but pieces are read-only copies and not declared writable.

    Counts ``write`` calls, so a test can see the log's frames went through it.
    """

    writes_into_pieces = False

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.location = inner.location
        self.writable = inner.writable
        #: How many times ``write`` was called.
        self.writes = 0

    @property
    def head_lsn(self) -> int:
        return self.inner.head_lsn

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def piece(self, offset: int) -> tuple[Buffer, int, int]:
        buffer, base, limit = self.inner.piece(offset)
        return _RefusedPiece(buffer[0 : limit - base]), base, limit

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def write(self, offset: int, data: Buffer) -> None:
        self.writes += 1
        self.inner.write(offset, data)

    def ensure_capacity(self, end: int) -> None:
        self.inner.ensure_capacity(end)

    def flush(self, start: int, end: int) -> None:
        self.inner.flush(start, end)

    def discard_after(self, end: int) -> None:
        self.inner.discard_after(end)

    def drop_before(self, offset: int) -> int:
        return self.inner.drop_before(offset)

    def close(self) -> None:
        self.inner.close()

    def nonzero_extent(self, start: int) -> tuple[int, int] | None:
        return self.inner.nonzero_extent(start)

    def release(self, end: int) -> None:
        self.inner.release(end)

    def prepare_end(self, end: int) -> None:
        self.inner.prepare_end(end)

    def quarantine(self, start: int, end: int) -> str | None:
        return self.inner.quarantine(start, end)

    @property
    def unit_size(self) -> int:
        return self.inner.unit_size

    def load_side_file(self, name: str) -> bytes | None:
        return self.inner.load_side_file(name)

    def save_side_file(self, name: str, data: bytes) -> bool:
        return self.inner.save_side_file(name, data)

    def remove_side_file(self, name: str) -> None:
        self.inner.remove_side_file(name)

    @property
    def units_created(self) -> int:
        return self.inner.units_created
