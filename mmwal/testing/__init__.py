"""Tools to prove crash safety: a power-loss simulator and a reusable store test suite.

``PowerLossStore`` (in ``_powerloss``) keeps the page cache and the disk apart and
produces every image a machine crash could leave; ``StoreTests`` (in
``_storetests``) is the behaviour suite any ``Store`` subclasses to prove it keeps
the store protocol. Both are public: other engines reuse them.
"""

from ._powerloss import LOG_FILE_NAME, CrashImage, MetadataOrder, PageFate, PowerLossStore
from ._storetests import StoreTests

__all__ = [
    "LOG_FILE_NAME",
    "CrashImage",
    "MetadataOrder",
    "PageFate",
    "PowerLossStore",
    "StoreTests",
]
