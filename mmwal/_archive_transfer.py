"""Getting a segment's bytes into an archive and checking what landed, per backend.

Rules kept here:

- Nothing is published by this module: it uploads under a key no other upload
  uses and proves the object whole, or removes it and raises ``OSError``.
- What landed is checked for its size and its CRC-32C. On S3 the check is S3's
  own: the PUT carries the CRC-32C (``x-amz-checksum-crc32c``), S3 refuses a
  body that does not match it (``BadDigest``), and a HEAD reads back the size
  and the checksum S3 stored (no read-back: it would double the transfer). moto,
  the S3 the tests run against, stores the header without checking the body
  against it; the tests also run it made to store the body's own checksum, as
  S3 does. Everywhere else the object is read back once and its CRC-32C
  computed here (a local file through a mapping of it).
- The segment is read through the descriptor and mapping the push holds,
  never through its path: a truncation that removes the file meanwhile
  changes nothing that is uploaded.
- On a local directory every write is fsynced (file, then directory) before
  anything depends on it: an object store's write is durable when it returns,
  a file's is not.
"""

from __future__ import annotations

import base64
import mmap
import os
import sys
import uuid
from typing import Any

from ._archive_local import OpenSegment
from ._crc import crc32c

__all__ = ["Target"]

# The largest single PUT S3 takes; larger segments go through fsspec's multipart
# upload and are read back.
_S3_PUT_LIMIT = 5 << 30
_CHUNK = 8 << 20
# Linux's sendfile copies file to file inside the kernel, as shutil.copyfile does.
_SENDFILE_TO_FILES = sys.platform == "linux" and hasattr(os, "sendfile")


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

    def upload(self, segment: OpenSegment, path: str, crc: int) -> None:
        """Upload the open segment to ``path``; on a store, prove it landed whole.

        ``crc`` is what the segment was found to hold when it was sealed. On an
        object store, if anything else landed, the object is removed and
        ``OSError`` raised. On a local directory the copy is only written here:
        ``finish_local`` reads it back and fsyncs it, and ``check_landed`` must
        pass, before anything names it. Reads the segment through its open
        descriptor or its mapping, never its path; no copy of it is held in
        memory here.
        """
        size = len(segment.data)
        if self.local:
            self._copy_local(segment, path)
            return
        if self.s3 and size <= _S3_PUT_LIMIT:
            landed = self._put_s3(segment, path, crc)
        else:
            self._write_from(segment, path)
            landed = self._read_back(path)
        self.check_landed(path, landed, size, crc)

    def finish_local(self, path: str) -> tuple[int, int]:
        """Return the size and CRC-32C of the local copy at ``path``, then make it durable."""
        landed = self._read_back_local(path)
        self.make_durable(path)
        return landed

    def check_landed(self, path: str, landed: tuple[int, int], size: int, crc: int) -> None:
        """Remove the object and raise ``OSError`` unless ``landed`` is ``(size, crc)``."""
        if landed != (size, crc):
            self.fs.rm_file(path)
            raise OSError(
                f"{path} did not land intact (found {landed[0]} bytes, CRC-32C "
                f"{landed[1]:#010x}; expected {size}, {crc:#010x}); it was removed and "
                f"nothing was published: push again"
            )

    def _copy_local(self, segment: OpenSegment, path: str) -> None:
        """Copy the segment into a new file at ``path``, in the kernel where it can."""
        size = len(segment.data)
        with self.fs.open(path, "wb") as out:
            if not _SENDFILE_TO_FILES:  # pragma: no cover - depends on the platform
                out.write(memoryview(segment.data))
                return
            target = out.fileno()
            offset = 0
            while offset < size:
                sent = os.sendfile(target, segment.fd, offset, size - offset)
                if not sent:  # pragma: no cover - the open file cannot shrink under us
                    raise OSError(f"{path}: the segment ended at {offset} of {size} bytes")
                offset += sent

    def _write_from(self, segment: OpenSegment, path: str) -> None:
        """Write the segment to ``path`` through fsspec, a chunk at a time from its mapping."""
        with self.fs.open(path, "wb") as out, memoryview(segment.data) as view:
            for at in range(0, len(view), _CHUNK):
                out.write(view[at : at + _CHUNK])

    @staticmethod
    def _read_back_local(path: str) -> tuple[int, int]:
        """Return the size and CRC-32C of the file at ``path``, read in one pass.

        The file was just written: the read is served from the page cache, and a
        mapping hands all of it to the CRC in one call.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if not size:
                return 0, 0
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as landed:
                return size, crc32c(landed)
        finally:
            os.close(fd)

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

    def _put_s3(self, segment: OpenSegment, path: str, crc: int) -> tuple[int, int]:
        bucket, key, _ = self.fs.split_path(path)
        checksum = _b64_crc(crc)
        # A descriptor of its own over the same open file (reads start at 0).
        body_fd = os.dup(segment.fd)
        os.lseek(body_fd, 0, os.SEEK_SET)
        with os.fdopen(body_fd, "rb") as body:
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
