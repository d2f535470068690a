"""Following a log live: ``Wal.follow`` and ``Wal.refresh``, and their set-up at open.

On the writer's own handle a follower waits on a condition that appends,
flushes, truncations and close signal: no polling. On a ``readonly=True`` handle
(another process, usually) it polls: ``refresh`` maps what the writer added and
checks the new frames by CRC, and between polls the follower sleeps with a
backoff, so an idle follower costs almost nothing and a busy one stays close
behind the writer. (inotify and fanotify do not see writes made through a
mapping, so there is nothing to wait on across processes.)

Rules kept here:

- A follower yields every record from its start in order and exactly once; it
  never yields a record removed by a truncation: a follower whose position was
  removed raises ``WalTruncatedError``; one standing at or below a cut goes on
  with the records appended from the cut.
- ``durable=True`` yields only records below the durable end: the writer's
  ``durable_lsn``, or on a read-only handle the durable end the writer published.
- ``refresh`` reads the published state after it scanned the frames, so a
  truncation that changed bytes the scan read is always seen before any of them
  is yielded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._errors import WalClosedError, WalTruncatedError
from ._format import HEADER_SIZE, Record, scan_frames
from ._lifetime import UNBOUNDED, Watch
from ._published import EndsPublisher, EndsReader, ends_path
from ._reading import frame_at

if TYPE_CHECKING:
    from ._wal import Wal

__all__ = ["PollState", "follow", "refresh", "start_following"]

# The backoff of a polling follower: its first sleep after finding nothing, and
# its longest, which bounds both its idle cost and its latency after a lull.
_FIRST_SLEEP = 50e-6
_LONGEST_SLEEP = 20e-3


class PollState:
    """What a read-only handle knows of the writer: the state file, the cuts seen."""

    __slots__ = ("epoch", "reader")

    def __init__(self, wal: Wal) -> None:
        self.reader = EndsReader(ends_path(wal.store))
        ends = self.reader.read()
        self.epoch = ends.epoch if ends is not None else 0


def start_following(wal: Wal, end: int) -> PollState | None:
    """Publish the ends for followers (a writer), or find the writer's (a reader).

    Return a read-only handle's ``PollState``, ``None`` for a writer's.
    """
    store = wal.store
    path = ends_path(store)
    if not store.writable:
        poll = PollState(wal)
        counter = poll.reader.counter
        wal._lifetime.remote = counter
        wal._lifetime.seen = counter[0] if counter is not None else 0
        wal._lifetime.poll = wal.refresh
        # A live writer's unsynced records are in the page cache, so recovery
        # found them: the writer's published durable end is the truth.
        ends = poll.reader.read()
        if ends is not None:
            wal._group_commit.refreshed(max(min(ends.durable, end), store.head_lsn))
        return poll
    if path is not None:
        wal._group_commit.publisher = EndsPublisher.for_store(store)
        wal._group_commit.publish(end)
    return None


def _scan_from(wal: Wal, position: int) -> tuple[int, bool]:
    """Return where the good frames from ``position`` end within the mapped bytes.

    Also says whether the frame there may go on past the last mapped byte, into a
    segment (or window) the writer added since: then the store should look.
    """
    try:
        return _scan_mapped(wal, position)
    except FileNotFoundError:
        # A segment the writer removed (truncate_after) since it was mapped: the
        # frames end here for now; the cut it published says the rest.
        return position, False


def _scan_mapped(wal: Wal, position: int) -> tuple[int, bool]:
    store = wal.store
    limit = store.capacity
    max_record_size = wal.config.max_record_size
    if position >= limit:
        return position, True
    while position < limit:
        buffer, base, piece_limit = store.piece(position)
        scan = scan_frames(
            buffer,
            position - base,
            piece_limit - base,
            base=base,
            max_record_size=max_record_size,
            collect=False,
        )
        if scan.end > position:
            position = scan.end
            continue
        if scan.stop is not None and scan.stop.name.startswith("SHORT") and piece_limit < limit:
            crossing = frame_at(store, position, limit, max_record_size)
            if crossing.stop is None:
                position = crossing.end
                continue
            return position, crossing.stop.name.startswith("SHORT")
        return position, scan.stop is not None and scan.stop.name.startswith("SHORT")
    return position, True


_NO_HEADER = bytes(HEADER_SIZE)


def _nothing_new(wal: Wal, position: int) -> bool:
    """Say, cheaply, whether the log certainly ends at ``position`` (a zero header there)."""
    store = wal.store
    if position + HEADER_SIZE > store.capacity:
        return False
    try:
        buffer, base, _ = store.piece(position)
    except (ValueError, OSError):
        return False
    return buffer[position - base : position - base + HEADER_SIZE] == _NO_HEADER


def _scan_all(wal: Wal, position: int) -> int:
    """Return where the good frames from ``position`` end, mapping what the writer added."""
    if _nothing_new(wal, position):
        return position  # the idle poll: one 8-byte compare
    while True:
        end, at_edge = _scan_from(wal, position)
        if not at_edge:
            return end
        capacity = wal.store.capacity
        wal.store.refresh(wal.store.head_lsn)  # type: ignore[attr-defined]
        if wal.store.capacity == capacity:
            return end
        position = end


def refresh(wal: Wal, state: PollState) -> int:
    """Take in what a live writer did since the last look; return the new end.

    Call with ``wal._reserve`` held. Maps new segments, checks new frames by CRC,
    and applies the truncations the writer published (or, for a log without the
    state file, a head file that moved).
    """
    store = wal.store
    lifetime = wal._lifetime
    end = _scan_all(wal, wal._reservations.next_lsn)
    # The counter before the slots: a truncation announced after this read is
    # seen by the next look, and none announced before it is missed.
    counter = state.reader.counter
    seen = counter[0] if counter is not None else 0
    ends = state.reader.read()
    if ends is not None and ends.epoch != state.epoch:
        missed = [high for epoch, high in ends.cuts if epoch > state.epoch]
        known = ends.epoch - state.epoch == len(missed)
        cut = min(missed, default=UNBOUNDED) if known else store.head_lsn
        state.epoch = ends.epoch
        if cut < end:
            # Everything from the cut was removed (and maybe written again):
            # readers made before must not yield it; scan the new bytes.
            lifetime.truncated(0, cut)
            store.refresh(store.head_lsn, cut)  # type: ignore[attr-defined]
            end = _scan_all(wal, max(cut, store.head_lsn))
    head = store.head_lsn
    if ends is None or ends.head > head:
        # The head file decides. The state only says the head may have moved: it
        # is published before the file is replaced, and a foreign one may name
        # anything; the writer bumps the counter again once the file is in place.
        named = store.read_head()  # type: ignore[attr-defined]
        head = max(head, named if ends is None else min(named, ends.head))
    if head > store.head_lsn:
        lifetime.truncated(head, UNBOUNDED)
        store.refresh(head)  # type: ignore[attr-defined]
        end = max(end, head)
        if end == head:
            end = _scan_all(wal, head)
    lifetime.remote = state.reader.counter
    lifetime.seen = seen
    wal._reservations.next_lsn = end
    durable = min(ends.durable, end) if ends is not None else wal._end_at_open
    wal._group_commit.refreshed(max(min(durable, end), store.head_lsn))
    return end


def follow(
    wal: Wal,
    start: int,
    *,
    timeout: float | None,
    durable: bool,
    copy: bool,
) -> Iterator[Record]:
    """Return a follower from ``start``; see ``Wal.follow``.

    Its watch begins now, not at the first ``next``: a truncation that removes
    ``start`` before the follower starts makes it raise ``WalTruncatedError``.
    """
    return _follow(wal, start, Watch(wal._lifetime), timeout=timeout, durable=durable, copy=copy)


def _follow(
    wal: Wal,
    start: int,
    watch: Watch,
    *,
    timeout: float | None,
    durable: bool,
    copy: bool,
) -> Iterator[Record]:
    position = start
    readonly = not wal.store.writable
    pause = _FIRST_SLEEP
    last_news = time.monotonic()
    while True:
        if wal.closed:
            return
        try:
            end = _follow_end(wal, durable=durable)
        except WalClosedError:
            return
        if watch.changed or not watch.low <= position < watch.high:
            try:
                watch.restart(position)
            except WalClosedError:
                return
        if position < end:
            walk = wal._read(position, end, watch, [], copy=copy)
            try:
                for record in walk:
                    position = record[0] + HEADER_SIZE + len(record[1])
                    yield record
            except WalTruncatedError:
                # Removed, or standing at a cut with new records past it.
                watch.restart(position)
                continue
            except WalClosedError:
                return
            pause = _FIRST_SLEEP
            last_news = time.monotonic()
            continue
        remaining = None if timeout is None else timeout - (time.monotonic() - last_news)
        if remaining is not None and remaining <= 0:
            return
        if readonly:
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _LONGEST_SLEEP)
        else:
            _wait_for_news(wal, position, watch.epoch, durable=durable, timeout=remaining)


def _follow_end(wal: Wal, *, durable: bool) -> int:
    """Return how far a follower may read now: the written or the durable end."""
    wal._check_open()
    if wal._poll is not None:
        with wal._reserve:
            end = refresh(wal, wal._poll)
        return min(end, wal._group_commit.durable_lsn) if durable else end
    if durable:
        return wal._group_commit.durable_lsn
    with wal._reserve:
        return wal._written_lsn()


def _wait_for_news(
    wal: Wal, position: int, epoch: int, *, durable: bool, timeout: float | None
) -> None:
    """Wait until the log passes ``position``, is truncated or closed, or ``timeout``."""
    reservations = wal._reservations
    arrivals = reservations.arrivals
    with arrivals:
        reservations.followers_waiting += 1
        try:
            # Read after announcing the wait: an append this read misses sees
            # the waiter and notifies under the same lock.
            end = wal._group_commit.durable_lsn if durable else wal._written_lsn()
            if end <= position and not reservations.closing and wal._lifetime.epoch == epoch:
                arrivals.wait(timeout)
        finally:
            reservations.followers_waiting -= 1
