"""The size of a log's segments: the default, and the size its files imply.

Pure functions over ``(name, size)`` lists, no I/O: the stores, repair and the
local archive each list the files and ask here.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SEGMENT_SIZE", "infer_segment_size"]

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024


def infer_segment_size(sizes: list[tuple[str, int]], requested: int | None) -> int:
    """Return the segment size of files ``[(name, size), ...]`` in index order.

    Every file but the last has the segment size; the last may be shorter (wal-db
    leaves it so). ``requested`` must agree with the files, else ``ValueError``.
    A lone file is taken at its size, which is right for mmwal's own segments
    (always full) and ambiguous for a lone short file wal-db left: pass the size.
    """
    if requested is not None and (
        isinstance(requested, bool) or not isinstance(requested, int) or requested <= 0
    ):
        raise ValueError(f"segment_size must be a positive int, got {requested!r}")
    if not sizes:
        return requested if requested is not None else DEFAULT_SEGMENT_SIZE
    if requested is None:
        size = sizes[0][1]
        if size == 0:
            if len(sizes) == 1:
                # Created, then the crash came before it was allocated: no size to
                # learn from it, and no byte in it.
                return DEFAULT_SEGMENT_SIZE
            raise ValueError(
                f"cannot infer the segment size: {sizes[0][0]} is empty but is not the "
                f"last segment (hint: pass segment_size= explicitly)"
            )
    else:
        size = requested
    for position, (name, file_size) in enumerate(sizes):
        is_last = position == len(sizes) - 1
        if file_size > size or (not is_last and file_size != size):
            hint = (
                f"open with segment_size={file_size}, or None to infer it"
                if file_size
                else "an empty segment before the last one is not a log mmwal wrote"
            )
            raise ValueError(
                f"segment_size={size} contradicts the files on disk: {name} is "
                f"{file_size} bytes (hint: {hint})"
            )
    return size
