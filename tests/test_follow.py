"""Following a log live, in this process and from another one; zero-copy reads; Record.end."""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mmwal
from mmwal import Record, SegmentStore, Syscalls, Wal, WalTruncatedError

SEGMENT = 256


def payloads(count: int, seed: int = 0) -> list[bytes]:
    return [f"{seed}-{i}-".encode() * (1 + (i * 7 + seed) % 9) for i in range(count)]


def _run_writer(script: str, *args: object) -> subprocess.Popen[bytes]:
    source = textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", source, *map(str, args)], stderr=subprocess.PIPE)


def _finish(writer: subprocess.Popen[bytes]) -> None:
    _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors.decode()


# -- Record.end, iter(start, stop, copy=False) -------------------------------------------


def test_record_end_is_where_the_next_record_starts(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_many(payloads(50))
        records = list(wal)
    for record, after in itertools.pairwise(records):
        assert record.end == after.lsn == record.lsn + 8 + len(record.data)


def test_iter_stop_bounds_the_range(tmp_path: Path) -> None:
    data = payloads(40)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        assert [r.data for r in wal.iter(lsns[5], lsns[20])] == data[5:20]
        assert [r.data for r in wal.iter(stop=lsns[3])] == data[:3]
        assert [r.data for r in wal.iter(lsns[5], lsns[20] + 1)] == data[5:21]
        assert [bytes(r.data) for r in wal.iter(lsns[5], lsns[20], copy=False)] == data[5:20]


def test_copy_false_yields_read_only_views_released_on_advance(tmp_path: Path) -> None:
    data = payloads(30)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_many(data)
        walk = iter(wal.iter(copy=False))
        first = next(walk)
        assert isinstance(first.data, memoryview)
        assert first.data.readonly
        assert bytes(first.data) == data[0]
        second = next(walk)
        with pytest.raises(ValueError, match="released"):
            bytes(first.data)
        assert bytes(second.data) == data[1]
        assert [bytes(r.data) for r in walk] == data[2:]


def test_close_with_a_view_held_succeeds_and_releases_it(tmp_path: Path) -> None:
    wal = Wal.open_segmented(tmp_path / "log", SEGMENT)
    wal.append_many(payloads(10))
    walk = iter(wal.iter(copy=False))
    record = next(walk)
    batches = iter(wal.batches())
    batch = next(batches)
    wal.close()
    with pytest.raises(ValueError, match="released"):
        bytes(record.data)
    with pytest.raises(ValueError, match="released"):
        bytes(batch.view)


def test_a_view_the_caller_sliced_keeps_its_mapping_alive_past_close(tmp_path: Path) -> None:
    wal = Wal.open(tmp_path / "log")
    wal.append(b"kept bytes")
    walk = iter(wal.iter(copy=False))
    record = next(walk)
    kept = memoryview(record.data)[2:]
    wal.close()  # must not raise BufferError, and must not unmap under ``kept``
    assert bytes(kept) == b"pt bytes"
    kept.release()


# -- batches -----------------------------------------------------------------------------


def test_batches_hold_every_record_with_arrays(tmp_path: Path) -> None:
    data = payloads(300)
    with Wal.open_segmented(tmp_path / "log", 4096) as wal:
        lsns = wal.append_many(data)
        seen: list[tuple[int, bytes]] = []
        for batch in wal.batches(max_bytes=1000):
            assert batch.view.readonly
            for i in range(len(batch)):
                start = batch.offsets[i]
                payload = bytes(batch.view[start : start + batch.lengths[i]])
                seen.append((batch.lsns[i], payload))
                assert batch[i] == (batch.lsns[i], payload)
        assert seen == list(zip(lsns, data, strict=True))
        assert [
            (r.lsn, bytes(r.data)) for b in wal.batches(lsns[10], lsns[200]) for r in b
        ] == seen[10:200]


def test_a_batch_is_released_when_the_iterator_advances(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", 4096) as wal:
        wal.append_many(payloads(300))
        walk = iter(wal.batches(max_bytes=512))
        first = next(walk)
        item = first[0]
        next(walk)
        with pytest.raises(ValueError, match="released"):
            bytes(first.view)
        with pytest.raises(ValueError, match="released"):
            bytes(item.data)


# -- iterators and truncation (issue 8, item 4) ----------------------------------------------


@pytest.mark.parametrize("copy", [True, False])
def test_truncate_before_under_an_open_iterator_raises_walTruncatedError(
    tmp_path: Path, copy: bool
) -> None:
    data = payloads(200)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        walk = iter(wal.iter(copy=copy))
        assert bytes(next(walk).data) == data[0]
        wal.truncate_before(lsns[150])
        with pytest.raises(WalTruncatedError) as caught:
            next(walk)
        assert caught.value.lsn == lsns[1]


def test_an_iterator_past_the_new_head_goes_on(tmp_path: Path) -> None:
    data = payloads(200)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        walk = iter(wal.iter(lsns[150]))
        wal.truncate_before(lsns[100])
        assert [r.data for r in walk] == data[150:]


@pytest.mark.parametrize("copy", [True, False])
def test_truncate_after_then_appends_never_reach_an_older_iterator(
    tmp_path: Path, copy: bool
) -> None:
    data = payloads(200)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(data)
        walk = iter(wal.iter(copy=copy))
        assert bytes(next(walk).data) == data[0]
        wal.truncate_after(lsns[49])
        wal.append_many([b"new " * (i % 5 + 1) for i in range(150)])
        seen: list[bytes] = []
        with pytest.raises(WalTruncatedError) as caught:
            seen.extend(bytes(record.data) for record in walk)
        assert seen == data[1:50]
        assert caught.value.lsn == lsns[50]


def test_truncation_from_another_thread_mid_walk_never_yields_a_removed_record(
    tmp_path: Path,
) -> None:
    # A record read before the truncation took effect may be yielded, whatever its
    # LSN: the walk may outrun the other thread. The promise is about order: once
    # truncate_after returned, no later step yields a record past the cut. Half the
    # rounds wait for the truncation at record 10 (the promise bites every time),
    # half race it. Catches a walk that misses the truncation (no Watch check) and
    # one that yields bytes the truncation zeroed.
    with Wal.open_segmented(tmp_path / "log", 4096) as wal:
        for round_ in range(20):
            data = payloads(400, seed=round_)
            lsns = wal.append_many(data)
            cut = lsns[len(lsns) // 2]
            expected = dict(zip(lsns, data, strict=True))
            walk = iter(wal.iter(lsns[0], copy=round_ % 2 == 0))
            done = threading.Event()

            def cut_log(cut: int = cut, done: threading.Event = done) -> None:
                wal.truncate_after(cut)
                done.set()

            truncator = threading.Thread(target=cut_log)
            waits = round_ % 4 < 2
            seen: list[tuple[int, bytes]] = []
            with contextlib.suppress(WalTruncatedError):
                for index in itertools.count():
                    truncated_before_step = done.is_set()
                    record = next(walk, None)
                    if record is None:
                        break
                    seen.append((record.lsn, bytes(record.data)))
                    if truncated_before_step:
                        assert record.lsn <= cut
                    if index == 10:
                        truncator.start()
                        if waits:
                            truncator.join()
            truncator.join()
            if waits:
                assert [lsn for lsn, _ in seen] == lsns[: lsns.index(cut) + 1]
            for lsn, payload in seen:
                assert expected[lsn] == payload


# -- following in this process --------------------------------------------------------------


def _drain(records: Iterator[Record], count: int) -> list[tuple[int, bytes]]:
    out = []
    for record in records:
        out.append((record.lsn, bytes(record.data)))
        if len(out) == count:
            break
    return out


@pytest.mark.parametrize("copy", [True, False])
def test_an_in_process_follower_sees_every_record_once_in_order(tmp_path: Path, copy: bool) -> None:
    data = payloads(2000)
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        got: list[tuple[int, bytes]] = []
        follower = threading.Thread(
            target=lambda: got.extend(_drain(wal.follow(timeout=10, copy=copy), len(data)))
        )
        follower.start()
        lsns = []
        for i, payload in enumerate(data):
            lsns.append(wal.append(payload))
            if i % 300 == 0:
                time.sleep(0.01)
        follower.join(20)
        assert got == list(zip(lsns, data, strict=True))


def test_a_follower_times_out_and_resumes_from_record_end(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append_many([b"a", b"b"])
        began = time.monotonic()
        seen = list(wal.follow(timeout=0.2))
        assert time.monotonic() - began >= 0.2
        assert [r.data for r in seen] == [b"a", b"b"]
        wal.append(b"c")
        assert [r.data for r in wal.follow(seen[-1].end, timeout=0)] == [b"c"]


def test_closing_the_log_ends_its_followers(tmp_path: Path) -> None:
    wal = Wal.open_segmented(tmp_path / "log", SEGMENT)
    wal.append(b"x")
    done = threading.Event()
    got: list[bytes] = []

    def follow() -> None:
        got.extend(r.data for r in wal.follow())
        done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.1)
    wal.close()
    assert done.wait(5)
    thread.join()
    assert got == [b"x"]


def test_a_durable_follower_is_never_ahead_of_sync(tmp_path: Path) -> None:
    # Catches: a durable follower yielding records that no sync has been asked to
    # make durable (the written end where the durable end belongs). The bound is
    # raised just before each sync starts: the sync's flush may wake the follower
    # before ``sync`` returns to this thread, and those records are durable then.
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        bound = [0]
        violations: list[int] = []
        got: list[int] = []
        stop = threading.Event()

        def follow() -> None:
            for record in wal.follow(durable=True, timeout=2):
                if record.end > bound[0] or record.end > wal.durable_lsn:
                    violations.append(record.lsn)
                got.append(record.lsn)
                if stop.is_set() and record.end >= bound[0]:
                    return

        thread = threading.Thread(target=follow)
        thread.start()
        for i in range(300):
            wal.append(b"r%d" % i)
            if i % 20 == 19:
                bound[0] = wal.next_lsn
                wal.sync()
        stop.set()
        bound[0] = wal.next_lsn
        wal.sync()
        thread.join(10)
        assert not violations
        assert len(got) == 300


def test_a_follower_of_an_empty_log_waits_for_the_first_record(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        got: list[bytes] = []
        thread = threading.Thread(
            target=lambda: got.extend(r.data for r in _first(wal.follow(timeout=5), 2))
        )
        thread.start()
        time.sleep(0.05)
        wal.append(b"first")
        wal.append(b"second")
        thread.join(10)
        assert got == [b"first", b"second"]


def test_a_follower_started_before_the_writer_made_the_log_sees_its_records(
    tmp_path: Path,
) -> None:
    # Catches: a read-only follower of a directory with no log in it yet (a reader
    # started before its writer) that never sees the segments and the state file
    # the writer then creates.
    directory = tmp_path / "log"
    directory.mkdir()
    with mmwal.open(directory, readonly=True) as reader:
        got: list[bytes] = []
        thread = threading.Thread(
            target=lambda: got.extend(bytes(r.data) for r in _first(reader.follow(timeout=5), 2))
        )
        thread.start()
        time.sleep(0.05)
        with Wal.open_segmented(directory, SEGMENT) as wal:
            wal.append(b"first")
            wal.append(b"second")
            wal.sync()
            thread.join(10)
        assert got == [b"first", b"second"]


def _first(records: Iterator[Record], count: int) -> Iterator[Record]:
    for index, record in enumerate(records):
        yield record
        if index + 1 == count:
            return


def test_truncate_after_below_a_follower_raises_at_or_below_goes_on(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(payloads(60))
        ahead = wal.follow()
        behind = wal.follow()
        assert len(_drain(ahead, 40)) == 40
        assert len(_drain(behind, 20)) == 20
        wal.truncate_after(lsns[29])
        wal.append_many([b"after the cut"] * 3)
        with pytest.raises(WalTruncatedError) as caught:
            next(ahead)
        assert caught.value.lsn == lsns[40]
        rest = [r.data for r in _first(behind, 13)]
        assert rest == payloads(60)[20:30] + [b"after the cut"] * 3


def test_truncate_before_above_a_follower_raises_even_before_it_starts(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(payloads(100))
        started = wal.follow()
        not_started = wal.follow()
        assert len(_drain(started, 5)) == 5
        wal.truncate_before(lsns[80])
        with pytest.raises(WalTruncatedError):
            next(started)
        with pytest.raises(WalTruncatedError) as caught:
            next(not_started)
        assert caught.value.lsn == 0


# -- following from another process -------------------------------------------------------

_WRITER = """
    import sys, time
    from mmwal import Wal
    with Wal.open_segmented(sys.argv[1], 256) as wal:
        for i in range(3000):
            wal.append(b"%d:" % i + b"x" * (i % 50))
            if i % 97 == 0:
                wal.sync()
            if i % 500 == 0:
                time.sleep(0.02)
"""


def test_a_follower_in_another_process_sees_every_record_once_across_rolls(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    # Opened before the writer created anything: an empty directory is an empty log.
    with Wal.open_segmented(directory, 256, readonly=True) as follower:
        writer = _run_writer(_WRITER, directory)
        got = _drain(follower.follow(timeout=10), 3000)
        _finish(writer)
    assert [data for _, data in got] == [b"%d:" % i + b"x" * (i % 50) for i in range(3000)]
    assert [lsn for lsn, _ in got] == sorted({lsn for lsn, _ in got})
    assert (directory / "mmwal-ends").stat().st_mode & 0o777 == 0o600


def test_refresh_shows_a_read_only_handle_what_the_writer_appended(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append(b"one")
        wal.sync()
        with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
            assert [r.data for r in reader] == [b"one"]
            wal.append_many([b"two"] * 40)
            assert reader.next_lsn == 11
            assert reader.refresh() == wal.next_lsn
            assert reader.durable_lsn == 11
            wal.sync()
            reader.refresh()
            assert reader.durable_lsn == wal.next_lsn
            assert [r.data for r in reader] == [b"one"] + [b"two"] * 40


def test_a_read_only_durable_follower_waits_for_the_published_durable_end(
    tmp_path: Path,
) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        wal.append(b"durable")
        wal.sync()
        wal.append(b"not yet")
        with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
            assert [r.data for r in reader.follow(durable=True, timeout=0.1)] == [b"durable"]
            wal.sync()
            assert [r.data for r in reader.follow(durable=True, timeout=0.1)] == [
                b"durable",
                b"not yet",
            ]


@pytest.mark.parametrize("segmented", [True, False])
def test_a_read_only_open_reports_the_writers_durable_end_not_its_written_end(
    tmp_path: Path, segmented: bool
) -> None:
    # Catches a reader that takes everything recovery found (unsynced records
    # still in the page cache) for durable, until its first refresh.
    path = tmp_path / ("log" if segmented else "log.wal")
    with Wal.open_segmented(path, SEGMENT) if segmented else Wal.open(path) as wal:
        wal.append_and_sync(b"a" * 100)
        wal.append(b"b" * 100)
        with mmwal.open(path, readonly=True) as reader:
            assert reader.next_lsn == 216
            assert reader.durable_lsn == wal.durable_lsn == 108


def test_truncations_reach_a_follower_in_another_handle(tmp_path: Path) -> None:
    with Wal.open_segmented(tmp_path / "log", SEGMENT) as wal:
        lsns = wal.append_many(payloads(60))
        wal.sync()
        with Wal.open_segmented(tmp_path / "log", readonly=True) as reader:
            ahead = reader.follow(timeout=1)
            assert len(_drain(ahead, 40)) == 40
            wal.truncate_after(lsns[29])
            wal.append_many([b"new"] * 20)
            with pytest.raises(WalTruncatedError):
                next(ahead)
            behind = reader.follow(lsns[20], timeout=0.2)
            assert [r.data for r in behind] == payloads(60)[20:30] + [b"new"] * 20
            not_started = reader.follow(lsns[20], timeout=0.2)
            wal.truncate_before(wal.next_lsn)
            with pytest.raises(WalTruncatedError):
                next(not_started)
            with pytest.raises(ValueError, match="below the head"):
                reader.follow(lsns[0])


def test_a_follower_waits_out_a_writer_that_died_mid_record(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 4096) as wal:
        wal.append_many([b"before"] * 3)
        end = wal.next_lsn
    # The dead writer's last record: a header and half its payload.
    torn = mmwal._format.encode_frame(b"y" * 100)[:60]
    with open(directory / "00000000000000000000.wal", "r+b") as segment:
        segment.seek(end)
        segment.write(torn)
    with Wal.open_segmented(directory, readonly=True) as follower:
        walk = follower.follow(timeout=5)
        assert [r.data for r in _first(walk, 3)] == [b"before"] * 3
        assert list(follower.follow(end, timeout=0.2)) == []
        with Wal.open_segmented(directory) as recovered:
            recovered.append(b"after recovery")
        assert [r.data for r in _first(walk, 1)] == [b"after recovery"]


# -- read-only opens racing a live writer (issue 8, item 5) ----------------------------------

_TRUNCATING_WRITER = """
    import sys, time
    from mmwal import Wal
    with Wal.open_segmented(sys.argv[1], 512) as wal:
        deadline = time.monotonic() + float(sys.argv[2])
        i = 0
        while time.monotonic() < deadline:
            lsn = wal.append(b"r" * (i % 40))
            i += 1
            if i % 25 == 0:
                wal.sync()
                wal.truncate_before(lsn)
"""


@pytest.mark.slow
def test_read_only_opens_racing_a_truncating_writer_never_fail(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, 512) as wal:
        wal.append(b"seed")
    writer = _run_writer(_TRUNCATING_WRITER, directory, 4)
    failures: list[BaseException] = []
    opens = 0
    try:
        deadline = time.monotonic() + 3.5
        time.sleep(0.3)
        while time.monotonic() < deadline:
            try:
                # Reading may meet the writer's next truncation, and say so.
                with (
                    Wal.open_segmented(directory, readonly=True) as reader,
                    contextlib.suppress(WalTruncatedError),
                ):
                    for record in reader:
                        assert record.data in {b"seed", b"r" * len(record.data)}
            except Exception as error:
                failures.append(error)
            opens += 1
    finally:
        _finish(writer)
    assert opens > 50
    assert failures == []


# -- the state file ------------------------------------------------------------------------------


def test_the_state_file_is_never_a_planted_symlink_target(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, directory / "mmwal-ends")
    with Wal.open_segmented(directory, SEGMENT) as wal:
        wal.append(b"x")
        wal.sync()
    assert victim.read_bytes() == b"precious"
    assert not (directory / "mmwal-ends").is_symlink()


class StateFileSyscalls(Syscalls):
    """Real syscalls, recording the state file's; its allocation fails when told (a full disk)."""

    def __init__(self, *, no_space: bool) -> None:
        self.no_space = no_space
        self.names: dict[int, str] = {}
        self.calls: list[tuple[str, int]] = []  # (call, open flags or 0) on the state file

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path)
        if self.names[fd] == "mmwal-ends":
            self.calls.append(("open", flags))
        return fd

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self.names.get(fd) == "mmwal-ends":
            self.calls.append(("allocate", 0))
            if self.no_space:
                raise OSError(errno.ENOSPC, "no space (injected)")
        super().allocate(fd, offset, length)

    def map(self, fd: int, length: int, offset: int, *, writable: bool) -> mmap.mmap:
        if self.names.get(fd) == "mmwal-ends":
            self.calls.append(("map", 0))
        return super().map(fd, length, offset, writable=writable)


def test_the_state_file_is_created_and_mapped_through_the_syscalls_seam(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    syscalls = StateFileSyscalls(no_space=False)
    with Wal.with_store(SegmentStore(directory, SEGMENT, syscalls=syscalls)) as wal:
        wal.append(b"a")
    assert [call for call, _ in syscalls.calls] == ["open", "allocate", "map"]
    flags = syscalls.calls[0][1]
    wanted = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    assert flags & wanted == wanted


def test_a_fault_in_the_state_file_never_fails_the_writer(tmp_path: Path) -> None:
    # A full disk at the state file's allocation reaches it through the seam: the
    # writer goes on without publishing (no empty file is left behind), and a
    # follower finds every record by its frames alone.
    directory = tmp_path / "log"
    syscalls = StateFileSyscalls(no_space=True)
    with Wal.with_store(SegmentStore(directory, SEGMENT, syscalls=syscalls)) as wal:
        wal.append_many([b"a"] * 10)
        wal.sync()
        assert ("allocate", 0) in syscalls.calls
        assert not (directory / "mmwal-ends").exists()
        with Wal.open_segmented(directory, readonly=True) as reader:
            assert len(list(reader.follow(timeout=0))) == 10


def test_a_torn_or_foreign_state_file_is_distrusted(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, SEGMENT) as wal:
        wal.append_many([b"a"] * 10)
        wal.sync()
    state = directory / "mmwal-ends"
    image = bytearray(state.read_bytes())
    # Tear one slot: the other one is used; tear both: frames alone decide.
    image[20] ^= 0xFF
    state.write_bytes(bytes(image))
    with Wal.open_segmented(directory, readonly=True) as reader:
        assert len(list(reader.follow(timeout=0))) == 10
    image[192 + 20] ^= 0xFF
    state.write_bytes(bytes(image))
    with Wal.open_segmented(directory, readonly=True) as reader:
        assert len(list(reader.follow(timeout=0))) == 10
    # A state naming a head the log does not reach is not this log's.
    from mmwal._published import Ends, _encode

    foreign = _encode(Ends(99, 10**9, 10**9, 10**9 - 10, 0, ()))
    state.write_bytes(foreign + bytes(4096 - len(foreign)))
    with Wal.open_segmented(directory, readonly=True) as reader:
        assert len(list(reader.follow(timeout=0))) == 10
