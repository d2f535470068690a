"""``TypedWal``: a log of values, through a codec, over an ordinary ``Wal``.

Rules kept here:

- The bytes written are exactly what the codec's ``encode`` returned: an untyped
  reader of the log sees them unchanged.
- Every value is encoded before anything is written, so a value the codec rejects
  (``TypeError`` or ``ValueError``) writes nothing; in ``append_many``, nothing of
  the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ._format import Record

if TYPE_CHECKING:
    from ._wal import Wal
    from .codecs import Codec

__all__ = ["TypedRecord", "TypedWal"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TypedRecord(Generic[T]):
    """A decoded record: its LSN and the value its codec decoded."""

    lsn: int
    value: T


class TypedWal(Generic[T]):
    """A log of values: ``append(value)`` encodes with the codec, iteration decodes.

    Made by ``wal.typed(codec)``; it shares the ``Wal`` (and its durability
    contract: see ``Wal.append`` and ``Wal.sync``), which still owns the files and
    must be closed. A record whose payload the codec cannot decode raises
    ``ValueError`` naming its LSN.
    """

    __slots__ = ("codec", "wal")

    def __init__(self, wal: Wal, codec: Codec[T]) -> None:
        """Wrap ``wal`` so that values go through ``codec``; prefer ``wal.typed(codec)``."""
        self.wal = wal
        self.codec = codec

    def _encode(self, value: T) -> bytes:
        payload = self.codec.encode(value)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"{self.codec!r}.encode returned {type(payload).__name__}, not bytes")
        return bytes(payload)

    def _decode(self, record: Record) -> TypedRecord[T]:
        try:
            value = self.codec.decode(bytes(record.data))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"the record at LSN {record.lsn} cannot be decoded by {self.codec!r}: {error} "
                f"(hint: read it with Wal.iter to see its bytes)"
            ) from error
        return TypedRecord(record.lsn, value)

    def append(self, value: T) -> int:
        """Encode ``value`` and append it; return its LSN. Crash cost: as ``Wal.append``."""
        return self.wal.append(self._encode(value))

    def append_many(self, values: Iterable[T]) -> list[int]:
        """Encode every value, then append them all or none; return their LSNs.

        Crash cost: as ``Wal.append_many`` (a crash may keep a prefix of the batch).
        """
        return self.wal.append_many([self._encode(value) for value in values])

    def append_and_sync(self, value: T) -> int:
        """Encode ``value``, append it and make it durable; return its LSN.

        Crash cost: none once it returns.
        """
        return self.wal.append_and_sync(self._encode(value))

    def sync(self) -> None:
        """Make every value appended before this call durable; see ``Wal.sync``."""
        self.wal.sync()

    def iter(self, start: int | None = None) -> Iterator[TypedRecord[T]]:
        """Decode the records from the head (or ``start``) to the end at the time of the call.

        ``start`` is checked now, as ``Wal.iter`` checks it, not at the first step.
        """
        return self._decoded(self.wal.iter(start))

    def _decoded(self, records: Iterable[Record]) -> Iterator[TypedRecord[T]]:
        for record in records:
            yield self._decode(record)

    def __iter__(self) -> Iterator[TypedRecord[T]]:
        """Decode every record from the head; see ``iter``."""
        return self.iter()

    def follow(
        self,
        start: int | None = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
    ) -> Iterator[TypedRecord[T]]:
        """Decode records from ``start`` on, waiting for new ones; see ``Wal.follow``.

        ``durable=True`` yields only what a sync made durable, so a crash cannot
        take back a value this has yielded.
        """
        return self._decoded(self.wal.follow(start, timeout=timeout, durable=durable))

    def __repr__(self) -> str:
        return f"<TypedWal {self.codec!r} over {self.wal!r}>"
