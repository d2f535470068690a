"""The ``mmwal`` command (also ``python -m mmwal``): look into a log, follow, check, repair.

Uses only the public API. Each group of subcommands is a module of ``mmwal._cli``
with a ``register`` function; to add a group, add its ``register`` to ``GROUPS``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._cli import _archive, _checks, _inspect, run

__all__ = ["GROUPS", "main"]

#: The groups of subcommands, in the order ``--help`` lists them.
GROUPS = [_inspect.register, _checks.register, _archive.register]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    return run(argv, GROUPS)


if __name__ == "__main__":
    sys.exit(main())
