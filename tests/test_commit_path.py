"""What the commit path keeps between commits: the flushed chunk's address, the published ends."""

from __future__ import annotations

import mmap
from pathlib import Path

from mmwal import SegmentStore, Syscalls, Wal
from mmwal._published import ENDS_FILE_NAME, Ends, EndsPublisher, _encode, _latest
from mmwal._syscalls import mapping_address

SEGMENT = 16 * 1024


class MsyncRecorder(Syscalls):
    """Real syscalls that remember the address and length of every msync."""

    def __init__(self) -> None:
        self.msyncs: list[tuple[int, int]] = []

    def msync(self, address: int, length: int) -> None:
        self.msyncs.append((address, length))
        super().msync(address, length)


def _inside(mapping: mmap.mmap, address: int, length: int) -> bool:
    base = mapping_address(mapping)
    return base <= address and address + length <= base + len(mapping)


def test_a_chunk_mapped_again_is_flushed_through_its_new_mapping(tmp_path: Path) -> None:
    # The flush keeps the address of the chunk it flushed last. A chunk let go
    # (mapped_chunks) and mapped again is a new mapping: a cache keyed by index
    # would msync the old address, unmapped by then or another file's.
    directory = tmp_path / "log"
    with Wal.open_segmented(directory, SEGMENT) as wal:
        wal.append_many([b"r" * 1000] * 40)  # three segments
        wal.sync()
    calls = MsyncRecorder()
    store = SegmentStore(directory, syscalls=calls, mapped_chunks=1)
    try:
        store.prepare_end(store.capacity)
        store.write(100, b"first")
        store.flush(100, 105)
        first = store.piece(100)[0]
        assert isinstance(first, mmap.mmap)
        assert _inside(first, *calls.msyncs[-1])
        store.read(SEGMENT + 10, 1)  # maps chunk 1: chunk 0 is let go
        store.write(200, b"second")
        again = store.piece(200)[0]
        assert isinstance(again, mmap.mmap)
        assert again is not first
        store.flush(200, 206)
        assert _inside(again, *calls.msyncs[-1])
    finally:
        store.close()
    with Wal.open_segmented(directory, readonly=True) as reader:
        assert reader.store.read(100, 5) == b"first"
        assert reader.store.read(200, 6) == b"second"


def test_published_slots_hold_the_ends_and_cuts_and_skip_what_was_said(tmp_path: Path) -> None:
    # publish packs the slot itself (not through _encode): the bytes must be
    # _encode's, cuts included after a truncation, and a publisher opened over
    # an existing file must not rewrite the state it already says.
    path = str(tmp_path / ENDS_FILE_NAME)
    publisher = EndsPublisher.create(path)
    assert publisher is not None
    mapping = publisher._mapping
    publisher.publish(written=300, durable=200, head=0)
    assert _latest(mapping) == Ends(1, 300, 200, 0, 0, ())
    assert mapping[192 : 192 + 180] == _encode(Ends(1, 300, 200, 0, 0, ()))
    publisher.cut(100, written=300, durable=200, head=0)
    expected = Ends(2, 300, 100, 0, 1, ((1, 100),))
    assert _latest(mapping) == expected
    assert mapping[0:180] == _encode(expected)
    publisher.publish(written=300, durable=100, head=0)  # says nothing new
    assert _latest(mapping) == expected
    publisher.publish(written=400, durable=400, head=0)
    assert _latest(mapping) == Ends(3, 400, 400, 0, 1, ((1, 100),))
    publisher.close()
    before = Path(path).read_bytes()
    reopened = EndsPublisher.create(path)
    assert reopened is not None
    reopened.publish(written=400, durable=400, head=0)
    reopened.close()
    assert Path(path).read_bytes() == before
