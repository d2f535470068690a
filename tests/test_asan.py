"""The C extension under AddressSanitizer: hostile bytes never make it read out of bounds.

``mmwal/_speedups.c`` (with ``_crc32c.c``, ``_appendpath.c``, ``_commitmachine.c``,
``_commitpath.c``, ``_afterflush.c``, ``_lock.c`` and ``_recordviews.c``) is
built with ``-fsanitize=address`` into a temporary directory and
``tests/hostile_walk.py`` walks hostile bytes through it (random, truncated, huge
lengths, frames ending at the buffer's end) in a subprocess with the ASan runtime
preloaded, each buffer an exact-size ``malloc`` block with a red zone after it
and, separately, flush against a ``PROT_NONE`` page. Skipped where there is no C
compiler, no ASan runtime or no Python headers. ``tests/asan_append.py`` drives
the append path of the same build: payloads in exact-size ``malloc`` blocks, then
``tests/test_append_path.py`` and ``tests/test_commit_fast_path.py`` with every
Python object a ``malloc`` block (``PYTHONMALLOC=malloc``).

Checked by hand: a build whose length check lets a frame claim one byte more than
the buffer holds fails here with "heap-buffer-overflow ... in crc_update".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "mmwal" / name
    for name in (
        "_speedups.c",
        "_crc32c.c",
        "_appendpath.c",
        "_commitmachine.c",
        "_commitpath.c",
        "_commitwait.c",
        "_flushplan.c",
        "_afterflush.c",
        "_lock.c",
        "_recordviews.c",
    )
]
HOSTILE_WALK = Path(__file__).with_name("hostile_walk.py")
APPEND_DRIVE = Path(__file__).with_name("asan_append.py")


def _asan_runtime(compiler: str) -> str | None:
    found = subprocess.run(
        [compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.fixture(scope="module")
def asan() -> tuple[str, dict[str, str]]:
    """Return (compiler, environment with the ASan runtime preloaded), or skip."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the ASan build recipe here is for Linux")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    runtime = _asan_runtime(compiler)
    if runtime is None:
        pytest.skip(f"{compiler} has no AddressSanitizer runtime (libasan)")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        pytest.skip("no Python headers to build an extension against")
    environment = dict(os.environ)
    environment["LD_PRELOAD"] = runtime
    # The interpreter is not instrumented and leaks by design at exit.
    environment["ASAN_OPTIONS"] = "detect_leaks=0"
    return compiler, environment


def run_walk(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOSTILE_WALK), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def asan_build(asan: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the extension built with AddressSanitizer."""
    compiler, _ = asan
    extension = tmp_path_factory.mktemp("asan") / "_speedups.so"
    build = subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O1",
            "-g",
            "-fsanitize=address",
            "-fno-omit-frame-pointer",
            f"-I{sysconfig.get_paths()['include']}",
            *map(str, SOURCES),
            "-o",
            str(extension),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    return extension


def test_hostile_bytes_under_address_sanitizer(
    asan: tuple[str, dict[str, str]], asan_build: Path
) -> None:
    _, environment = asan
    done = run_walk(environment, "--heap", "--extension", str(asan_build))
    assert "AddressSanitizer" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, (done.returncode, done.stderr[-4000:])
    assert int(done.stdout.split()[0]) > 20_000


def test_the_append_path_under_address_sanitizer(
    asan: tuple[str, dict[str, str]], asan_build: Path
) -> None:
    # Catches: a read past a payload or a write past a frame on the append path
    # (a length off by one, a view's length taken from the wrong field).
    _, environment = asan
    done = subprocess.run(
        [sys.executable, str(APPEND_DRIVE), str(asan_build)],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONMALLOC": "malloc"},
        timeout=600,
        check=False,
    )
    assert "AddressSanitizer" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])
    assert int(done.stdout.split()[0]) > 200


def test_the_sanitizer_catches_a_read_past_a_buffer(asan: tuple[str, dict[str, str]]) -> None:
    """The harness can fail: ASan is live and a byte past an exact buffer is caught."""
    _, environment = asan
    probe = (
        "import ctypes, sys; sys.path.insert(0, sys.argv[1]); import hostile_walk as h; "
        "address = h._process.malloc(16); "
        "ctypes.memmove(ctypes.create_string_buffer(17), address, 17)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(HOSTILE_WALK.parent)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr
