"""``_speedups.ReservationLock`` behaves as the ``threading.Lock`` it replaces.

The reservation lock is taken by the C append path without a Python call, and by
the rest of the log as any lock: ``with``, ``acquire(False)``, blocking
``acquire`` (``Reservations.acquire_contended``) and ``threading.Condition``
(``copies_done``). Blocking must let the GIL go and a signal must interrupt it;
those two run in a subprocess, so a lock that gets them wrong fails the test by
its timeout instead of hanging the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from mmwal._format import SPEEDUPS

pytestmark = pytest.mark.skipif(not SPEEDUPS, reason="the C lock is part of the extension")


def new_lock() -> threading.Lock:
    from mmwal._speedups import ReservationLock

    return ReservationLock()


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    try:
        return "returned", repr(call())
    except Exception as error:
        return type(error).__name__, str(error)


def test_a_writers_reservation_lock_is_the_c_lock(tmp_path: object) -> None:
    # Catches: the log still on threading.Lock (the fast path's C try unused).
    import mmwal

    with mmwal.Wal.with_store(mmwal.MemStore()) as wal:
        assert type(wal._reservations.lock).__name__ == "ReservationLock"


Call = tuple[str, tuple[object, ...], dict[str, object]]


def call(name: str, *args: object, **kwargs: object) -> Call:
    return name, args, kwargs


@pytest.mark.parametrize(
    "calls",
    [
        [call("acquire"), call("acquire", False), call("locked"), call("release"), call("locked")],
        [call("release")],
        [
            call("acquire", blocking=False),
            call("acquire", timeout=0.01),
            call("release"),
            call("release"),
        ],
        [call("acquire", False, 1)],
        [call("acquire", timeout=-2)],
        [call("acquire", True, 0), call("acquire", True, 0)],
        [call("__enter__"), call("acquire", False), call("__exit__", None, None, None)],
    ],
)
def test_calls_answer_as_threading_lock_does(calls: list[Call]) -> None:
    # Catches: a return value, error type or message that differs from
    # threading.Lock's (a caller written for a Lock misled), a release that
    # lets go of an unheld lock, a timeout ignored.
    ours, theirs = new_lock(), threading.Lock()
    for name, args, kwargs in calls:
        got = outcome(lambda: getattr(ours, name)(*args, **kwargs))  # noqa: B023
        want = outcome(lambda: getattr(theirs, name)(*args, **kwargs))  # noqa: B023
        assert got == want, (name, args, kwargs)
    assert ours.locked() == theirs.locked()


def test_a_timeout_too_large_overflows() -> None:
    # The message is the interpreter's own, which differs between versions.
    with pytest.raises(OverflowError):
        new_lock().acquire(timeout=1e300)


def test_a_timed_acquire_waits_about_its_timeout() -> None:
    lock = new_lock()
    lock.acquire()
    started = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert 0.04 <= time.monotonic() - started < 2


def test_a_condition_over_it_waits_and_is_notified() -> None:
    # Catches: a lock a Condition cannot use (copies_done waits on it): a wait
    # that does not let the lock go, or a notify that wakes no one.
    condition = threading.Condition(new_lock())
    ready: list[int] = []

    def produce() -> None:
        for item in range(100):
            with condition:
                ready.append(item)
                condition.notify_all()

    consumer_saw: list[int] = []

    def consume() -> None:
        with condition:
            while len(ready) < 100:
                condition.wait(5)
            consumer_saw.extend(ready)

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert consumer_saw == list(range(100))


def test_threads_exclude_each_other() -> None:
    # Catches: a try that can succeed twice (two appends at one LSN).
    lock = new_lock()
    inside = 0
    overlaps = 0

    def work() -> None:
        nonlocal inside, overlaps
        for _ in range(2000):
            if not lock.acquire(False):
                lock.acquire()
            inside += 1
            overlaps += inside != 1
            time.sleep(0)  # lets the others try while it is held
            inside -= 1
            lock.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == 0


BLOCKING = textwrap.dedent(
    """
    import signal, sys, threading, time
    from mmwal._speedups import ReservationLock

    # 1. A thread blocked on the lock lets the GIL go: the main thread runs on.
    lock = ReservationLock()
    lock.acquire()
    waiter = threading.Thread(target=lock.acquire)
    waiter.start()
    time.sleep(0.05)
    ticks = 0
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        ticks += 1
    lock.release()
    waiter.join(5)
    print("ran", ticks > 1000, not waiter.is_alive())

    # 2. A signal interrupts a blocking acquire; its handler's exception comes out.
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGALRM, handler)
    held = ReservationLock()
    held.acquire()
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        held.acquire()
        print("not interrupted")
    except Interrupted:
        print("interrupted")
    """
)


def test_blocking_lets_the_gil_go_and_a_signal_interrupts_it() -> None:
    # Catches: a wait that holds the GIL (every other thread, and the holder
    # that would release the lock, stops: a deadlock) or that no signal can
    # interrupt (Ctrl-C cannot stop a process stuck on the log's lock).
    done = subprocess.run(
        [sys.executable, "-c", BLOCKING], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["ran True True", "interrupted"]
