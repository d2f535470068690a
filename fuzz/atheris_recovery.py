"""Coverage-guided fuzzing of mmwal's recovery with atheris (libFuzzer for Python).

Each input is decoded into a log image, a single file or a segment directory, and
opened with the normal recovery code. Opening may refuse with the documented
errors (``CorruptionError``; ``ValueError`` when segment sizes contradict each
other); anything else, a record that breaks the format, a record longer than
``max_record_size``, or an iteration that differs from the recovered end, is a
crash that atheris reports with the input that caused it.

Run (atheris is not a test dependency; install it where you fuzz)::

    pip install atheris
    python fuzz/atheris_recovery.py -max_total_time=600 -rss_limit_mb=2048 corpus/

Without atheris the module still imports: ``check_one_input`` is what
``tests/test_fuzz.py`` runs on hypothesis-generated inputs, and running this file
without atheris replays the files named on the command line.

Input layout: byte 0 picks the target (even: one file, odd: a segment set), byte 1
the chunk or segment size, then the image. A segment set is a sequence of
entries ``kind(1) size(2, little-endian) bytes``: kind 0-7 names segment ``kind``,
8 is the ``head`` file, 9 a foreign file; it lets the fuzzer build gaps, short
and empty segments and bad head files.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from mmwal import CorruptionError, FileStore, MemStore, SegmentStore, Wal, WalConfig

try:
    import atheris

    HAVE_ATHERIS = True
except ImportError:  # the harness is also a plain module for the test suite
    HAVE_ATHERIS = False

MAX_RECORD_SIZE = 512
CONFIG = WalConfig(max_record_size=MAX_RECORD_SIZE)
CHUNK_SIZES = (64, 512, 4096, 4096 * 2)
SEGMENT_SIZES = (None, 32, 64, 512, 4096)
HEADER = 8


def check_wal(wal: Wal) -> None:
    """Check what a log recovered: contiguous records within bounds, and appends work."""
    head, end = wal.head_lsn, wal.next_lsn
    position = head
    for record in wal:
        if record.lsn != position:
            raise AssertionError(f"record at {record.lsn}, expected {position}")
        if len(record.data) > MAX_RECORD_SIZE:
            raise AssertionError(f"record of {len(record.data)} bytes past the limit")
        position += HEADER + len(record.data)
    if position != end:
        raise AssertionError(f"records end at {position}, the log at {end}")
    lsn = wal.append(b"fuzz")
    if lsn != end:
        raise AssertionError(f"append after recovery at {lsn}, the end was {end}")
    wal.sync()
    if [record.data for record in wal.iter(lsn)] != [b"fuzz"]:
        raise AssertionError("the record appended after recovery does not read back")


def open_single(data: bytes, chunk: int, directory: Path | None) -> Wal:
    if directory is None:
        return Wal.with_store(MemStore.from_bytes(data, chunk_size=chunk), CONFIG)
    path = directory / "wal.log"
    path.write_bytes(data)
    return Wal(FileStore(path, window_size=max(chunk, 4096) // 4096 * 4096), CONFIG)


def segment_files(data: bytes) -> dict[str, bytes]:
    """Decode a segment set: entries of kind, 2-byte size, contents."""
    files: dict[str, bytes] = {}
    position = 0
    while position + 3 <= len(data):
        kind = data[position] % 10
        size = int.from_bytes(data[position + 1 : position + 3], "little") % 4097
        body = data[position + 3 : position + 3 + size]
        position += 3 + size
        if kind < 8:
            files[f"{kind:020d}.wal"] = body
        elif kind == 8:
            files["head"] = body
        else:
            files[f"other-{len(files)}"] = body
    return files


def open_segments(files: dict[str, bytes], segment_size: int | None, directory: Path) -> Wal:
    for name, body in files.items():
        (directory / name).write_bytes(body)
    return Wal(SegmentStore(directory, segment_size), CONFIG)


def check_one_input(data: bytes) -> None:
    """Decode ``data`` into a log image, open it, check it; raise on any real failure."""
    if len(data) < 2:
        return
    target, size_byte, image = data[0], data[1], data[2:]
    try:
        if target % 2 == 0:
            chunk = CHUNK_SIZES[size_byte % len(CHUNK_SIZES)]
            if target % 4 == 0:
                wal = open_single(image, chunk, None)
                try:
                    check_wal(wal)
                finally:
                    wal.close()
                return
            with tempfile.TemporaryDirectory(prefix="mmwal-fuzz-") as name:
                wal = open_single(image, chunk, Path(name))
                try:
                    check_wal(wal)
                finally:
                    wal.close()
            return
        segment_size = SEGMENT_SIZES[size_byte % len(SEGMENT_SIZES)]
        with tempfile.TemporaryDirectory(prefix="mmwal-fuzz-") as name:
            wal = open_segments(segment_files(image), segment_size, Path(name))
            try:
                check_wal(wal)
            finally:
                wal.close()
    except CorruptionError:
        return  # a documented refusal
    except ValueError as error:
        if "segment_size" not in str(error):
            raise


def main(argv: list[str]) -> None:
    """Fuzz with atheris, or replay the input files named in ``argv`` without it."""
    if HAVE_ATHERIS:
        atheris.instrument_all()
        atheris.Setup(argv, check_one_input)
        atheris.Fuzz()
        return
    inputs = [arg for arg in argv[1:] if not arg.startswith("-") and os.path.isfile(arg)]
    if not inputs:
        sys.exit("atheris is not installed (pip install atheris); give input files to replay")
    for path in inputs:
        check_one_input(Path(path).read_bytes())
    print(f"replayed {len(inputs)} inputs: no failure")


if __name__ == "__main__":
    main(sys.argv)
