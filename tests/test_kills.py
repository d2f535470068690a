"""Real process kills: a writer is SIGKILLed at a random moment, again and again.

A child process (``sys.executable``) opens the log, appends self-describing
records (single-threaded, or three threads with ``append_and_sync``), syncs,
truncates, and reports every operation that returned on stdout, one line each:
``A lsn round thread seq`` (appended), ``S lsn`` (a sync that covered ``lsn``
returned), ``t lsn``/``T lsn`` (``truncate_after`` began/returned), ``h lsn``/``H
lsn`` (``truncate_before`` began/returned). The parent kills it with SIGKILL
after a random delay, then opens the log read-only (so the next child runs the
recovery of the killed log itself) and checks:

- every record is intact and self-describing (its payload is what its header says),
  no record twice, each thread's records in order without a gap: no ghost;
- every reported append is there at its LSN: a crash of the process alone loses
  nothing (the page cache survives), so in particular every reported sync holds;
- the records past the last report continue the sequence (appends that returned
  but were killed before their report);
- the head is where the last returned ``truncate_before`` put it (or the one
  in flight, if any), and nothing past a returned ``truncate_after`` survives.

What SIGKILL can prove, and what it cannot: a killed process leaves its page
cache to the kernel, so these kills prove that recovery accepts whatever a
writer leaves at any instant (a copy half done, a truncation half done, a segment
half created) and that nothing it appended is lost or doubled by the reopen. They
cannot prove durability: a ``sync`` that did nothing would pass them, because
the kernel keeps the records anyway. Durability against power loss is proved on
the real stores by the simulator (``tests/test_power_loss.py``,
``tests/test_crash_simulation.py``), which fails when a flush is a no-op.

Quick: ``QUICK_KILLS`` kills over three layouts (segmented, segmented with
threads, single file), under a minute. ``MMWAL_SOAK=1`` adds ``SOAK_KILLS``
(``MMWAL_SOAK_KILLS`` overrides it).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mmwal import Wal

SOAK = os.environ.get("MMWAL_SOAK") == "1"
QUICK_KILLS = 20
SOAK_KILLS = int(os.environ.get("MMWAL_SOAK_KILLS", "500"))
SEGMENT_SIZE = 64 * 1024
KILLS_PER_LOG = 10  # kills in a row on one log before a fresh one (bounds its size)
KEY = struct.Struct("<IIII")  # round, thread, seq, length

soak_only = pytest.mark.skipif(not SOAK, reason="soak setting: run with MMWAL_SOAK=1")

CHILD = r"""
import os, random, struct, sys, threading
from mmwal import Wal

path, layout, round_number, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
KEY = struct.Struct("<IIII")

def payload(thread, seq, length):
    key = struct.pack("<Q", (round_number << 40) | (thread << 32) | seq)
    return KEY.pack(round_number, thread, seq, length) + (key * (length // 8 + 1))[:length]

def say(line):
    os.write(1, (line + "\n").encode())

if layout == "single":
    wal = Wal.open(os.path.join(path, "wal.log"))
else:
    wal = Wal.open_segmented(path, segment_size=SEGMENT_SIZE)
say("READY")
rng = random.Random(seed)

def size(rng):
    roll = rng.random()
    if roll < 0.05:
        return rng.randint(60000, 140000)  # spans 64 KiB segments
    return rng.randint(0, 2000) if roll < 0.9 else 0

def threaded(thread):
    local = random.Random(seed * 31 + thread)
    seq = 0
    while True:
        data = payload(thread, seq, size(local))
        if local.random() < 0.2:
            lsn = wal.append_and_sync(data)
            say(f"A {lsn} {round_number} {thread} {seq}")
            say(f"S {lsn + 8 + len(data)}")
        else:
            lsn = wal.append(data)
            say(f"A {lsn} {round_number} {thread} {seq}")
        seq += 1

if layout == "threads":
    workers = [threading.Thread(target=threaded, args=(t,), daemon=True) for t in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
else:
    seq = 0
    lsns = []
    while True:
        roll = rng.random()
        if roll < 0.6:
            data = payload(0, seq, size(rng))
            lsn = wal.append(data)
            say(f"A {lsn} {round_number} 0 {seq}")
            lsns.append((lsn, seq))
            seq += 1
        elif roll < 0.7:
            batch = [payload(0, seq + i, size(rng)) for i in range(rng.randint(1, 5))]
            for i, lsn in enumerate(wal.append_many(batch)):
                say(f"A {lsn} {round_number} 0 {seq + i}")
                lsns.append((lsn, seq + i))
            seq += len(batch)
        elif roll < 0.9:
            target = wal.next_lsn
            wal.sync()
            say(f"S {target}")
        elif roll < 0.95 and lsns:
            lsn, kept = rng.choice(lsns[-20:])
            say(f"t {lsn}")
            wal.truncate_after(lsn)
            say(f"T {lsn}")
            lsns = [x for x in lsns if x[0] <= lsn]
            seq = kept + 1  # the stream goes on from the record kept last
        elif layout == "segmented" and len(lsns) > 4:
            lsn = lsns[-3][0]
            say(f"h {lsn}")
            wal.truncate_before(lsn)
            say(f"H {lsn}")
            lsns = [x for x in lsns if x[0] >= lsn]
""".replace("SEGMENT_SIZE", str(SEGMENT_SIZE))


def payload(round_number: int, thread: int, seq: int, length: int) -> bytes:
    key = struct.pack("<Q", (round_number << 40) | (thread << 32) | seq)
    return KEY.pack(round_number, thread, seq, length) + (key * (length // 8 + 1))[:length]


@dataclass
class Ledger:
    """What the children reported: the records that must be there, the head."""

    appended: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # lsn -> key
    head: int = 0
    head_in_flight: int | None = None
    cut_in_flight: int | None = None
    synced: int = 0
    reports: int = 0

    def apply(self, line: str) -> None:
        kind, *fields = line.split()
        numbers = [int(value) for value in fields]
        self.reports += 1
        if kind == "A":
            lsn, round_number, thread, seq = numbers
            self.appended[lsn] = (round_number, thread, seq)
        elif kind == "S":
            self.synced = max(self.synced, numbers[0])
        elif kind == "t":
            self.cut_in_flight = numbers[0]
        elif kind == "T":
            self.cut_in_flight = None
            self.synced = min(self.synced, numbers[0])
            self.appended = {lsn: key for lsn, key in self.appended.items() if lsn <= numbers[0]}
        elif kind == "h":
            self.head_in_flight = numbers[0]
        elif kind == "H":
            self.head_in_flight = None
            self.head = numbers[0]
            self.appended = {lsn: key for lsn, key in self.appended.items() if lsn >= self.head}


@dataclass
class Kill:
    lines: list[str]
    returncode: int
    stderr: str
    seconds: float


def run_and_kill(path: Path, layout: str, round_number: int, seed: int, delay: float) -> Kill:
    began = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), layout, str(round_number), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    lines: list[str] = []
    ready = threading.Event()
    stdout = child.stdout

    def read() -> None:
        for raw in stdout:
            if not raw.endswith(b"\n"):
                break  # a line the kill cut short
            line = raw.decode().strip()
            if line == "READY":
                ready.set()
            else:
                lines.append(line)
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(30)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(30)
    stderr = child.stderr.read().decode(errors="replace")
    child.stdout.close()
    child.stderr.close()
    return Kill(lines, child.returncode, stderr, time.perf_counter() - began)


def check_log(path: Path, layout: str, ledger: Ledger) -> tuple[int, int]:
    """Check the killed log against the ledger; return (records, the end LSN)."""
    if layout == "single":
        wal = Wal.open(path / "wal.log", readonly=True)
    else:
        wal = Wal.open_segmented(path, readonly=True)
    found: dict[int, tuple[int, int, int]] = {}
    last_seq: dict[tuple[int, int], int] = {}
    try:
        head, end = wal.head_lsn, wal.next_lsn
        allowed_heads = {ledger.head} | (
            {ledger.head_in_flight} if ledger.head_in_flight is not None else set()
        )
        assert head in allowed_heads, f"head {head}, expected one of {allowed_heads}"
        for lsn, data in wal:
            assert len(data) >= KEY.size, f"record at {lsn} is not one of ours"
            round_number, thread, seq, length = KEY.unpack_from(data)
            assert data == payload(round_number, thread, seq, length), f"damaged record at {lsn}"
            stream = (round_number, thread)
            previous = last_seq.get(stream)
            assert previous is None or seq == previous + 1, (
                f"record at {lsn}: thread {thread} of round {round_number} jumps from seq "
                f"{previous} to {seq} (a ghost, a duplicate or a lost record)"
            )
            last_seq[stream] = seq
            found[lsn] = (round_number, thread, seq)
    finally:
        wal.close()
    missing = {
        lsn: key for lsn, key in ledger.appended.items() if lsn >= head and found.get(lsn) != key
    }
    if ledger.cut_in_flight is not None:
        # a truncate_after in flight may have cut anything past its LSN already
        missing = {lsn: key for lsn, key in missing.items() if lsn <= ledger.cut_in_flight}
    assert not missing, (
        f"{len(missing)} appended records lost or changed by a process kill, first at LSN "
        f"{min(missing)}; the log ends at {end}"
    )
    assert ledger.synced <= end or ledger.cut_in_flight is not None, (
        f"a sync reported LSN {ledger.synced} durable, the log ends at {end}"
    )
    ledger.synced = min(ledger.synced, end)
    # After the check the ledger holds exactly what is in the log.
    ledger.appended = dict(found)
    ledger.head = head
    ledger.head_in_flight = ledger.cut_in_flight = None
    return len(found), end


@dataclass
class Campaign:
    kills: int = 0
    reports: int = 0
    records: int = 0
    seconds: float = 0.0


def kill_campaign(base: Path, kills: int, seed: int) -> Campaign:
    """Kill writers ``kills`` times, a fresh log every ``KILLS_PER_LOG`` kills of a layout."""
    rng = random.Random(seed)
    layouts = ["segmented", "threads", "single"]
    campaign = Campaign()
    began = time.perf_counter()
    for number, layout in enumerate(layouts):
        share = kills // len(layouts) + (1 if number < kills % len(layouts) else 0)
        for round_number in range(1, share + 1):
            if round_number % KILLS_PER_LOG == 1:
                path = base / f"{layout}-{round_number}"
                path.mkdir()
                ledger = Ledger()
            delay = rng.uniform(0.0, 0.3)
            kill = run_and_kill(path, layout, round_number, rng.randrange(1 << 30), delay)
            assert kill.returncode == -signal.SIGKILL, (
                f"the {layout} writer exited with {kill.returncode} before the kill:\n{kill.stderr}"
            )
            for line in kill.lines:
                ledger.apply(line)
            campaign.kills += 1
            campaign.reports += len(kill.lines)
            count, _end = check_log(path, layout, ledger)
            campaign.records = max(campaign.records, count)
            if round_number % KILLS_PER_LOG == 0:
                shutil.rmtree(path)
    campaign.seconds = time.perf_counter() - began
    return campaign


@pytest.mark.slow
def test_quick_kills_keep_every_appended_record(tmp_path: Path) -> None:
    campaign = kill_campaign(tmp_path, QUICK_KILLS, seed=7)
    print(f"{campaign.kills} kills, {campaign.reports} reports checked, {campaign.seconds:.1f} s")
    assert campaign.kills == QUICK_KILLS
    assert campaign.reports > QUICK_KILLS, "the writers reported almost nothing"


@pytest.mark.slow
@soak_only
def test_soak_kills_keep_every_appended_record(tmp_path: Path) -> None:
    seed = int(os.environ.get("MMWAL_SOAK_SEED", "1000000"))
    campaign = kill_campaign(tmp_path, SOAK_KILLS, seed=seed)
    print(f"{campaign.kills} kills, {campaign.reports} reports checked, {campaign.seconds:.1f} s")
    assert campaign.kills == SOAK_KILLS


def test_the_kill_check_catches_a_lost_record(tmp_path: Path) -> None:
    """Mutation check: a ledger claiming a record the log lacks fails the check."""
    wal = Wal.open_segmented(tmp_path, segment_size=SEGMENT_SIZE)
    ledger = Ledger()
    for seq in range(5):
        data = payload(1, 0, seq, 100)
        ledger.apply(f"A {wal.append(data)} 1 0 {seq}")
    wal.close()
    ledger.apply(f"A {5 * (KEY.size + 100 + 8)} 1 0 5")  # never written
    with pytest.raises(AssertionError, match="lost or changed"):
        check_log(tmp_path, "segmented", ledger)


def test_the_kill_check_catches_a_ghost(tmp_path: Path) -> None:
    """Mutation check: a record out of sequence (a ghost or a duplicate) fails the check."""
    wal = Wal.open_segmented(tmp_path, segment_size=SEGMENT_SIZE)
    ledger = Ledger()
    for seq in (0, 1, 3):
        wal.append(payload(1, 0, seq, 50))
    wal.close()
    with pytest.raises(AssertionError, match="jumps"):
        check_log(tmp_path, "segmented", ledger)
