"""Threads for tests: each keeps its result or exception, and a hang fails the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import pytest

__all__ = ["DEADLINE", "Outcome", "Runner", "wait_until"]

T = TypeVar("T")

# How long a step may take before it counts as a hang. Generous: it only bounds a
# failure, a passing run never waits for it.
DEADLINE = 30.0


class Outcome:
    """A daemon thread whose exception (or normal return) is kept for the test."""

    def __init__(self, name: str) -> None:
        self.error: BaseException | None = None
        self.returned = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _call(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._call()
            self.returned = True
        except BaseException as error:  # collected: the test asserts on it
            self.error = error

    def join(self) -> None:
        self.thread.join(DEADLINE)
        if self.thread.is_alive():
            pytest.fail(f"{self.thread.name} hung: still running after {DEADLINE} s")


class Runner(Outcome, Generic[T]):
    """Run ``fn`` in a daemon thread; keep its result or exception for the test."""

    def __init__(self, name: str, fn: Callable[[], T]) -> None:
        super().__init__(name)
        self.value: T | None = None
        self._fn = fn

    def _call(self) -> None:
        self.value = self._fn()

    def start(self) -> Runner[T]:
        self.thread.start()
        return self

    def result(self) -> T:
        self.join()
        if self.error is not None:
            raise AssertionError(f"{self.thread.name} raised {self.error!r}") from self.error
        assert self.returned
        return self.value  # type: ignore[return-value]

    @property
    def ident(self) -> int | None:
        return self.thread.ident


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Return once ``predicate()`` holds; fail the test if it does not within ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)
