"""The durable spool: order, acknowledgement, restart, torn tails, caps and permissions."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osquery_aws_logger.spool import ledger as ledger_module
from osquery_aws_logger.spool.record import FILE_MAGIC, HEADER
from osquery_aws_logger.spool.segments import Segments
from osquery_aws_logger.spool.spool import KIND_RESULT, KIND_STATUS, SEGMENT_SUFFIX, Spool

_LENGTH = struct.Struct("<I")  # a record's payload length, 8 bytes into its header
_KEY_LENGTH = struct.Struct("<H")  # its key's length, the header's last field


def _record_size(data: bytes, offset: int) -> int:
    (length,) = _LENGTH.unpack_from(data, offset + 8)
    (key_length,) = _KEY_LENGTH.unpack_from(data, offset + HEADER.size - 2)
    return HEADER.size + key_length + length


def make(path: Path, drops: Counter[str] | None = None, **kw: int) -> Spool:
    counter = drops if drops is not None else Counter()
    kw.setdefault("max_records", 1_000_000)
    kw.setdefault("max_bytes", 1 << 30)

    def on_drop(reason: str, n: int) -> None:
        counter[reason] += n

    return Spool(path, on_drop=on_drop, **kw)


def test_records_come_back_in_order_with_kind_and_sequence(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(10):
        assert spool.append(KIND_STATUS if i % 3 == 0 else KIND_RESULT, b"line %d" % i)
    got = spool.read(4) + spool.read(100)
    assert [r.data for r in got] == [b"line %d" % i for i in range(10)]
    assert [r.seq for r in got] == list(range(1, 11))
    assert got[0].kind == KIND_STATUS and got[1].kind == KIND_RESULT
    assert spool.read(10) == []


def test_unacknowledged_records_survive_a_restart_and_acked_ones_do_not(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(20):
        spool.append(KIND_RESULT, b"r%d" % i)
    batch = spool.read(5)
    spool.ack(batch[-1].seq)
    spool.read(5)  # in flight, never acknowledged: a kill -9 now must not lose them
    del spool  # no close(): as after kill -9
    again = make(tmp_path / "s")
    assert [r.data for r in again.read(100)] == [b"r%d" % i for i in range(5, 20)]
    assert again.depth()[0] == 15


def test_new_records_after_restart_continue_the_sequence(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    spool.append(KIND_RESULT, b"a")
    spool.close()
    again = make(tmp_path / "s")
    again.append(KIND_RESULT, b"b")
    got = again.read(10)
    assert [(r.seq, r.data) for r in got] == [(1, b"a"), (2, b"b")]


def test_a_torn_tail_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    for i in range(3):
        spool.append(KIND_RESULT, b"x" * 100 + b"%d" % i)
    spool.close()
    (segment,) = (tmp_path / "s").glob("*" + SEGMENT_SUFFIX)
    with open(segment, "ab") as handle:  # half a record, as a power loss mid-write leaves
        handle.write(b"\x40\x00\x00\x00\x01\x02")
    again = make(tmp_path / "s")
    assert len(again.read(10)) == 3
    again.append(KIND_RESULT, b"after")
    assert [r.data for r in again.read(10)] == [b"after"]


def test_record_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=64)
    for i in range(200):
        assert spool.append(KIND_RESULT, b"%d" % i)
    got = [int(r.data) for r in spool.read(1000)]
    assert len(got) <= 64
    assert got == list(range(200 - len(got), 200)), "the newest records are the ones kept"
    assert drops["cap_records"] == 200 - len(got)
    assert len(got) >= 64 - 64 // 16, "drops take at most one segment more than needed"


def test_byte_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_bytes=1 << 20)
    line = b"y" * 1000
    for _ in range(3000):
        spool.append(KIND_RESULT, line)
    records, size = spool.depth()
    assert size <= 1 << 20
    assert drops["cap_bytes"] == 3000 - records
    assert len(spool.read(5000)) == records


def test_a_cap_drops_records_in_flight_too_and_says_which(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=32)
    for i in range(30):
        spool.append(KIND_RESULT, b"%d" % i)
    in_flight = spool.read(30)
    for i in range(30, 100):
        spool.append(KIND_RESULT, b"%d" % i)
    # What the flusher still holds below the floor is off disk: it must not send it, and it
    # counts it itself (under the reason the spool gives); the spool counts only the rest.
    kept_in_flight = [r for r in in_flight if r.seq >= spool.dropped_below]
    forgotten = len(in_flight) - len(kept_in_flight)
    assert forgotten > 0 and spool.dropped_reason == "cap_records"
    rest = spool.read(1000)
    delivered = len(kept_in_flight) + len(rest)
    assert delivered + drops["cap_records"] + forgotten == 100
    assert drops["cap_records"] > 0
    del spool  # as after kill -9: a restart hands out exactly what was not dropped
    again = make(tmp_path / "s", drops, max_records=32)
    assert [r.seq for r in again.read(1000)] == [r.seq for r in kept_in_flight + rest]


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    spool = make(tmp_path / "s")
    spool.append(KIND_RESULT, b"a")
    spool.ack(spool.read(1)[0].seq)
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    for path in (tmp_path / "s").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_corrupt_record_in_a_closed_segment_is_counted_and_skipped(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=64)  # 4 records per segment
    for i in range(12):
        spool.append(KIND_RESULT, b"rec%02d" % i)
    spool.close()
    first = sorted((tmp_path / "s").glob("*" + SEGMENT_SUFFIX))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # flip a payload byte of its last record
    first.write_bytes(bytes(data))
    again = make(tmp_path / "s", drops, max_records=64)
    got = [r.data for r in again.read(100)]
    assert b"rec03" not in got and len(got) == 11
    assert drops["corrupt"] == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "read", "ack", "restart"]),
                          st.integers(1, 40)), max_size=40))
def test_every_record_is_delivered_exactly_once_in_order_across_restarts(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("spool")
    spool = make(path, max_records=10_000)
    written = 0
    delivered: list[int] = []
    in_flight: list[int] = []
    for action, n in steps:
        if action == "append":
            for _ in range(n):
                spool.append(KIND_RESULT, b"%d" % written)
                written += 1
        elif action == "read":
            in_flight += [int(r.data) for r in spool.read(n)]
        elif action == "ack" and in_flight:
            take = in_flight[:n]
            del in_flight[:n]
            delivered += take
            spool.ack(spool_seq(take[-1]))
        elif action == "restart":
            in_flight = []  # forgotten: the spool hands them out again
            spool = make(path, max_records=10_000)
    delivered += in_flight
    in_flight = []
    delivered += [int(r.data) for r in spool.read(100_000)]
    assert delivered == list(range(written))


def spool_seq(value: int) -> int:
    # Records are numbered from 1 in write order, and these tests write value i as record i+1.
    return value + 1


# -- damage, the first format, caps at run time, links -------------------------------------------

def _fill_segments(path: Path, count: int) -> tuple[list[bytes], Spool]:
    spool = make(path, max_records=16 * 40)  # segments of 40 records
    payloads = [b'{"row":%d,"pad":"%s"}' % (i, b"p" * (i % 37)) for i in range(count)]
    for data in payloads:
        spool.append(KIND_RESULT, data)
    spool.close()
    return payloads, spool


def _record_spans(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Each segment's records as (start, end) byte ranges, read from a pristine spool."""
    spans = {}
    for segment in sorted(path.glob("*" + SEGMENT_SUFFIX)):
        data = segment.read_bytes()
        offset, ranges = len(FILE_MAGIC), []
        while offset < len(data):
            size = _record_size(data, offset)
            ranges.append((offset, offset + size))
            offset += size
        spans[segment.name] = ranges
    return spans


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_flipped_bytes_cost_exactly_the_records_they_touch(tmp_path_factory: pytest.TempPathFactory,
                                                          data: st.DataObject) -> None:
    path = tmp_path_factory.mktemp("damage") / "s"
    payloads, _ = _fill_segments(path, 200)
    spans = _record_spans(path)
    names = sorted(spans)
    touched = 0
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        ranges = spans[name]
        # Anywhere after the file magic, short of the newest segment's last record (a damaged
        # tail is cut off and counted by the record starts left in it: tested on its own).
        limit = ranges[-1][0] if name == names[-1] else ranges[-1][1]
        start = data.draw(st.integers(ranges[0][0], limit - 1))
        length = data.draw(st.integers(1, min(64, limit - start)))
        raw = bytearray((path / name).read_bytes())
        for index in range(start, start + length):
            raw[index] ^= 0xFF
        (path / name).write_bytes(bytes(raw))
        touched += sum(1 for a, b in ranges if a < start + length and start < b)
    drops: Counter[str] = Counter()
    spool = make(path, drops, max_records=16 * 40)
    got = []
    while batch := spool.read(37):
        got += batch
    assert drops["corrupt"] == touched
    assert len(got) + touched == len(payloads)
    assert all(payloads[r.seq - 1] == r.data for r in got)
    spool.rewind()  # read again: the damage is not counted twice
    while spool.read(100):
        pass
    assert drops["corrupt"] == touched


