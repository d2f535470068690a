"""What every subcommand shares: the parser, the log options, opening, exit statuses."""

from __future__ import annotations

import argparse
import enum
import errno
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mmwal

__all__ = [
    "DAMAGE_HINT",
    "ExitStatus",
    "Register",
    "add_command",
    "build_parser",
    "open_readonly",
    "run",
]

DESCRIPTION = "Look into an mmwal (or wal-db 1.x) log, follow it, check it, repair it."


class ExitStatus(enum.IntEnum):
    """The exit statuses of every subcommand (listed in ``mmwal --help``)."""

    OK = 0
    ERROR = 1  # the log cannot be read as asked: missing, refused, an I/O error
    TORN_TAIL = 2  # verify: intact up to the end; bytes past it, as a crash leaves
    DAMAGED = 3  # a damaged record inside the log (verify, or a read that met it)
    USAGE = 64  # the command line itself is wrong (BSD's EX_USAGE)


EPILOG = """\
exit statuses:
  0   success; for verify: every record intact, nothing past the end
  1   the log could not be read as asked (missing path, not a log, refused, I/O error)
  2   verify: the records are intact up to the end, and nonzero bytes lie past it
      (a torn tail, as a crash leaves; a writable open quarantines and zeroes them)
  3   a record inside the log is damaged (its LSN is printed): verify, or info,
      dump and tail when their reading meets it (they print what precedes it)
  64  the command line is wrong

Every subcommand but repair only reads. Options may come before or after the
subcommand: mmwal info --max-record-size 100 PATH.
"""

#: What to do about damage a read met: look before anything writes.
DAMAGE_HINT = (
    "hint: the log is damaged; run 'mmwal verify {path}' to see every damaged record, "
    "and keep a copy of the log before any repair"
)

Register = Callable[[Any], None]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message}\n")


def _program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mmwal"
    return "python -m mmwal" if name in ("__main__.py", "-m", "-c", "") else name


def _log_options() -> argparse.ArgumentParser:
    # SUPPRESS: given after the subcommand, the option overrides the main parser's
    # value; not given, it leaves that value alone.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--max-record-size",
        type=int,
        default=argparse.SUPPRESS,
        help="the largest record length to accept (default: 64 MiB)",
    )
    options.add_argument(
        "--segment-size",
        type=int,
        default=argparse.SUPPRESS,
        help="the segment size of a segmented log (default: inferred from its files)",
    )
    options.add_argument(
        "--allow-copy-on-write",
        action="store_true",
        default=argparse.SUPPRESS,
        help="let repair write on a copy-on-write file system where a full disk may "
        "crash it with SIGBUS (see README, File systems)",
    )
    return options


_LOG_OPTIONS = _log_options()


def add_command(commands: Any, name: str, *, help: str, log: bool = True) -> _Parser:  # noqa: A002
    """Add subcommand ``name``; ``log=True`` gives it PATH and the log options."""
    parser: _Parser = commands.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        parents=[_LOG_OPTIONS] if log else [],
    )
    if log:
        parser.add_argument("path", metavar="PATH", help="a log file, or a directory of segments")
    return parser


def build_parser(groups: Iterable[Register]) -> argparse.ArgumentParser:
    """Build the parser from the ``register`` function of each group of subcommands."""
    parser = _Parser(
        prog=_program_name(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--max-record-size",
        type=int,
        default=mmwal.WalConfig().max_record_size,
        help="the largest record length to accept (default: %(default)s)",
    )
    parser.add_argument("--segment-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--allow-copy-on-write", action="store_true", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in groups:
        register(commands)
    return parser


def config_of(arguments: argparse.Namespace) -> mmwal.WalConfig:
    """Return the ``WalConfig`` the options ask for."""
    return mmwal.WalConfig(
        max_record_size=arguments.max_record_size,
        allow_copy_on_write=arguments.allow_copy_on_write,
    )


def open_readonly(
    arguments: argparse.Namespace, config: mmwal.WalConfig | None = None
) -> mmwal.Wal:
    """Open the log at ``arguments.path`` read-only: nothing on disk changes."""
    path = arguments.path
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no log here", path)
    wal = mmwal.open(
        path,
        segment_size=arguments.segment_size,
        config=config if config is not None else config_of(arguments),
        readonly=True,
    )
    # A CorruptionError from now on is damage a read met, not a refused open.
    arguments.opened = True
    return wal


def run(argv: Sequence[str] | None, groups: Iterable[Register]) -> int:
    """Parse ``argv``, run the subcommand, return its exit status; errors are one line."""
    arguments = build_parser(groups).parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except mmwal.CorruptionError as error:
        if not getattr(arguments, "opened", False):
            print(f"error: {error}", file=sys.stderr)
            return ExitStatus.ERROR
        # The open succeeded, so this is damage inside the log that a read met.
        print(f"error: {error}", file=sys.stderr)
        print(DAMAGE_HINT.format(path=arguments.path), file=sys.stderr)
        return ExitStatus.DAMAGED
    except KeyboardInterrupt:
        return ExitStatus.OK if getattr(arguments, "follow", False) else 130
    except BrokenPipeError:
        # The reader went away (``mmwal dump log | head``): not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return ExitStatus.OK
    except (mmwal.WalError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitStatus.ERROR
    return status
