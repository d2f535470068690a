"""``StoreTests``: the behaviour suite every ``Store`` subclasses.

A pytest suite (a plain class of ``test_*`` methods) that proves a ``Store`` keeps
the protocol of ``mmwal._store``; subclass it and implement ``make_store``. It does
not import pytest: skips raise ``unittest.SkipTest``.
"""

from __future__ import annotations

import abc
import threading
import unittest
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from mmwal._errors import WalClosedError
from mmwal._store import Store
from mmwal._wal import Wal

from ._storetools import HOLD_DEADLINE, FlushHold, PieceWritesRefused

__all__ = ["StoreTests"]

_CYCLE = bytes(range(1, 252))


def _pattern(length: int, seed: int = 1) -> bytes:
    """Return ``length`` bytes with no zero byte, different for each seed."""
    shift = seed * 13 % len(_CYCLE)
    cycle = _CYCLE[shift:] + _CYCLE[:shift]
    return (cycle * (length // len(cycle) + 1))[:length]


@contextmanager
def _raises(*kinds: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except kinds:
        return
    names = " or ".join(kind.__name__ for kind in kinds)
    raise AssertionError(f"expected {names}, nothing was raised")


class StoreTests(abc.ABC):
    """The store protocol as pytest tests: subclass, implement ``make_store``, collect.

    Each test makes its stores through ``store()``, which closes them afterwards.
    Optional hooks widen the suite: ``reopen`` (a store over what the first one made
    durable) enables the durability tests, ``make_store_with_space`` the full-disk
    tests, ``make_held_store`` the test of growth during a flush. ``drops_prefix``
    says whether ``drop_before`` forgets whole units.
    """

    #: Whether ``drop_before`` really forgets a prefix (segmented stores).
    drops_prefix: ClassVar[bool] = False

    _made: list[Store]

    @abc.abstractmethod
    def make_store(self) -> Store:
        """Return a new, empty, writable store."""

    def reopen(self, store: Store) -> Store | None:
        """Close ``store`` and return a new one over what it made durable; None: unsupported."""
        del store
        return None

    def make_store_with_space(self, space: int) -> Store | None:
        """Return a new store that can back about ``space`` bytes; None: unsupported."""
        del space
        return None

    def make_held_store(self, hold: FlushHold) -> Store | None:
        """Return a new, empty, writable store whose data flushes call ``hold.reached()``.

        A file store takes ``held_syscalls(Syscalls, hold)()`` (or the simulator's
        class in place of ``Syscalls``); a store with no seam calls it where its
        flush would write back. None: unsupported.
        """
        del hold
        return None

    # -- plumbing -----------------------------------------------------------------------

    def setup_method(self) -> None:
        """Start with no store to close."""
        self._made = []

    def teardown_method(self) -> None:
        """Close every store the test made."""
        for store in self._made:
            store.close()

    def store(self) -> Store:
        """Return a new store from ``make_store``, closed after the test."""
        store = self.make_store()
        self._made.append(store)
        return store

    def _reopen(self, store: Store) -> Store:
        again = self.reopen(store)
        if again is None:
            raise unittest.SkipTest(f"{type(store).__name__} has no durable state to reopen")
        self._made.append(again)
        return again

    def _unit(self, store: Store) -> int:
        """Return the size of the first piece: where a write first crosses pieces."""
        store.ensure_capacity(1)
        _buffer, base, limit = store.piece(store.head_lsn)
        return limit - base

    # -- tests ----------------------------------------------------------------------------

    def test_new_store_is_empty(self) -> None:
        store = self.store()
        assert store.head_lsn == 0
        assert store.capacity >= 0
        assert not store.closed
        assert store.nonzero_extent(0) is None
        assert store.read(0, store.capacity) == bytes(store.capacity)
        assert isinstance(store.location, str)
        assert type(store).__name__ in repr(store)

    def test_ensure_capacity_backs_zeros_and_never_shrinks(self) -> None:
        store = self.store()
        for end in (1, 100, 5000, 20000):
            store.ensure_capacity(end)
            assert store.capacity >= end
            assert store.read(0, end) == bytes(end)
        grown = store.capacity
        store.ensure_capacity(10)
        store.ensure_capacity(0)
        assert store.capacity == grown

    def test_write_then_read_within_a_piece(self) -> None:
        store = self.store()
        store.ensure_capacity(64)
        store.write(3, b"hello")
        assert store.read(0, 10) == b"\0\0\0hello\0\0"
        assert store.read(3, 5) == b"hello"

    def test_write_accepts_every_buffer_kind(self) -> None:
        store = self.store()
        store.ensure_capacity(64)
        store.write(0, b"ab")
        store.write(2, bytearray(b"cd"))
        store.write(4, memoryview(b"xxef")[2:])
        assert store.read(0, 6) == b"abcdef"

    def test_write_and_read_across_pieces(self) -> None:
        store = self.store()
        unit = self._unit(store)
        end = 4 * unit + 17
        store.ensure_capacity(end)
        data = _pattern(3 * unit + 11)
        start = unit - 5
        store.write(start, data)
        assert store.read(start, len(data)) == data
        assert store.read(0, start) == bytes(start)
        assert store.read(start + len(data), 6) == bytes(6)
        # every split point reads the same bytes
        padded = data + bytes(3)
        for offset in (start, unit, unit + 1, 2 * unit - 1, start + len(data) - 1):
            assert store.read(offset, 3) == padded[offset - start : offset - start + 3]

    def test_read_is_clipped_at_capacity(self) -> None:
        store = self.store()
        store.ensure_capacity(10)
        capacity = store.capacity
        store.write(capacity - 3, b"xyz")
        assert store.read(capacity - 3, 100) == b"xyz"
        assert store.read(capacity, 10) == b""

    def test_piece_holds_the_offset_and_checks_bounds(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        capacity = store.capacity
        data = _pattern(capacity)
        store.write(0, data)
        for offset in (0, 1, unit - 1, unit, unit + 1, capacity - 1):
            buffer, base, limit = store.piece(offset)
            assert base <= offset < limit <= capacity
            assert bytes(buffer[offset - base : offset - base + 1]) == data[offset : offset + 1]
            assert bytes(buffer[0 : limit - base]) == data[base:limit]
        for outside in (capacity, capacity + 1, capacity + 10 * unit, -1):
            with _raises(ValueError):
                store.piece(outside)

    def test_flush_keeps_bytes_and_accepts_any_range(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit + 100)
        data = _pattern(2 * unit + 100)
        store.write(0, data)
        store.flush(5, 5)
        store.flush(3, 17)
        store.flush(unit - 1, unit + 1)
        store.flush(0, store.capacity)
        store.flush(0, store.capacity + 12345)
        assert store.read(0, len(data)) == data

    def test_flushed_bytes_survive_reopen(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit + 100)
        data = _pattern(2 * unit + 100, seed=3)
        store.write(0, data)
        store.flush(0, len(data))
        again = self._reopen(store)
        assert again.read(0, len(data)) == data

    def test_a_flush_inside_a_later_piece_survives_reopen(self) -> None:
        # A commit's flush: a short range inside one piece, past the first, not
        # starting at a page boundary. Its offsets within the piece must be taken
        # from the piece's base, or a range-exact flush (msync) writes back
        # other bytes.
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        for index in (1, 2):
            start = index * unit + unit // 2 + 3
            end = min(start + 100, (index + 1) * unit)
            data = _pattern(end - start, seed=30 + index)
            store.write(start, data)
            store.flush(start, end)
            again = self._reopen(store)
            assert again.read(start, len(data)) == data, index
            store = again

    def test_side_files_are_replaced_whole_and_survive_reopen(self) -> None:
        store = self.store()
        if not store.save_side_file("recovery", b"first"):
            # A store with no place for side files keeps none.
            assert store.load_side_file("recovery") is None
            return
        assert store.load_side_file("recovery") == b"first"
        assert store.save_side_file("recovery", b"second, longer")
        assert store.load_side_file("recovery") == b"second, longer"
        assert store.load_side_file("other") is None
        again = self.reopen(store)
        if again is not None:
            self._made.append(again)
            assert again.load_side_file("recovery") == b"second, longer"
            store = again
        store.remove_side_file("recovery")
        store.remove_side_file("recovery")  # absent is fine
        assert store.load_side_file("recovery") is None

    def test_discard_after_zeroes_the_tail_and_keeps_the_rest(self) -> None:
        for cut in self._cuts():
            store = self.store()
            unit = self._unit(store)
            store.ensure_capacity(3 * unit)
            length = store.capacity
            data = _pattern(length, seed=cut)
            store.write(0, data)
            store.discard_after(cut)
            assert store.read(0, cut) == data[:cut], cut
            assert store.capacity >= cut
            rest = store.capacity - cut
            assert store.read(cut, rest) == bytes(rest), cut
            assert store.nonzero_extent(0) == ((0, cut) if cut else None), cut
            # growing again gives fresh zeros, never the old contents
            store.ensure_capacity(length)
            assert store.read(cut, length - cut) == bytes(length - cut), cut

    def _cuts(self) -> list[int]:
        probe = self.store()
        unit = self._unit(probe)
        return sorted({0, 1, unit - 1, unit, unit + 1, 2 * unit + 7, 3 * unit - 1})

    def test_discard_after_is_durable(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        data = _pattern(store.capacity, seed=5)
        store.write(0, data)
        store.flush(0, len(data))
        cut = unit + unit // 2 + 1
        store.discard_after(cut)
        again = self._reopen(store)
        assert again.read(0, cut) == data[:cut]
        rest = again.capacity - cut
        assert again.read(cut, rest) == bytes(rest)

    def test_drop_before(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(4 * unit)
        data = _pattern(store.capacity, seed=9)
        store.write(0, data)
        store.flush(0, len(data))
        target = 2 * unit + 3
        head = store.drop_before(target)
        assert head == store.head_lsn
        assert head <= target
        if not self.drops_prefix:
            assert head == 0
        else:
            assert head > 0
            with _raises(ValueError):
                store.piece(head - 1)
        assert store.read(head, len(data) - head) == data[head:]
        # a lower offset changes nothing
        assert store.drop_before(max(head - 1, 0)) == head
        assert store.drop_before(0) == head
        if self.drops_prefix:
            again = self._reopen(store)
            assert again.head_lsn == head
            assert again.read(head, len(data) - head) == data[head:]

    def test_nonzero_extent(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(3 * unit)
        assert store.nonzero_extent(0) is None
        store.write(5, b"\1")
        assert store.nonzero_extent(0) == (5, 6)
        far = 2 * unit + 9
        store.write(far, b"\0\2\0")
        assert store.nonzero_extent(0) == (5, far + 2)
        assert store.nonzero_extent(6) == (far + 1, far + 2)
        assert store.nonzero_extent(far + 2) is None
        assert store.nonzero_extent(store.capacity) is None

    def test_units_created_counts_growth(self) -> None:
        store = self.store()
        before = store.units_created
        unit = self._unit(store)
        store.ensure_capacity(store.capacity + 2 * unit)
        assert store.units_created >= before

    def test_close_is_idempotent(self) -> None:
        store = self.store()
        store.ensure_capacity(10)
        store.write(0, b"x")
        store.close()
        assert store.closed
        store.close()
        assert store.closed

    def test_a_closed_store_refuses_every_operation(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(2 * unit)
        store.close()
        operations: list[tuple[str, Callable[[], object]]] = [
            ("piece", lambda: store.piece(0)),
            ("read", lambda: store.read(0, 1)),
            ("write", lambda: store.write(0, b"x")),
            ("ensure_capacity", lambda: store.ensure_capacity(8 * unit)),
            ("flush", lambda: store.flush(0, unit)),
            ("discard_after", lambda: store.discard_after(1)),
            ("drop_before", lambda: store.drop_before(unit + 1)),
            ("nonzero_extent", lambda: store.nonzero_extent(0)),
        ]
        wrong: list[str] = []
        for name, operation in operations:
            try:
                operation()
            except (ValueError, WalClosedError):
                continue
            except Exception as error:  # noqa: BLE001 - reported below
                wrong.append(f"{name} raised {type(error).__name__}: {error}")
            else:
                wrong.append(f"{name} succeeded")
        detail = "; ".join(wrong)
        assert not wrong, f"a closed store must raise WalClosedError or ValueError: {detail}"

    def test_concurrent_writes_reads_and_flushes(self) -> None:
        store = self.store()
        unit = self._unit(store)
        store.ensure_capacity(4 * unit)
        size = store.capacity // 4
        errors: list[BaseException] = []

        def writer(part: int) -> None:
            try:
                data = _pattern(size, seed=part + 1)
                piece = max(97, size // 256)
                for step in range(0, size, piece):
                    store.write(part * size + step, data[step : step + piece])
                    store.read(part * size, 16)
            except BaseException as error:  # noqa: BLE001 - re-raised by the test
                errors.append(error)

        def flusher() -> None:
            try:
                for _ in range(20):
                    store.flush(0, 4 * size)
            except BaseException as error:  # noqa: BLE001 - re-raised by the test
                errors.append(error)

        threads = [threading.Thread(target=writer, args=(part,)) for part in range(4)]
        threads.append(threading.Thread(target=flusher))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for part in range(4):
            assert store.read(part * size, size) == _pattern(size, seed=part + 1)

    def test_out_of_space_changes_nothing(self) -> None:
        probe = self.store()
        unit = self._unit(probe)
        store = self.make_store_with_space(2 * unit)
        if store is None:
            raise unittest.SkipTest(f"{type(probe).__name__} cannot simulate a full disk")
        self._made.append(store)
        store.ensure_capacity(unit)
        store.write(0, b"kept")
        capacity = store.capacity
        with _raises(OSError):
            store.ensure_capacity(capacity + 8 * unit)
        assert store.capacity == capacity
        assert store.read(0, 4) == b"kept"
        store.write(capacity - 1, b"z")
        store.flush(0, capacity)
        assert store.read(capacity - 1, 1) == b"z"

    # -- growth during a flush, writes into pieces ---------------------------------------

    def _durable(self, store: Store) -> Store:
        """Return a store over what ``store`` made durable, or ``store`` itself with no reopen."""
        again = self.reopen(store)
        if again is None:
            return store
        self._made.append(again)
        return again

    def test_growth_runs_while_a_flush_runs(self) -> None:
        # The log's flush leader holds no lock while appends roll the log: a store
        # whose growth waits for a flush stalls every append behind the disk (or
        # deadlocks), and one whose flush and growth share state unguarded loses
        # the growth's files or bytes from the next flush.
        hold = FlushHold()
        store = self.make_held_store(hold)
        if store is None:
            raise unittest.SkipTest(f"{type(self).__name__} cannot hold a flush")
        self._made.append(store)
        unit = self._unit(store)
        # A commit before, as the leader makes it: flush, then release (which may
        # start making the next unit ahead); then bytes the held flush is for.
        committed = unit + unit // 2
        store.ensure_capacity(2 * unit)
        first = _pattern(2 * unit - 1, seed=21)
        store.write(0, first[:committed])
        store.flush(0, committed)
        store.release(committed)
        store.write(committed, first[committed:])
        errors: list[BaseException] = []

        def run(step: Callable[[], object]) -> threading.Thread:
            def target() -> None:
                try:
                    step()
                except BaseException as error:  # noqa: BLE001 - re-raised by the test
                    errors.append(error)

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            return thread

        grown_to = store.capacity + 2 * unit + 7  # past at least two more boundaries
        second = _pattern(grown_to - len(first), seed=22)

        def grow() -> None:
            store.ensure_capacity(grown_to)
            store.write(len(first), second)

        hold.arm()
        try:
            flushing = run(lambda: store.flush(committed, len(first)))
            assert hold.entered.wait(HOLD_DEADLINE), "the flush never reached the seam"
            growing = run(grow)
            growing.join(HOLD_DEADLINE)
            assert not growing.is_alive(), "growth waited for the flush running meanwhile"
            assert flushing.is_alive(), "the flush returned while held"
            assert not errors, errors
        finally:
            hold.release()
        flushing.join(HOLD_DEADLINE)
        assert not flushing.is_alive()
        assert not errors, errors
        assert store.capacity >= grown_to
        assert store.read(0, grown_to) == first + second
        store.flush(len(first), grown_to)
        assert self._durable(store).read(0, grown_to) == first + second

    def test_pieces_take_writes_when_the_store_declares_it(self) -> None:
        store = self.store()
        if not store.writes_into_pieces:
            raise unittest.SkipTest(f"{type(store).__name__} takes writes only through write")
        unit = self._unit(store)
        store.ensure_capacity(3 * unit + 1)
        end = store.capacity
        data = _pattern(end, seed=41)
        position = 0
        step = max(1, unit // 3)
        while position < end:
            buffer, base, limit = store.piece(position)
            stop = min(limit, position + step)
            buffer[position - base : stop - base] = data[position:stop]  # type: ignore[index]
            position = stop
        assert store.read(0, end) == data
        assert store.nonzero_extent(0) == (0, end)
        store.flush(0, end)
        assert self._durable(store).read(0, end) == data

    def test_a_log_over_a_store_without_piece_writes_copies_through_write(self) -> None:
        # A store that does not declare ``writes_into_pieces`` hands out pieces the
        # log must not write into (copies, here refusing assignment): the log's
        # append fast path must stay shut and every frame go through ``write``.
        inner = self.store()
        unit = self._unit(inner)
        refusing = PieceWritesRefused(inner)
        # Enough records (frames of 9-48 bytes) to cross a piece boundary.
        records = [_pattern(1 + (7 * n) % 40, seed=n) for n in range(unit // 24 + 8)]
        with Wal.with_store(refusing) as wal:
            lsns = [wal.append(record) for record in records[:4]]
            wal.sync()
            lsns += [wal.append(record) for record in records[4:-4]]
            lsns += wal.append_many(records[-4:])
            wal.sync()
            assert [(r.lsn, r.data) for r in wal] == list(zip(lsns, records, strict=True))
        assert refusing.writes == len(records) - 3  # one per append, one for append_many
        again = self.reopen(inner)
        if again is None:
            return
        with Wal.with_store(PieceWritesRefused(again)) as wal:
            assert [(r.lsn, r.data) for r in wal] == list(zip(lsns, records, strict=True))
            wal.append_and_sync(b"after the reopen")
