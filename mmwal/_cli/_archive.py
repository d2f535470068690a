"""``archive push``, ``archive ls``, ``archive restore``: a log's archive (docs/ARCHIVE.md).

Uses only the public API. Storage options come from ``--option KEY=VALUE``
(repeatable; for S3 e.g. ``endpoint_url=http://127.0.0.1:9000``) and from the
environment the fsspec backend reads (``AWS_ACCESS_KEY_ID``, ...). A progress
bar (tqdm, when installed) appears on transfers that last over a second.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import mmwal

from ._common import add_command

__all__ = ["register"]


def _options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--option takes KEY=VALUE, not {pair!r}")
        options[key] = value
    return options


def _archive(arguments: argparse.Namespace) -> mmwal.Archive:
    return mmwal.Archive(arguments.url, **_options(arguments.option))


@contextlib.contextmanager
def _progress(description: str, total: int | None) -> Iterator[Any]:
    """Yield a ``bytes -> None`` callback drawing a bar on stderr, or ``None``."""
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional: mmwal[archive]
    except ImportError:
        yield None
        return
    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        delay=1.0,
        file=sys.stderr,
    ) as bar:
        yield bar.update


def _push(arguments: argparse.Namespace) -> int:
    archive = _archive(arguments)
    with _progress("push", None) as progress:
        pushed = archive.push(
            arguments.path, max_record_size=arguments.max_record_size, progress=progress
        )
    if pushed:
        print(f"pushed {len(pushed)} segment(s): {pushed[0]}..{pushed[-1]}")
    else:
        print("nothing to push: every sealed segment is archived")
    return 0


def _ls(arguments: argparse.Namespace) -> int:
    segments = _archive(arguments).segments()
    print("index\tfirst_lsn\tsize\tcrc32c")
    for segment in segments:
        print(f"{segment.index}\t{segment.first_lsn}\t{segment.size}\t{segment.crc32c:08x}")
    if segments:
        total = sum(segment.size for segment in segments)
        print(f"{len(segments)} segment(s), {total} bytes, from LSN {segments[0].first_lsn}")
    else:
        print("the archive holds no segment")
    return 0


def _restore(arguments: argparse.Namespace) -> int:
    archive = _archive(arguments)
    total = sum(segment.size for segment in archive.segments())
    with _progress("restore", total) as progress:
        end = archive.restore(arguments.path, up_to_lsn=arguments.up_to_lsn, progress=progress)
    print(f"restored the log into {arguments.path}; it ends at LSN {end}")
    return 0


def _reporting(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a storage backend's own errors (botocore's, say) into a message and status 1."""

    def run(arguments: argparse.Namespace) -> int:
        try:
            return command(arguments)
        except (mmwal.WalError, OSError, ValueError):
            raise  # python -m mmwal reports these itself
        except Exception as error:  # noqa: BLE001 - any backend's failure, reported
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
            return 1

    return run


def register(commands: Any) -> None:
    """Add ``archive push``, ``archive ls`` and ``archive restore``."""
    archive = add_command(
        commands,
        "archive",
        help="push sealed segments to an fsspec URL, list them, restore a log",
        log=False,
    )
    actions = archive.add_subparsers(
        dest="archive_command", required=True, parser_class=type(archive)
    )
    common = type(archive)(add_help=False)
    common.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec storage option (repeatable), e.g. endpoint_url=...",
    )
    push = actions.add_parser(
        "push", parents=[common], help="upload the sealed segments of a log directory"
    )
    push.add_argument("path", help="the segmented log's directory")
    push.add_argument("url", help="the archive: file:///..., s3://bucket/prefix, ...")
    push.set_defaults(run=_reporting(_push))
    listing = actions.add_parser("ls", parents=[common], help="list the archived segments")
    listing.add_argument("url")
    listing.set_defaults(run=_reporting(_ls))
    restore = actions.add_parser(
        "restore", parents=[common], help="write the archived log into a new directory"
    )
    restore.add_argument("url")
    restore.add_argument("path", help="a directory that does not exist yet (or is empty)")
    restore.add_argument(
        "--up-to-lsn", type=int, default=None, help="keep only the records before this LSN"
    )
    restore.set_defaults(run=_reporting(_restore))
