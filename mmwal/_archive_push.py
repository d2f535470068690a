"""One push's segments, in order, through three overlapping stages.

Per segment: *seal* (open it, check every frame, CRC-32C its bytes), *upload*
(copy it; on an object store, check the size and CRC-32C of what landed),
*finish* (on a local directory, read the copy back for its size and CRC-32C,
fsync it and its directory entry), then *publish* (check what landed, write
its manifest entry). Segment ``i + 1`` is sealed in one worker thread and segment
``i - 1`` finished in another while segment ``i`` uploads: the checks, the copy
and the disk's write-back each take a share of the time, and run side by side.

Rules kept here:

- Entries are written by the calling thread, in index order, and one is written
  only after its segment's upload was verified and its finish returned: the
  guarantees are those of a push one segment at a time.
- A segment stays open (descriptor and mapping) from its seal until its upload
  ends, and is read only through them.
- Every fsspec call is made by the calling thread, in the order of a push one
  segment at a time; the workers only read files and fsync.
- However the push ends, no worker is left running and no segment left open.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ._archive_local import LocalLog, OpenSegment
from ._archive_transfer import Target
from ._crc import crc32c
from ._manifest import ArchivedSegment, object_name

__all__ = ["SegmentGoneError", "push_segments"]


class SegmentGoneError(Exception):
    """A segment the push listed was removed by a truncation before it was read."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class _Sealed:
    """A sealed segment, held open, and the entry that will publish it."""

    segment: OpenSegment
    entry: ArchivedSegment
    closing: contextlib.ExitStack


def _seal(log: LocalLog, index: int, first_lsn: int, listed: set[int]) -> _Sealed | None:
    """Open segment ``index`` and return it with its entry if it is sealed, else ``None``.

    Raises ``SegmentGoneError`` if it was listed and a truncation removed it
    (before it was opened, or before the frame crossing out of it was read).
    """
    with contextlib.ExitStack() as closing:
        segment = closing.enter_context(log.opened_segment(index))
        following = None if segment is None else log.seal(index, segment.data, first_lsn)
        if segment is None or following is None:
            if index in listed and log.head_segment_now() > index:
                raise SegmentGoneError(index)
            return None
        entry = ArchivedSegment(
            index=index,
            first_lsn=first_lsn,
            size=len(segment.data),
            crc32c=crc32c(segment.data),
            segment_size=log.segment_size,
            next_record_lsn=following,
            object_name=object_name(index, uuid.uuid4().hex[:16]),
        )
        return _Sealed(segment, entry, closing.pop_all())
    return None  # pragma: no cover - the block returns or raises


def _discard(sealing: Future[_Sealed | None] | None) -> None:
    """Wait for a seal nobody will upload, and close what it opened."""
    if sealing is None:
        return
    with contextlib.suppress(BaseException):
        sealed = sealing.result()
        if sealed is not None:
            sealed.closing.close()


def push_segments(
    log: LocalLog,
    target: Target,
    start: tuple[int, int],
    *,
    up_to: int | None,
    listed: set[int],
    path_of: Callable[[ArchivedSegment], str],
    publish: Callable[[ArchivedSegment], None],
) -> int | None:
    """Push the sealed segments from ``start`` (index, first record start) on.

    Each is uploaded to ``path_of(entry)``, verified, made durable, then handed
    to ``publish``, in index order. Stops before index ``up_to`` (if given) and
    at the first segment that is not sealed. Returns the index of a listed
    segment a truncation removed before it was read, if the push stopped there.
    """
    index, first_lsn = start
    if up_to is not None and index >= up_to:
        return None
    sealer = ThreadPoolExecutor(1, "mmwal-archive-seal")
    finisher = ThreadPoolExecutor(1, "mmwal-archive-fsync")
    sealing: Future[_Sealed | None] | None = sealer.submit(_seal, log, index, first_lsn, listed)
    finishing: _Finishing | None = None
    try:
        while sealing is not None:
            try:
                sealed = sealing.result()
            finally:
                sealing = None
            if sealed is None:
                break
            entry = sealed.entry
            with sealed.closing:
                if up_to is None or entry.index + 1 < up_to:
                    sealing = sealer.submit(
                        _seal, log, entry.index + 1, entry.next_record_lsn, listed
                    )
                target.upload(sealed.segment, path_of(entry), entry.crc32c)
            if not target.local:
                publish(entry)  # durable once the upload returned: nothing to wait for
                continue
            finished, finishing = finishing, None
            _publish(finished)
            path = path_of(entry)
            finishing = _Finishing(
                target, entry, path, finisher.submit(target.finish_local, path), publish
            )
    except SegmentGoneError as gone:
        _publish(finishing)
        return gone.index
    except Exception:
        # What is verified and durable is published as a push one segment at a
        # time would have: a failure at segment i leaves segments below i archived.
        with contextlib.suppress(Exception):
            _publish(finishing)
        raise
    finally:
        _discard(sealing)
        sealer.shutdown(wait=True)
        finisher.shutdown(wait=True)
    _publish(finishing)
    return None


def _publish(finishing: _Finishing | None) -> None:
    if finishing is not None:
        finishing.publish()


@dataclass
class _Finishing:
    """A local copy being read back and fsynced in the background, and how to publish it."""

    target: Target
    entry: ArchivedSegment
    path: str
    landed: Future[tuple[int, int]]
    publisher: Callable[[ArchivedSegment], None]

    def publish(self) -> None:
        """Once the copy is durable and checks, publish it (else remove it and raise)."""
        self.target.check_landed(
            self.path, self.landed.result(), self.entry.size, self.entry.crc32c
        )
        self.publisher(self.entry)
