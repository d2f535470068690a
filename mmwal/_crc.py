"""CRC-32C (Castagnoli), from the hardware ``crc32c`` package or ``crcmod``'s C extension.

Both backends compute the same function: poly 0x1EDC6F41 reflected, init and xorout
0xFFFFFFFF, check value ``crc32c(b"123456789") == 0xE3069283``. Each takes the
running value of a previous call as its second argument, so a checksum can be
computed over pieces without joining them.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BACKEND", "CHECK_VALUE", "Crc32c", "crc32c", "crcmod_crc32c", "hardware_crc32c"]

Crc32c = Callable[..., int]
"""``crc(data, value=0) -> int``: CRC-32C of ``data`` continuing from ``value``."""

CHECK_VALUE = 0xE3069283

hardware_crc32c: Crc32c | None
try:
    from crc32c import crc32c as hardware_crc32c
except ImportError:  # pragma: no cover - depends on the installed wheels
    hardware_crc32c = None

crcmod_crc32c: Crc32c | None
try:
    import crcmod.predefined

    crcmod_crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
except ImportError:  # pragma: no cover - depends on the installed wheels
    crcmod_crc32c = None

if hardware_crc32c is not None:
    crc32c: Crc32c = hardware_crc32c
    BACKEND = "crc32c"
elif crcmod_crc32c is not None:  # pragma: no cover - depends on the installed wheels
    crc32c = crcmod_crc32c
    BACKEND = "crcmod"
else:  # pragma: no cover - depends on the installed wheels
    raise ImportError(
        "mmwal needs a CRC-32C implementation: pip install crc32c (or crcmod as the fallback)"
    )

if crc32c(b"123456789") != CHECK_VALUE:  # pragma: no cover - a broken wheel
    raise ImportError(f"the {BACKEND} backend computes a wrong CRC-32C check value")
