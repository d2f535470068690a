"""Getting a segment's bytes into an archive and checking what landed, per backend.

Rules kept here:

- Nothing is published by this module: it uploads under a key no other upload
  uses and proves the object whole, or removes it and raises ``OSError``.
- What landed is checked for its size and its CRC-32C. On S3 the check is S3's
  own: the PUT carries the CRC-32C (``x-amz-checksum-crc32c``), S3 refuses a
  body that does not match it (``BadDigest``), and a HEAD reads back the size
  and the checksum S3 stored (no read-back: it would double the transfer). moto,
  the S3 the tests run against, stores the header without checking the body
  against it, so there the size is the server's finding and the checksum only
  ours echoed. Everywhere else the object is read back and its CRC-32C
  computed here.
- On a local directory every write is fsynced (file, then directory) before
  anything depends on it: an object store's write is durable when it returns,
  a file's is not.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

from ._crc import crc32c

__all__ = ["Target"]

# The largest single PUT S3 takes; larger segments go through fsspec's multipart
# upload and are read back.
_S3_PUT_LIMIT = 5 << 30
_CHUNK = 8 << 20


def _b64_crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


class Target:
    """An fsspec file system, and how writes to it are checked and made durable."""

    def __init__(self, filesystem: Any) -> None:
        """Look at ``filesystem``'s protocol to pick the checks it supports."""
        self.fs = filesystem
        protocols = filesystem.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        self.local = "file" in protocols or "local" in protocols
        self.s3 = bool({"s3", "s3a"} & set(protocols)) and hasattr(filesystem, "call_s3")

    def upload_verified(self, local_path: str, path: str, size: int, crc: int) -> None:
        """Upload the file at ``local_path`` to ``path`` and prove it landed whole.

        ``size`` and ``crc`` are what the file was found to hold when it was
        sealed. If anything else landed, the object is removed and ``OSError``
        raised. Streams from the file: no copy of the segment in memory.
        """
        if self.s3 and size <= _S3_PUT_LIMIT:
            landed = self._put_s3(local_path, path, crc)
        else:
            self.fs.put_file(local_path, path)
            landed = self._read_back(path)
        if landed != (size, crc):
            self.fs.rm_file(path)
            raise OSError(
                f"{path} did not land intact (found {landed[0]} bytes, CRC-32C "
                f"{landed[1]:#010x}; expected {size}, {crc:#010x}); it was removed and "
                f"nothing was published: push again"
            )
        self.make_durable(path)

    def _read_back(self, path: str) -> tuple[int, int]:
        """Return the size and CRC-32C of the object at ``path``, read in chunks."""
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        size = value = 0
        with self.fs.open(path, "rb") as remote:
            while count := remote.readinto(buffer):
                value = crc32c(view[:count], value)
                size += count
        return size, value

    def _put_s3(self, local_path: str, path: str, crc: int) -> tuple[int, int]:
        bucket, key, _ = self.fs.split_path(path)
        checksum = _b64_crc(crc)
        with open(local_path, "rb") as body:
            self.fs.call_s3(
                "put_object",
                Bucket=bucket,
                Key=key,
                Body=body,
                ChecksumAlgorithm="CRC32C",
                ChecksumCRC32C=checksum,
            )
        self.fs.invalidate_cache(path)
        head = self.fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        stored = head.get("ChecksumCRC32C")
        landed_crc = int.from_bytes(base64.b64decode(stored), "big") if stored else -1
        return int(head["ContentLength"]), landed_crc

    def write_small(self, path: str, data: bytes) -> None:
        """Write a small object so that it appears whole or not at all, durably."""
        if not self.local:
            self.fs.pipe_file(path, data)  # one PUT: atomic on an object store
            return
        temporary = f"{path}.{uuid.uuid4().hex[:16]}.tmp"
        self.fs.pipe_file(temporary, data)
        self._fsync(temporary)
        self.fs.mv(temporary, path)
        self._fsync(os.path.dirname(path))

    def make_durable(self, path: str) -> None:
        """On a local directory, fsync the file at ``path`` and its directory entry."""
        if self.local:
            self._fsync(path)
            self._fsync(os.path.dirname(path))

    @staticmethod
    def _fsync(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
