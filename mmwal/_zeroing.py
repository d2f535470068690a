"""Find and zero the nonzero bytes of a buffer, a block at a time: no I/O.

A store's chunks are mostly zeros past the log's end (preallocated space), and
comparing a block with zeros costs a read where writing zeros costs a write-back:
these functions touch only blocks that hold a nonzero byte.
"""

from __future__ import annotations

from ._store import Buffer
from ._syscalls import PAGE_SIZE

__all__ = ["nonzero_bounds", "zero_nonzero"]

#: Compared against, a block at a time (16 pages: large enough that the
#: comparison, not the loop, costs the time).
ZERO_BLOCK = bytes(16 * PAGE_SIZE)


def nonzero_bounds(buffer: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """Return ``(first, last + 1)`` of the nonzero bytes of ``buffer[start:end]``, or None."""
    block = len(ZERO_BLOCK)
    first = last = -1
    local = start
    while local < end:
        stop = min(end, local + block - (local % block))
        piece = bytes(buffer[local:stop])  # a slice of a mmap is bytes already: no copy
        if piece != ZERO_BLOCK[: stop - local]:
            if first < 0:
                first = local + len(piece) - len(piece.lstrip(b"\0"))
            last = local + len(piece.rstrip(b"\0"))
        local = stop
    return None if first < 0 else (first, last)


def zero_nonzero(buffer: Buffer, start: int) -> tuple[int, int] | None:
    """Zero the blocks of ``buffer`` from ``start`` that hold a nonzero byte.

    Returns the range written (block-aligned), or None when everything was zero
    already. ``buffer`` must take slice assignment.
    """
    block = len(ZERO_BLOCK)
    first = last = -1
    local = start
    end = len(buffer)
    while local < end:
        stop = min(end, local + block - (local % block))
        if buffer[local:stop] != ZERO_BLOCK[: stop - local]:
            buffer[local:stop] = ZERO_BLOCK[: stop - local]  # type: ignore[index]
            if first < 0:
                first = local
            last = stop
        local = stop
    return None if first < 0 else (first, last)
