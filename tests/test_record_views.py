"""``RecordViews``, the per-record loop of ``copy=False`` reads: C and its Python twin agree.

Each test drives both (``mmwal._speedups.RecordViews`` and
``_recordviews.RecordViewsPython``) with the same feed and compares what they
yield, which views are released when, and what they ask the feed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmwal._format import Record, encode_frames
from mmwal._recordviews import Feed, RecordViewsPython, Run

speedups = pytest.importorskip("mmwal._speedups", reason="the C extension is not built here")

TWINS: list[type[Any]] = [speedups.RecordViews, RecordViewsPython]
twins = pytest.mark.parametrize("kind", TWINS, ids=["c", "python"])


def runs_of(image: bytes | bytearray, base: int, step: int) -> list[Run]:
    """Cut the good frames of ``image`` into runs of about ``step`` bytes, as the log does."""
    view = memoryview(image).toreadonly()
    runs: list[Run] = []
    position = 0
    while position < len(image):
        lsns, offsets, lengths, stop = speedups.frames(
            view, position, len(image), base, 1 << 20, -1, step
        )
        if stop == position:
            break
        runs.append((view, lsns, offsets, lengths, None, 0))
        position = stop
    return runs


class Recorder:
    """A feed over fixed runs that records what it was asked."""

    def __init__(self, runs: list[Run], *, on_call: Callable[[int | None], None] | None = None):
        self.runs: Iterator[Run] = iter(runs)
        self.asked: list[int | None] = []
        self.on_call = on_call

    def __call__(self, lsn: int | None) -> Run | None:
        self.asked.append(lsn)
        if self.on_call is not None:
            self.on_call(lsn)
        return next(self.runs, None)


def released(view: memoryview) -> bool:
    try:
        len(view)
    except ValueError:
        return True
    return False


def walk(kind: type[Any], feed: Feed) -> list[tuple[type, int, bytes]]:
    """Walk to the end, checking each view is live when yielded and released on advance."""
    out: list[tuple[type, int, bytes]] = []
    previous = None
    for record in kind(feed, Record):
        if previous is not None:
            assert released(previous)
        assert record.data.readonly
        out.append((type(record), record.lsn, bytes(record.data)))
        previous = record.data
    if previous is not None:
        assert released(previous)
    return out


@st.composite
def logs(draw: st.DrawFn) -> bytes:
    payloads = draw(st.lists(st.binary(max_size=80), max_size=30))
    image = bytearray(encode_frames(payloads))
    for _ in range(draw(st.integers(0, 2))):
        if image:
            image[draw(st.integers(0, len(image) - 1))] ^= draw(st.integers(1, 255))
    return bytes(image)


@given(logs(), st.integers(0, 1 << 40), st.integers(1, 300))
@settings(max_examples=300, deadline=None)
def test_both_yield_the_good_frames_of_every_run(image: bytes, base: int, step: int) -> None:
    runs = runs_of(image, base, step)
    c_records = walk(speedups.RecordViews, Recorder(runs))
    assert c_records == walk(RecordViewsPython, Recorder(runs))
    expected = speedups.scan(image, 0, len(image), base, 1 << 20, Record, -1, -1)[0]
    assert c_records == [(Record, r.lsn, r.data) for r in expected]


@twins
def test_release_views_asks_the_feed_again_from_the_next_record(kind: type[Any]) -> None:
    image = encode_frames([b"a", b"bb", b"ccc", b"dddd"])
    feed = Recorder(runs_of(image, 100, 1 << 20) * 2)
    records = kind(feed, Record)
    first, second = next(records), next(records)
    records.release_views()
    assert released(second.data)
    assert released(first.data)
    third = next(records)  # from the second copy of the run: the feed was asked for 'ccc'
    assert feed.asked == [None, 100 + 9 + 10]
    assert (third.lsn, bytes(third.data)) == (100, b"a")


@twins
def test_a_release_while_the_feed_runs_asks_again_from_the_runs_start(kind: type[Any]) -> None:
    image = encode_frames([b"a", b"bb"])
    runs = runs_of(image, 0, 1 << 20)
    holder: list[Any] = []

    def release_once(lsn: int | None) -> None:
        if len(feed.asked) == 1:
            holder[0].release_views()

    feed = Recorder(runs * 2, on_call=release_once)
    holder.append(kind(feed, Record))
    assert [bytes(r.data) for r in holder[0]] == [b"a", b"bb"]
    assert feed.asked == [None, 0, None]


@twins
def test_a_moved_remote_counter_asks_the_feed_again(kind: type[Any]) -> None:
    image = encode_frames([b"a", b"bb", b"ccc"])
    counter = bytearray(8)
    view, lsns, offsets, lengths, _, _ = runs_of(image, 0, 1 << 20)[0]
    feed = Recorder(
        [
            (view, lsns, offsets, lengths, counter, 0),
            (view, lsns, offsets, lengths, counter, 1),
        ]
    )
    records = kind(feed, Record)
    next(records)
    counter[0] = 1  # the writer began a truncation
    held = next(records)  # the run again, from its start: the feed decides what survives
    assert feed.asked == [None, 9]
    assert bytes(held.data) == b"a"
    del view, held


@twins
def test_a_feed_that_raises_ends_the_walk(kind: type[Any]) -> None:
    def feed(lsn: int | None) -> Run | None:
        raise KeyError(lsn)

    records = kind(feed, Record)
    with pytest.raises(KeyError):
        next(records)
    with pytest.raises(StopIteration):
        next(records)


@twins
def test_close_releases_the_view_and_ends_the_walk(kind: type[Any]) -> None:
    image = encode_frames([b"a", b"bb"])
    records = kind(Recorder(runs_of(image, 0, 1 << 20)), Record)
    first = next(records)
    records.close()
    assert released(first.data)
    with pytest.raises(StopIteration):
        next(records)


@twins
def test_a_view_pins_its_exporter_until_the_walk_advances(kind: type[Any]) -> None:
    image = bytearray(encode_frames([b"abc", b"defgh"]))
    runs = runs_of(image, 0, 1 << 20)
    feed = Recorder(runs)
    records = kind(feed, Record)
    first = next(records)
    parent = runs[0][0]
    runs.clear()
    parent.release()  # the run's own view: the record's view outlives it
    assert bytes(first.data) == b"abc"
    with pytest.raises(BufferError):
        image.append(0)
    # The run's view is gone: the next record is asked of the feed by its LSN
    # (here the feed has no more runs, so the walk ends).
    with pytest.raises(StopIteration):
        next(records)
    assert feed.asked == [None, 11]
    assert released(first.data)
    image.append(0)  # every view released: nothing pins the bytearray


@twins
def test_a_view_a_consumer_still_exports_stops_the_walk(kind: type[Any]) -> None:
    image = encode_frames([b"abc", b"defgh"])
    records = kind(Recorder(runs_of(image, 0, 1 << 20)), Record)
    first = next(records)
    exporting = struct.iter_unpack("c", first.data)  # holds a buffer of the view
    with pytest.raises(BufferError):
        next(records)
    with pytest.raises(StopIteration):
        next(records)
    assert list(exporting) == [(b"a",), (b"b",), (b"c",)]


@twins
def test_what_is_not_a_run_is_refused(kind: type[Any]) -> None:
    image = encode_frames([b"abc", b"defgh"])
    view, lsns, offsets, lengths, _, _ = runs_of(image, 0, 1 << 20)[0]
    short = view[:10]  # the second payload lies past its end
    cases: list[tuple[tuple[Any, ...], type[Exception]]] = [
        ((short, lsns, offsets, lengths, None, 0), IndexError),
        ((view, lsns, offsets[:8], lengths, None, 0), ValueError),
        ((view.cast("I"), lsns, offsets, lengths, None, 0), TypeError),
        ((view.cast("c"), lsns, offsets, lengths, None, 0), TypeError),
    ]
    for run, error in cases:
        with pytest.raises(error):
            list(kind(Recorder([cast("Run", run)]), Record))
    gone = memoryview(image)
    gone.release()  # a released run is asked again (from its first record), not read
    feed = Recorder([(gone, lsns, offsets, lengths, None, 0)])
    assert list(kind(feed, Record)) == []
    assert feed.asked == [None, 0]
    with pytest.raises(TypeError):
        kind(Recorder([]), list)
    with pytest.raises(TypeError):
        kind(None, Record)


@twins
def test_a_run_released_under_the_walk_is_a_release(kind: type[Any]) -> None:
    # Catches: a truncation in another thread that has released the batch (the
    # run's view) but not yet reached the walk's release_views() making the next
    # step raise a bare ValueError ("released memoryview") instead of asking the
    # feed for the next record by its LSN (where the log raises WalTruncatedError
    # for a removed record, or reads it again).
    image = encode_frames([b"a", b"bb", b"ccc"])
    first_run = runs_of(bytearray(image), 0, 1 << 20)
    feed = Recorder(first_run + runs_of(image, 0, 1 << 20))
    records = kind(feed, Record)
    assert bytes(next(records).data) == b"a"
    first_run[0][0].release()  # as the reader's batch holder is released
    again = next(records)
    assert feed.asked == [None, 9]
    assert (again.lsn, bytes(again.data)) == (0, b"a")  # the second run starts at 0


@twins
def test_a_run_released_before_the_feed_returned_is_asked_again(kind: type[Any]) -> None:
    # Catches: the same race one step earlier, the batch released between its
    # making and the walk's taking it (the walk failed on the released view).
    image = encode_frames([b"a", b"bb"])
    stale = runs_of(bytearray(image), 0, 1 << 20)
    stale[0][0].release()
    feed = Recorder(stale + runs_of(image, 0, 1 << 20))
    assert [bytes(r.data) for r in kind(feed, Record)] == [b"a", b"bb"]
    assert feed.asked == [None, 0, None]
