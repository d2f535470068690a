"""The wal-db 1.x record format written from the spec, sharing no code with mmwal.

Tests use it as an independent oracle: what mmwal writes must decode with it, and
what it encodes must open with mmwal.
"""

from __future__ import annotations

import struct

__all__ = ["spec_crc32c", "spec_frame"]


def _crc_table() -> list[int]:
    table: list[int] = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return table


_TABLE = _crc_table()


def spec_crc32c(data: bytes) -> int:
    """CRC-32C: poly 0x1EDC6F41 reflected (0x82F63B78), init and xorout 0xFFFFFFFF."""
    value = 0xFFFFFFFF
    for byte in data:
        value = _TABLE[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


def spec_frame(payload: bytes) -> bytes:
    """Return the frame of ``payload``: crc32c(length ++ payload), length, payload."""
    length = struct.pack("<I", len(payload))
    return struct.pack("<I", spec_crc32c(length + payload)) + length + payload
