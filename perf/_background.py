"""A loop on a thread of its own for the measurement scripts: started on enter, stopped on exit."""

from __future__ import annotations

import threading
from typing import Self

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """Run ``_run`` on a daemon thread inside a ``with``; ``_done`` tells it to stop."""

    def __init__(self) -> None:
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done = True
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError
