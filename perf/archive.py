"""Archive throughput: ``Archive.push``/``restore`` against plain ``fs.put``/``fs.get``.

``python -m perf.archive [--size-mib 1024] [--segment-mib 64] [--targets file,s3]``

Writes one segmented log of ``--size-mib`` MiB, then, for each target, times in
the same run and alternately:

- push: ``Archive(url).push(directory)`` of every sealed segment, against
  ``fs.put`` of the same segment files to the same endpoint;
- restore: ``Archive(url).restore(new directory)``, against ``fs.get`` of the same
  objects into a new directory.

Targets: ``file`` is a local directory (``file://``); ``s3`` is moto's S3 server,
started here on a free 127.0.0.1 port and reached through s3fs over HTTP. Each
figure is the best of ``--repeat`` runs; the ratio is reference time / archive
time (1.0: as fast as the plain copy; the target is at least 0.8). Every timed
transfer starts after an ``os.sync()``, and what it wrote is deleted after it,
so none pays for the previous one's write-back. A second
reference adds an fsync of every file the plain copy wrote locally: the archive
makes what it writes to a local directory (and every restored file) durable
before it counts it as done, which a plain ``fs.put``/``fs.get`` does not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mmwal

_MIB = 1 << 20


def _write_log(directory: Path, size: int, segment_size: int) -> list[Path]:
    payload = os.urandom(4096 - 8)
    with mmwal.open(directory, segment_size=segment_size) as wal:
        while wal.next_lsn < size + 4096:
            wal.append_many([payload] * 256)
        wal.sync()
        sealed = wal.next_lsn // segment_size
    return [directory / f"{index:020d}.wal" for index in range(sealed)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _s3_options() -> Iterator[dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {
            "key": "perf",
            "secret": "perf",
            "endpoint_url": f"http://127.0.0.1:{port}",
            "client_kwargs": {"region_name": "eu-west-1"},
            "skip_instance_cache": True,
        }
    finally:
        server.stop()


def _timed(run: Callable[[], object]) -> float:
    # Start every transfer with no dirty pages queued for the disk: a write-back
    # left over from the previous transfer would slow whichever runs next.
    os.sync()
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def _fsync_all(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Round:
    """One round of the four transfers (and the durable references) to one endpoint."""

    def __init__(
        self, url_of: Callable[[str], str], options: dict[str, Any], files: list[Path]
    ) -> None:
        from fsspec.core import url_to_fs

        self.files = files
        self.options = options
        self.url_of = url_of
        self.filesystem, self.root = url_to_fs(url_of(f"plain-{uuid.uuid4().hex[:8]}"), **options)
        self.local = "file" in self.filesystem.protocol
        if self.local:
            self.filesystem.makedirs(self.root, exist_ok=True)
        self.remote = [f"{self.root}/{f.name}" for f in files]

    def put(self) -> None:
        self.filesystem.put([str(f) for f in self.files], self.root + "/")
        if self.local and self.durable:
            _fsync_all(self.remote)

    def get(self, target: Path) -> None:
        target.mkdir()
        self.filesystem.get(self.remote, str(target) + "/")
        if self.durable:
            _fsync_all([str(target / f.name) for f in self.files])

    def remove(self) -> None:
        self.filesystem.rm(self.root, recursive=True)

    durable = False


def _measure(
    name: str,
    url_of: Callable[[str], str],
    options: dict[str, Any],
    files: list[Path],
    arguments: argparse.Namespace,
) -> None:
    from fsspec.core import url_to_fs

    scratch = Path(arguments.scratch)
    best = dict.fromkeys(("put", "put+fsync", "push", "get", "get+fsync", "restore"), 1e9)
    for _ in range(arguments.repeat):
        for durable in (False, True):
            plain = _Round(url_of, options, files)
            plain.durable = durable
            suffix = "+fsync" if durable else ""
            best["put" + suffix] = min(best["put" + suffix], _timed(plain.put))
            target = scratch / f"get-{uuid.uuid4().hex[:8]}"
            best["get" + suffix] = min(
                best["get" + suffix], _timed(functools.partial(plain.get, target))
            )
            shutil.rmtree(target)
            plain.remove()
        archive = mmwal.Archive(url_of(f"archive-{uuid.uuid4().hex[:8]}"), **options)
        best["push"] = min(best["push"], _timed(functools.partial(archive.push, files[0].parent)))
        restored = scratch / f"restore-{uuid.uuid4().hex[:8]}"
        best["restore"] = min(best["restore"], _timed(functools.partial(archive.restore, restored)))
        shutil.rmtree(restored)
        archive_fs, archive_root = url_to_fs(archive.url, **options)
        archive_fs.rm(archive_root, recursive=True)
    mib = sum(f.stat().st_size for f in files) / _MIB

    def rate(key: str) -> str:
        return f"{mib / best[key]:7.1f} MiB/s"

    print(
        f"{name:4} push    {rate('push')}  fs.put {rate('put')} (ratio "
        f"{best['put'] / best['push']:.2f})  fs.put+fsync {rate('put+fsync')} (ratio "
        f"{best['put+fsync'] / best['push']:.2f})",
        flush=True,
    )
    print(
        f"{name:4} restore {rate('restore')}  fs.get {rate('get')} (ratio "
        f"{best['get'] / best['restore']:.2f})  fs.get+fsync {rate('get+fsync')} (ratio "
        f"{best['get+fsync'] / best['restore']:.2f})",
        flush=True,
    )


def main() -> None:
    """Run the comparison and print one line per target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--segment-mib", type=int, default=64)
    parser.add_argument("--targets", default="file,s3")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    arguments = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mmwal-archive-perf-", dir=arguments.dir))
    arguments.scratch = str(scratch)
    try:
        files = _write_log(scratch / "log", arguments.size_mib * _MIB, arguments.segment_mib * _MIB)
        print(
            f"log: {len(files)} sealed segments of {arguments.segment_mib} MiB "
            f"({len(files) * arguments.segment_mib} MiB), best of {arguments.repeat}",
            flush=True,
        )
        targets = arguments.targets.split(",")
        if "file" in targets:
            local = scratch / "targets"
            local.mkdir()
            _measure("file", lambda name: (local / name).as_uri(), {}, files, arguments)
        if "s3" in targets:
            with _s3_options() as options:
                bucket = f"perf-{uuid.uuid4().hex[:8]}"
                from fsspec.core import url_to_fs

                url_to_fs(f"s3://{bucket}", **options)[0].mkdir(bucket)
                _measure("s3", lambda name: f"s3://{bucket}/{name}", options, files, arguments)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
