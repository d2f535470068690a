"""What reading a log returns: ``WalIterator``, and batches cut at a stop."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._batches import RecordBatch
from ._errors import CorruptionError
from ._format import Record

if TYPE_CHECKING:
    from ._wal import Wal

__all__ = ["WalIterator", "batches_before"]


class WalIterator:
    """An iterator over records that also reports the damage it stepped over.

    ``skipped`` lists a ``CorruptionError`` for each damaged record passed over
    under ``RecoveryPolicy.SKIP_BAD_RECORDS``. For speed, ``iter()`` of it returns
    the underlying generator, so ``for`` loops run without a Python-level step.
    """

    __slots__ = ("_records", "_wal", "skipped")

    def __init__(self, wal: Wal, records: Iterator[Record], skipped: list[CorruptionError]):
        self._wal = wal
        self._records = records
        self.skipped = skipped

    def __iter__(self) -> Iterator[Record]:
        return self._records

    def __next__(self) -> Record:
        self._wal._check_open()
        return next(self._records)


def batches_before(batches: Iterator[RecordBatch], stop: int) -> Iterator[RecordBatch]:
    """Yield the batches of records before ``stop``, the last one cut short."""
    for batch in batches:
        if batch.end <= stop:
            yield batch
            continue
        kept = bisect.bisect_left(batch.lsns, stop)
        if kept:
            yield batch._head(kept)
        return
