"""The command line, one module per group of subcommands; ``mmwal/__main__.py`` lists them.

A group is a module with ``register(commands)``: it adds its subparsers to
``commands`` (an ``argparse`` subparsers object) with ``add_command`` and sets
``run`` on each, a function from the parsed arguments to an exit status.
"""

from __future__ import annotations

from ._common import ExitStatus, add_command, build_parser, run

__all__ = ["ExitStatus", "add_command", "build_parser", "run"]
