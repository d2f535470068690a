"""Archive a log's sealed segments to S3, drop them locally, restore and read them back.

The S3 here is moto's server, started on a free port of 127.0.0.1 and reached
over HTTP through s3fs exactly as a real bucket would be; nothing else is
contacted. Needs ``pip install 'mmwal[s3]' 'moto[server]'``.
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
from pathlib import Path

import fsspec
from moto.server import ThreadedMotoServer

import mmwal

SEGMENT_SIZE = 64 * 1024


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main(directory: Path) -> None:
    """Archive, truncate, restore and read back one log, printing each step."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {
            "key": "example",
            "secret": "example",
            "endpoint_url": f"http://127.0.0.1:{port}",
            "client_kwargs": {"region_name": "eu-west-1"},
        }
        fsspec.filesystem("s3", **options).mkdir("wal-archive")  # moto starts empty
        archive = mmwal.Archive("s3://wal-archive/orders", **options)
        print(f"S3 (moto) on 127.0.0.1:{port}, archive {archive.url}")
        run(archive, directory)
    finally:
        server.stop()


def run(archive: mmwal.Archive, directory: Path) -> None:
    """The archiving steps themselves, for any archive URL."""
    log = directory / "orders"
    with mmwal.open(log, segment_size=SEGMENT_SIZE, archive=archive) as wal:
        lsns = [wal.append(f"order {n:04d} ".encode() * 40) for n in range(400)]
        wal.sync()
        print(f"appended {len(lsns)} records, {wal.next_lsn} bytes in 64 KiB segments")
        pushed = archive.push(wal)  # the background pusher may have done some already
        print(f"pushed now: {pushed}; archived: {[s.index for s in archive.segments()]}")
        cut = lsns[300]
        head = wal.truncate_before(cut)  # pushes what it deletes first, if anything is left
        files = sorted(path.name for path in log.iterdir() if path.suffix == ".wal")
        print(f"truncate_before({cut}): local head {head}, local segments {files[0]}..")

    for segment in archive.segments():
        print(
            f"  segment {segment.index}: first record {segment.first_lsn}, "
            f"{segment.size} bytes, crc32c {segment.crc32c:08x}"
        )
    restored = directory / "restored"
    end = archive.restore(restored)
    with mmwal.open(restored, readonly=True) as wal:
        records = list(wal)
    print(f"restored {len(records)} records (LSN 0 to {end}) into {restored.name}/")
    print(f"first: {records[0].data[:10]!r} at LSN {records[0].lsn}")
    middle = records[len(records) // 2].lsn
    partial = directory / "point-in-time"
    print(f"restore up to LSN {middle}: ends at {archive.restore(partial, up_to_lsn=middle)}")
    streamed = sum(1 for _ in archive.iter(middle))
    print(f"read {streamed} records straight from the archive, from LSN {middle}")
    other = directory / "other"
    with mmwal.open(other, segment_size=SEGMENT_SIZE) as wal:
        wal.append_many([b"a different history"] * 5000)
    try:
        archive.push(other)
    except mmwal.ArchiveConflictError as error:
        print(f"another log refused: segment {error.index} differs")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
