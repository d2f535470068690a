"""mmwal.Archive end to end against a real S3 API over HTTP: moto's server on 127.0.0.1.

The server is started by the test on a free loopback port and reached through
s3fs, exactly as a user's S3 bucket would be; nothing but 127.0.0.1 is contacted
(endpoint, credentials and region are all given, so botocore looks nothing up).
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_helpers import (
    SEGMENT_SIZE,
    FailingFileSystem,
    ending_by,
    listing,
    require,
    segment_bytes,
    write_log,
)

import mmwal
from mmwal._crc import crc32c

require("s3fs", "the S3 tests need s3fs: pip install 'mmwal[s3]'")
require("moto.server", "the S3 tests need moto[server]: pip install 'moto[server]'")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _moto_server(**options: Any) -> Any:
    from moto.server import ThreadedMotoServer

    return ThreadedMotoServer(**options)


class S3:
    """A moto S3 server on loopback, and the storage options that reach it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.server = _moto_server(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.running = True
        self.options: dict[str, Any] = {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": f"http://127.0.0.1:{self.port}",
            "client_kwargs": {"region_name": "eu-west-1"},
            # Fail fast once the server is gone, instead of retrying for minutes.
            "config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 2},
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def start(self) -> None:
        # moto keeps its buckets in the process, so a restarted server still has them.
        self.server = _moto_server(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.running = True

    def archive(self, bucket: str) -> mmwal.Archive:
        return mmwal.Archive(f"s3://{bucket}/logs/orders", **self.options)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    server = S3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3) -> str:
    if not s3.running:
        s3.start()
    name = f"mmwal-{uuid.uuid4().hex[:12]}"
    s3.archive(name)._fs.mkdir(name)
    return name


def test_push_list_restore_iterate_conflict(s3: S3, bucket: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    records = write_log(log)
    archive = s3.archive(bucket)
    with mmwal.open(log) as wal:
        sealed = wal.next_lsn // SEGMENT_SIZE
        assert archive.push(wal) == list(range(sealed))
        assert archive.push(wal) == []
    segments = archive.segments()
    assert [(s.index, s.size) for s in segments] == [(i, SEGMENT_SIZE) for i in range(sealed)]

    restored = tmp_path / "restored"
    end = archive.restore(restored)
    assert listing(restored) == listing(log)[:sealed]
    for index in range(sealed):
        assert segment_bytes(restored, index) == segment_bytes(log, index)
    with mmwal.open(restored, readonly=True) as wal:
        assert list(wal) == ending_by(records, sealed * SEGMENT_SIZE)
        assert wal.next_lsn == end
    assert list(archive.iter()) == ending_by(records, sealed * SEGMENT_SIZE)

    other = tmp_path / "other"
    write_log(other, seed=99)
    with pytest.raises(mmwal.ArchiveConflictError):
        archive.push(other)
    assert archive.segments() == segments
    # The published objects live where a hand restore (aws s3 cp) finds them.
    keys = archive._fs.ls(f"{bucket}/logs/orders/segments", detail=False)
    assert sorted(key.rsplit("/", 1)[1] for key in keys) == [s.object_name for s in segments]


def _stop_points(s3: S3, log: Path) -> list[int]:
    """Return the calls of a clean push to stop the server before (1-based).

    Every step of one segment's upload, verification and publication (the second
    segment's), the first listing, and the closing clean-up: each is a different
    state to be cut off in. (All steps of all segments would cost a server restart
    each, half a second, for no new state.)
    """
    scratch = f"mmwal-{uuid.uuid4().hex[:12]}"
    filesystem = s3.archive(scratch)._fs
    filesystem.mkdir(scratch)
    counter = FailingFileSystem(filesystem)
    mmwal.Archive.from_filesystem(counter, f"{scratch}/logs/orders").push(log)
    uploads = [n for n, name in enumerate(counter.calls, 1) if name == "call_s3:put_object"]
    second_segment = range(uploads[1], uploads[2])  # its upload, check and entry
    return [1, *second_segment, len(counter.calls)]


def test_resume_after_the_server_stopped_mid_push(s3: S3, tmp_path: Path) -> None:
    from botocore.exceptions import BotoCoreError

    log = tmp_path / "log"
    records = write_log(log, records=150)
    for stop_at in _stop_points(s3, log):
        bucket = f"mmwal-{uuid.uuid4().hex[:12]}"
        s3.archive(bucket)._fs.mkdir(bucket)
        root = f"{bucket}/logs/orders"

        def stop_server(call: int, stop_at: int = stop_at) -> None:
            if call == stop_at:
                s3.stop()

        filesystem = s3.archive(bucket)._fs
        filesystem.retries = 1  # s3fs: give up at once on a refused connection
        stopping = FailingFileSystem(filesystem, before_call=stop_server)
        with pytest.raises((OSError, BotoCoreError)):  # the connection is refused
            mmwal.Archive.from_filesystem(stopping, root).push(log)
        s3.start()
        archive = s3.archive(bucket)
        published = [segment.index for segment in archive.segments()]
        assert published == list(range(len(published)))
        rest = archive.push(log)
        sealed = len(published) + len(rest)
        assert published + rest == list(range(sealed))
        assert sealed >= 3
        assert list(archive.iter()) == ending_by(records, sealed * SEGMENT_SIZE)
        named = {f"{root}/segments/{segment.object_name}" for segment in archive.segments()}
        assert set(archive._fs.find(f"{root}/segments")) == named


def test_a_damaged_upload_is_never_published(s3: S3, bucket: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_log(log)
    root = f"{bucket}/logs/orders"
    torn = FailingFileSystem(s3.archive(bucket)._fs, torn=True)
    with pytest.raises(OSError, match="did not land intact"):
        mmwal.Archive.from_filesystem(torn, root).push(log)
    archive = s3.archive(bucket)
    assert archive.segments() == []
    assert archive._fs.find(f"{root}/segments") == []
    assert archive.push(log)


def _checksums_as_s3_does(monkeypatch: pytest.MonkeyPatch, *, refuse: bool) -> None:
    """Make the moto server treat ``x-amz-checksum-crc32c`` as S3 does.

    moto stores the checksum header as the client sent it. S3 stores the
    checksum of the body it received, and refuses (``BadDigest``) a body that
    does not match the header; ``refuse`` adds that refusal. The server runs in
    this process, so patching its request handler is enough.
    """
    from moto.s3.exceptions import S3ClientError
    from moto.s3.responses import S3Response

    original = S3Response._get_checksum

    def get_checksum(self: Any, response_headers: dict[str, Any]) -> tuple[str, str | None]:
        algorithm, value = original(self, response_headers)
        if algorithm.upper() == "CRC32C":
            received = base64.b64encode(crc32c(self.body or b"").to_bytes(4, "big")).decode()
            if refuse and value != received:
                raise S3ClientError("BadDigest", "the CRC32C you specified did not match")
            value = received
            response_headers["x-amz-checksum-crc32c"] = value
        return algorithm, value

    monkeypatch.setattr(S3Response, "_get_checksum", get_checksum)


@pytest.mark.parametrize("server", ["stores-what-it-received", "refuses-a-bad-digest"])
def test_a_bit_flipped_in_transit_is_never_published(
    s3: S3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    log = tmp_path / "log"
    records = write_log(log)
    _checksums_as_s3_does(monkeypatch, refuse=server == "refuses-a-bad-digest")
    root = f"{bucket}/logs/orders"
    flipping = FailingFileSystem(s3.archive(bucket)._fs, flipped=True)
    # Same size, another CRC-32C: only the checksum half of the check can see it.
    match = "did not land intact" if server == "stores-what-it-received" else "BadDigest|match"
    with pytest.raises(OSError, match=match):
        mmwal.Archive.from_filesystem(flipping, root).push(log)
    assert flipping.calls.count("call_s3:put_object") == 1  # the first segment, then stop
    archive = s3.archive(bucket)
    assert archive.segments() == []
    assert archive._fs.find(f"{root}/segments") == []
    # A push without the fault (the background pusher retries the same way).
    pushed = archive.push(log)
    assert pushed == list(range(len(pushed)))
    assert list(archive.iter()) == ending_by(records, len(pushed) * SEGMENT_SIZE)


def test_the_s3_path_is_taken_and_checks_what_s3_stored(
    s3: S3, bucket: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    write_log(log)
    counting = FailingFileSystem(s3.archive(bucket)._fs)
    pushed = mmwal.Archive.from_filesystem(counting, f"{bucket}/logs/orders").push(log)
    # One PUT carrying the CRC-32C and one HEAD reading it back per segment; no read-back.
    assert counting.calls.count("call_s3:put_object") == len(pushed)
    assert counting.calls.count("call_s3:head_object") == len(pushed)
    assert "cat_file" not in counting.calls
    archive = s3.archive(bucket)
    for segment in archive.segments():
        path = f"{bucket}/logs/orders/segments/{segment.object_name}"
        bucket_name, key, _ = archive._fs.split_path(path)
        head = archive._fs.call_s3(
            "head_object", Bucket=bucket_name, Key=key, ChecksumMode="ENABLED"
        )
        stored = int.from_bytes(base64.b64decode(head["ChecksumCRC32C"]), "big")
        assert stored == segment.crc32c == crc32c(segment_bytes(log, segment.index))


def test_the_s3_example_prints_what_it_did(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "archive_s3.py"
    result = subprocess.run(
        [sys.executable, str(example), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out = result.stdout
    assert "S3 (moto) on 127.0.0.1:" in out
    assert "appended 400 records" in out
    assert "archived: [0, 1]" in out
    assert "local head" in out
    assert "  segment 1: first record 65856, 65536 bytes" in out
    assert "into restored/" in out
    assert "straight from the archive, from LSN" in out
    assert "another log refused: segment 0 differs" in out
    with mmwal.open(tmp_path / "restored", readonly=True) as wal:
        assert wal.head_lsn == 0
        assert len(list(wal)) == 292  # every record wholly inside segments 0 and 1