def test_a_damaged_tail_is_cut_and_counted_by_the_record_starts_in_it(tmp_path: Path) -> None:
    path = tmp_path / "s"
    payloads, _ = _fill_segments(path, 30)
    newest = sorted(path.glob("*" + SEGMENT_SUFFIX))[-1]
    spans = _record_spans(path)[newest.name]
    raw = bytearray(newest.read_bytes())
    start = spans[-3][0] + 40  # inside the third-last record; the two after stay intact
    raw[start:start + 4] = b"\0\0\0\0"
    newest.write_bytes(bytes(raw[:spans[-1][0] + 20]))  # and the last one torn
    drops: Counter[str] = Counter()
    spool = make(path, drops, max_records=16 * 40)
    got = spool.read(100)
    assert [r.data for r in got] == [*payloads[:27], payloads[28]]
    assert drops["corrupt"] == 2  # the damaged one, and the torn last one


def test_a_damaged_file_magic_costs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    payloads, _ = _fill_segments(path, 100)
    for segment in path.glob("*" + SEGMENT_SUFFIX):
        raw = bytearray(segment.read_bytes())
        raw[:8] = b"garbage!"
        segment.write_bytes(bytes(raw))
    drops: Counter[str] = Counter()
    got = make(path, drops, max_records=16 * 40).read(1000)
    assert [r.data for r in got] == payloads and not drops


def test_segments_of_the_previous_format_are_migrated_once_with_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir(mode=0o700)
    old = struct.Struct("<4sIIQBd")  # OQSPOOL2: sync, crc, length, seq, kind, accepted_at
    sync = b"\xa7\x1eQ\xd3"

    def record(seq: int, payload: bytes) -> bytes:
        header = old.pack(sync, 0, len(payload), seq, KIND_RESULT, 1.5)
        crc = zlib.crc32(payload, zlib.crc32(header[8:]))
        return sync + struct.pack("<I", crc) + header[8:] + payload

    lines = {1: [b'{"a":%d}' % i for i in range(5)], 6: [b'{"b":%d}' % i for i in range(3)]}
    for first, rows in lines.items():
        body = b"".join(record(first + i, row) for i, row in enumerate(rows))
        (path / f"{first:020d}{SEGMENT_SUFFIX}").write_bytes(b"OQSPOOL2" + body + b"\x07torn")
    (path / "acked").write_text("2\n")
    drops: Counter[str] = Counter()
    spool = make(path, drops)
    got = spool.read(100)
    assert [(r.seq, r.data) for r in got] == [(3, b'{"a":2}'), (4, b'{"a":3}'), (5, b'{"a":4}'),
                                              (6, b'{"b":0}'), (7, b'{"b":1}'), (8, b'{"b":2}')]
    assert got[0].accepted_at == 1.5 and [r.rows for r in got] == [1] * 6
    assert not (path / "acked").exists() and spool.waiting_rows() == 6
    spool.append(KIND_RESULT, b"new")
    assert spool.read(10)[0].seq == 9
    spool.close()
    again = make(path, drops)  # once: nothing of the old format is left to migrate
    assert [r.seq for r in again.read(100)] == [3, 4, 5, 6, 7, 8, 9]


def test_rows_are_counted_for_records_dropped_read_or_not(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=64)
    for i in range(100):
        spool.append(KIND_RESULT, b"%d" % i, rows=i % 3)  # 0, 1 or 2 rows a line
    assert drops["cap_records"] == sum(i % 3 for i in range(36))
    assert spool.waiting_rows() == sum(i % 3 for i in range(36, 100))
    held = spool.read(10)  # in the flusher's hands: the spool no longer counts these
    assert [(r.seq, r.rows) for r in held[:3]] == [(37, 0), (38, 1), (39, 2)]
    spool.set_caps(20, 1 << 30)
    never_read = range(46, 80)  # seq 47..80 go unread: counted by the spool, in rows
    assert drops["cap_records"] == sum(i % 3 for i in range(36)) + sum(i % 3 for i in never_read)
    spool.close()
    again = make(tmp_path / "s", drops, max_records=20)
    assert again.waiting_rows() == sum(i % 3 for i in range(80, 100))


