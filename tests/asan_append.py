"""Drive the append path of a given build of ``mmwal._speedups`` (tests/test_asan.py runs it).

Run as a script, in a subprocess with AddressSanitizer preloaded and
``PYTHONMALLOC=malloc`` (so every bytes object is a ``malloc`` block with red
zones)::

    python tests/asan_append.py EXTENSION

The build at ``EXTENSION`` stands in for ``mmwal._speedups`` before mmwal is
imported; then every payload is also appended from an exact-size ``malloc``
buffer (a byte read past it is caught), and ``tests/test_append_path.py`` and
``tests/test_commit_fast_path.py`` (the lone commit's C path) run.
Exits with pytest's status; prints how many payloads were appended from the heap.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import tempfile
from pathlib import Path

_process = ctypes.CDLL(None)
_process.malloc.argtypes = [ctypes.c_size_t]
_process.malloc.restype = ctypes.c_void_p
_process.free.argtypes = [ctypes.c_void_p]


def substitute(path: str) -> None:
    spec = importlib.util.spec_from_file_location("mmwal._speedups", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["mmwal._speedups"] = module


def heap_appends() -> int:
    """Append payloads held in exact-size malloc blocks; check they read back."""
    import mmwal

    sizes = [*range(1, 70), 255, 256, 257, 4095, 4096, 4097, 65535, 65536, 70000]
    expected: list[bytes] = []
    with (
        tempfile.TemporaryDirectory() as directory,
        mmwal.Wal.open_segmented(Path(directory) / "log", 8192) as wal,
    ):
        for size in sizes:
            address = _process.malloc(size)
            try:
                payload = bytes((size + i) % 256 for i in range(size))
                ctypes.memmove(address, payload, size)
                exact = (ctypes.c_char * size).from_address(address)
                with memoryview(exact) as view:
                    wal.append(view)
                    wal.append_many([view, view])
                expected += [payload] * 3
            finally:
                _process.free(address)
        assert [record.data for record in wal] == expected
    return len(expected)


def main() -> int:
    substitute(sys.argv[1])
    import mmwal._format

    used = vars(mmwal._format)["_speedups"]
    assert used is sys.modules["mmwal._speedups"], "the build was not used"
    count = heap_appends()
    sys.stdout.write(f"{count} heap appends\n")
    sys.stdout.flush()
    import pytest

    here = Path(__file__).resolve().parent
    tests = [str(here / name) for name in ("test_append_path.py", "test_commit_fast_path.py")]
    return pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests])


if __name__ == "__main__":
    sys.exit(main())
