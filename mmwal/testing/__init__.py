"""Tools to prove crash safety: a power-loss simulator and a reusable store test suite.

``PowerLossSimulator`` is a ``Syscalls`` that runs the real ``FileStore`` and
``SegmentStore`` over real files (the page cache) while it keeps a simulated disk
beside them (``_simdisk``: what was written back, which metadata is durable); it
returns every image a machine crash could leave (``_simimage``: pages old, new,
earlier or torn by sectors; metadata as an ordered prefix or any subset), each
opened again with the real stores. ``StoreTests`` (in ``_storetests``) is the
behaviour suite any ``Store`` subclasses to prove it keeps the store protocol;
``FlushHold`` and ``held_syscalls`` hold a store's flush inside the seam for its
hook ``make_held_store``, and ``PieceWritesRefused`` wraps a store as one that
does not declare ``writes_into_pieces``.
"""

from ._simdisk import MetadataOrder
from ._simimage import LOG_FILE_NAME, SEGMENT_DIRECTORY, CrashImage, Layout, PageFate
from ._simjournal import PowerLossSimulator
from ._storetests import StoreTests
from ._storetools import FlushHold, PieceWritesRefused, held_syscalls

__all__ = [
    "LOG_FILE_NAME",
    "SEGMENT_DIRECTORY",
    "CrashImage",
    "FlushHold",
    "Layout",
    "MetadataOrder",
    "PageFate",
    "PieceWritesRefused",
    "PowerLossSimulator",
    "StoreTests",
    "held_syscalls",
]