def test_lowered_caps_take_effect_at_once(tmp_path: Path) -> None:
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops)
    for i in range(3000):
        spool.append(KIND_RESULT, b"%d" % i)
    spool.set_caps(64, 1 << 30)
    assert drops["cap_records"] == 3000 - 64
    assert [r.data for r in spool.read(1000)] == [b"%d" % i for i in range(3000 - 64, 3000)]
    spool.set_caps(64, 1)  # bytes: whole old segments go once a new one is begun
    spool.append(KIND_RESULT, b"last")
    assert spool.depth()[0] <= 1


def test_an_unusable_directory_drops_and_counts_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    drops: Counter[str] = Counter()
    spool = make(blocker / "s", drops)
    assert "not a directory" in spool.problem
    assert spool.append(KIND_RESULT, b"x") == 0 and drops["spool_error"] == 1
    assert spool.read(10) == [] and spool.depth() == (0, 0)
    blocker.unlink()
    blocker.mkdir()
    spool._reopen_at = 0.0  # the pause before the next attempt is over
    spool.sync()
    assert spool.problem == ""
    spool.append(KIND_RESULT, b"y")
    assert [r.data for r in spool.read(10)] == [b"y"]


def test_a_link_in_place_of_the_spool_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "s").symlink_to(target)
    spool = make(tmp_path / "s")
    assert "symbolic link" in spool.problem
    assert list(target.iterdir()) == []


# -- found in review: chunk edges, damaged magic and sync, a vanished segment, a zeroed tail ----

def _spans_of(data: bytes) -> list[tuple[int, int]]:
    offset, out = len(FILE_MAGIC), []
    while offset < len(data):
        size = _record_size(data, offset)
        out.append((offset, offset + size))
        offset += size
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # monkeypatch: set per example
@given(chunk=st.sampled_from([1, 2, 3, 5, 7, 29, 30, 64, 100]), data=st.data())
def test_damage_is_counted_exactly_whatever_the_read_chunk(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, chunk: int,
        data: st.DataObject) -> None:
    # Tiny chunks make every read cross a record, a header and a sync marker boundary.
    monkeypatch.setattr("osquery_aws_logger.spool.record.READ_CHUNK", chunk)
    path = tmp_path_factory.mktemp("edges") / "s"
    payloads = [data.draw(st.binary(max_size=80)) for _ in range(120)]
    spool = make(path, max_records=16 * 40)
    for payload in payloads:
        spool.append(KIND_RESULT, payload)
    spool.close()
    segments = sorted(path.glob("*" + SEGMENT_SUFFIX))
    touched = 0
    for segment in data.draw(st.lists(st.sampled_from(segments), min_size=1, max_size=2,
                                      unique=True)):
        raw = bytearray(segment.read_bytes())
        spans = _spans_of(bytes(raw))
        limit = spans[-1][0] if segment == segments[-1] else spans[-1][1]
        start = data.draw(st.integers(spans[0][0], limit - 1))
        length = data.draw(st.integers(1, min(64, limit - start)))
        for index in range(start, start + length):
            raw[index] ^= data.draw(st.integers(1, 255))
        segment.write_bytes(bytes(raw))
        touched += sum(1 for a, b in spans if a < start + length and start < b)
    drops: Counter[str] = Counter()
    spool = make(path, drops, max_records=16 * 40)
    got = []
    while batch := spool.read(data.draw(st.integers(1, 50))):
        got += batch
    assert drops["corrupt"] == touched and len(got) + touched == len(payloads)
    assert all(payloads[r.seq - 1] == r.data for r in got)


def test_damage_over_the_magic_and_the_first_sync_costs_only_that_record(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill_segments(path, 100)
    newest = sorted(path.glob("*" + SEGMENT_SUFFIX))[-1]
    raw = bytearray(newest.read_bytes())
    for index in range(16):  # the magic, and the sync marker of the segment's first record
        raw[index] ^= 0xFF
    newest.write_bytes(bytes(raw))
    drops: Counter[str] = Counter()
    got = make(path, drops, max_records=16 * 40).read(1000)
    assert drops["corrupt"] == 1 and len(got) == 99  # never taken for the old format


def test_a_segment_deleted_by_hand_is_counted_and_read_past(tmp_path: Path) -> None:
    path = tmp_path / "s"
    payloads, _ = _fill_segments(path, 100)
    drops: Counter[str] = Counter()
    spool = make(path, drops, max_records=16 * 40)
    sorted(path.glob("*" + SEGMENT_SUFFIX))[0].unlink()  # 40 records
    got = spool.read(1000)  # must return, not spin
    assert drops["corrupt"] == 40 and [r.data for r in got] == payloads[40:]
    spool.append(KIND_RESULT, b"after")
    assert [r.data for r in spool.read(10)] == [b"after"]


def test_a_zeroed_tail_is_counted_by_estimate_not_as_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill_segments(path, 30)
    newest = sorted(path.glob("*" + SEGMENT_SUFFIX))[-1]
    spans = _spans_of(newest.read_bytes())
    raw = bytearray(newest.read_bytes())
    raw[spans[-6][0] + 10:] = bytes(len(raw) - spans[-6][0] - 10)  # the last six, as a power loss
    newest.write_bytes(bytes(raw))
    drops: Counter[str] = Counter()
    got = make(path, drops, max_records=16 * 40).read(1000)
    # An estimate (the zeroed bytes over the mean record size), of the right size: not 1.
    assert len(got) == 24 and 5 <= drops["corrupt"] <= 9


def test_the_state_file_is_written_only_through_the_spool_s_own_directory(tmp_path: Path) -> None:
    victim = tmp_path / "app"
    (victim / "kinesis").mkdir(parents=True)
    (victim / "kinesis" / "state.json").write_text("theirs")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may write here, and plant a link one level up
    (shared / "spool").symlink_to(victim)
    spool = make(shared / "spool" / "kinesis")
    assert spool.problem and not spool.write_file("state.json", b"ours")
    assert (victim / "kinesis" / "state.json").read_text() == "theirs"


def test_a_spool_whose_directory_was_removed_writes_its_ledger_again_once_set_up(
        tmp_path: Path) -> None:
    path = tmp_path / "s"
    drops: Counter[str] = Counter()
    spool = make(path, drops)
    spool.append(KIND_RESULT, b"a")
    spool.ack(spool.read(10)[-1].seq)
    shutil.rmtree(path)
    spool.append(KIND_RESULT, b"b")  # into the open segment, gone with the directory
    assert spool.read(10) == []  # its file cannot be opened: counted and read past
    assert spool.append(KIND_RESULT, b"c") == 0 and "removed" in spool.problem
    assert drops == Counter(corrupt=1, spool_error=1)
    spool._reopen_at = 0.0  # the pause before setting it up again is over
    spool.sync()
    assert spool.problem == ""
    spool.append(KIND_RESULT, b"d")
    spool.ack(spool.read(10)[-1].seq)
    spool.close()
    assert make(path).read(10) == []  # delivered before the restart: not sent again


def test_a_ledger_write_torn_right_after_the_file_is_made_leaves_the_first_position(
        tmp_path: Path) -> None:
    """The file's first write and the first write in place use different slots: tearing the
    second (a crash mid-write) leaves the first whole (review finding: both went to slot 0)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        written = ledger_module.Ledger()
        written.write(fd, 10, 100)  # makes the file
        torn_at = ledger_module._SLOTS[(written.generation + 1) % len(ledger_module._SLOTS)]
        written.write(fd, 20, 200)  # in place, then torn: half its bytes garbage
        with open(tmp_path / ledger_module.LEDGER_FILE, "r+b") as file:
            file.seek(torn_at + 8)
            file.write(b"\xff" * 16)
        assert ledger_module.Ledger().read(fd) == (10, 100)
    finally:
        os.close(fd)


def test_the_flusher_learns_the_rows_of_segments_found_at_start_before_a_cap_needs_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: the first cap drop against a segment found closed at start read that
    whole segment under the spool's lock, from the thrift side's append. The flusher's sync
    learns them first, one segment a turn, outside the lock."""
    drops: Counter[str] = Counter()
    spool = make(tmp_path / "s", drops, max_records=16 * 40)  # segments of 40 records
    for i in range(400):
        spool.append(KIND_RESULT, b'{"i":%d}' % i, rows=1 + i % 3)
    spool.close()
    spool = make(tmp_path / "s", drops, max_records=16 * 40)
    for _ in range(20):
        spool.sync()
    monkeypatch.setattr(Segments, "_index", lambda *_: pytest.fail("read under the lock"))
    spool.set_caps(100, 1 << 30)  # gives up 300 records inside closed segments
    assert spool.depth()[0] <= 100 + 40 and drops["cap_records"] > 0
    got = spool.read(1000)
    assert [r.row for r in got] == [sum(1 + j % 3 for j in range(r.seq - 1)) for r in got]
    spool.close()
