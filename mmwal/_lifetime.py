"""What happened to a log since a reader began: close, truncations, views to release.

Every reader of a log (an iterator, a follower, a batch walk) holds a ``Watch``
on the log's ``Lifetime``. The log tells the lifetime before it changes bytes a
reader may be looking at; the reader asks its watch before it yields a record.

Rules kept here:

- ``epoch`` moves before anything changes: at every truncation (before a byte is
  zeroed or a mapping closed) and at close (before the store is closed). A reader
  that read bytes and then finds ``epoch`` unchanged knows they were the log's.
- A reader made before a truncation never yields a removed record: only LSNs in
  ``[low, high)`` of its watch survive every cut made since the watch began.
- Views into the mapping (``copy=False``, ``RecordBatch``) are released before a
  truncation or close can unmap what they point at: holders register here.
- A read-only handle learns of a writer's truncations in another process through
  ``remote``, a counter the writer bumps before it truncates (see ``_published``):
  a reader that finds it moved calls ``poll`` (the handle's refresh), which turns
  what the writer published into cuts here, before it yields anything more.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from typing import Protocol

from ._errors import WalClosedError, WalTruncatedError

__all__ = ["UNBOUNDED", "Lifetime", "ViewHolder", "Watch"]

#: An LSN past every LSN a log can hold: the ``high`` of a watch no cut bounded.
UNBOUNDED = 1 << 64

# How many cuts a lifetime remembers. A watch older than every cut remembered
# assumes its whole range was removed (it raises rather than guess).
_CUTS_KEPT = 256


class ViewHolder(Protocol):
    """A reader that hands out views into the mapping; ``release_views`` ends them."""

    def release_views(self) -> None:
        """Release every view this reader handed out or holds."""


class Lifetime:
    """The open/closed state and the truncation history of one open log."""

    __slots__ = ("__weakref__", "_cuts", "_holders", "epoch", "open", "poll", "remote", "seen")

    def __init__(self) -> None:
        self.open = True
        self.epoch = 0
        #: The writer's truncation counter (a one-item view into the state file of
        #: another process's writer), the value last taken in, and how to take in more.
        self.remote: memoryview | None = None
        self.seen = 0
        self.poll: Callable[[], object] | None = None
        # (epoch, low, high): after that epoch only LSNs in [low, high) of the
        # bytes before it remain.
        self._cuts: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=_CUTS_KEPT)
        self._holders: weakref.WeakSet[ViewHolder] = weakref.WeakSet()

    def truncated(self, low: int, high: int) -> None:
        """Record that only LSNs in ``[low, high)`` of the log remain; call before any change."""
        self.epoch += 1
        self._cuts.append((self.epoch, low, high))
        self.release_views()

    def close(self) -> None:
        """Record that the log is closing; call before the store is closed."""
        self.open = False
        self.epoch += 1
        self.release_views()

    def catch_up(self) -> None:
        """Take in a remote writer's truncations if its counter moved since the last look."""
        remote = self.remote
        if remote is not None and self.poll is not None and remote[0] != self.seen:
            self.poll()

    def register(self, holder: ViewHolder) -> None:
        """Have ``holder``'s views released at the next truncation or close."""
        self._holders.add(holder)

    def release_views(self) -> None:
        """Release the views of every registered holder."""
        for holder in list(self._holders):
            holder.release_views()

    def window(self, since: int) -> tuple[int, int]:
        """Return ``(low, high)``: the LSNs that survived every cut after epoch ``since``."""
        low, high = 0, UNBOUNDED
        cuts = self._cuts
        if cuts and len(cuts) == cuts.maxlen and cuts[0][0] > since + 1:
            return UNBOUNDED, 0  # cuts were forgotten: nothing is known to survive
        for epoch, cut_low, cut_high in cuts:
            if epoch > since:
                low = max(low, cut_low)
                high = min(high, cut_high)
        return low, high


class Watch:
    """One reader's view of a ``Lifetime``: which of its LSNs survived so far."""

    __slots__ = ("epoch", "high", "lifetime", "low")

    def __init__(self, lifetime: Lifetime) -> None:
        self.lifetime = lifetime
        self.epoch = lifetime.epoch
        self.low = 0
        self.high = UNBOUNDED

    @property
    def changed(self) -> bool:
        """Whether the log was truncated or closed since this watch last looked."""
        self.lifetime.catch_up()
        return self.lifetime.epoch != self.epoch

    def update(self) -> None:
        """Take in the cuts made since the last look; ``WalClosedError`` once closed."""
        lifetime = self.lifetime
        lifetime.catch_up()
        if not lifetime.open:
            raise WalClosedError()
        if lifetime.epoch == self.epoch:
            return
        low, high = lifetime.window(self.epoch)
        self.low = max(self.low, low)
        self.high = min(self.high, high)
        self.epoch = lifetime.epoch

    def check(self, lsn: int, *, look: bool = False) -> None:
        """Raise ``WalTruncatedError`` unless the record at ``lsn`` survived every cut.

        ``look`` asks a read-only handle to look at the writer's state first even
        if its counter did not move (a segment was found gone: the writer removes
        segments between its two announcements of a truncation).
        """
        if look and self.lifetime.poll is not None:
            self.lifetime.poll()
        self.update()
        if not self.low <= lsn < self.high:
            raise WalTruncatedError(lsn, _what(lsn, self.low))

    def restart(self, lsn: int) -> None:
        """Let a follower at ``lsn`` go on: keep its position, forget the cuts above it.

        A follower whose position is at or below every cut since it last looked
        lost nothing it yielded; records appended from the cut on are new to it.
        A position that was removed raises ``WalTruncatedError``.
        """
        self.update()
        if lsn < self.low or lsn > self.high:
            raise WalTruncatedError(lsn, _what(lsn, self.low))
        self.high = UNBOUNDED


def _what(lsn: int, low: int) -> str:
    if lsn < low:
        return f"truncate_before moved the head to {low}"
    return "truncate_after removed it"
