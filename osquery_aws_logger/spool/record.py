"""The spool's record format and the reader that walks a segment file, resynchronising after damage.

Segment layout: the 8-byte file magic ``OQSPOOL3``, then records, each
``<sync 4s><crc32 u32><length u32><seq u64><row u64><rows u32><kind u8><accepted_at f64>
<keylen u16>``, ``keylen`` bytes of partition key (UTF-8) and ``length`` bytes of payload. The
checksum covers everything after itself.

- ``seq`` numbers records (lines) and ``row`` numbers rows: a record holds rows ``row`` to
  ``row + rows - 1`` (an event line one, a batch-format line as many as its run had, maybe
  none). With both numbers every range of records says how many rows it held, so whatever is
  dropped (a cap, a full disk, damage) is counted in rows, read or not.
- The sync marker and the numbers make damage cost only the records it touches: a reader that
  meets a bad record searches forward for the next sync marker whose record checks out, and the
  jump in numbers says how many records and rows were lost.
- The key is the Kinesis partition key of a routed row (empty for a plugin's own spool).

Pure apart from ``os.pread`` on a descriptor it is given.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Final, NamedTuple

FILE_MAGIC: Final = b"OQSPOOL3"
SYNC: Final = b"\xc5\x3b\x71\x9e"
HEADER: Final = struct.Struct("<4sIIQQIBdH")
#: The part of the header the checksum covers (with key and payload): all after the crc.
CHECKED_AT: Final = 8
_LENGTH_AND_KEY: Final = struct.Struct("<I")
_KEY_LENGTH_AT: Final = HEADER.size - 2

#: Kinds of spooled record.
KIND_RESULT: Final = 0  # a result or snapshot line exactly as osqueryd sent it
KIND_STATUS: Final = 1  # a finished status record (JSON with log_type "status")
KIND_MAX: Final = KIND_STATUS

#: Largest payload a record takes: osquery's biggest message, the socket's own limit.
MAX_RECORD_BYTES: Final = 64 << 20
MAX_KEY_BYTES: Final = 1024
#: Bytes read at a time; a record bigger than this is read on its own, not through the buffer.
READ_CHUNK: Final = 1 << 20


class SpooledRecord(NamedTuple):
    """One record read back from the spool, and where its payload lies in its segment. A
    tuple: one is made per record read, and a frozen dataclass costs three times as much."""

    seq: int
    row: int
    rows: int
    kind: int
    key: str
    data: bytes
    accepted_at: float
    segment: str = ""
    offset: int = 0  # file offset of the payload's first byte

    @property
    def end_row(self) -> int:
        return self.row + self.rows


def record_header(seq: int, row: int, rows: int, kind: int, *, key: bytes,
                  data: bytes | memoryview, accepted_at: float) -> bytes:
    """The header and key that go before `data` on disk (its checksum covers all three)."""
    header = HEADER.pack(SYNC, 0, len(data), seq, row, rows, kind, accepted_at, len(key))
    crc = zlib.crc32(data, zlib.crc32(key, zlib.crc32(header[CHECKED_AT:])))
    return SYNC + struct.pack("<I", crc) + header[CHECKED_AT:] + key


def encode_record(seq: int, row: int, rows: int, kind: int, *, key: bytes, data: bytes,
                  accepted_at: float) -> bytes:
    return record_header(seq, row, rows, kind, key=key, data=data, accepted_at=accepted_at) + data


def _parts(buffer: bytes, pos: int) -> tuple[int, int, int, int, int, int, float, int] | None:
    """The header fields at `pos` if it can start a record (sync, kind, sizes), else None."""
    if len(buffer) - pos < HEADER.size:
        return None
    sync, crc, length, seq, row, rows, kind, accepted_at, key_length = HEADER.unpack_from(buffer, pos)
    if sync != SYNC or kind > KIND_MAX or length > MAX_RECORD_BYTES or key_length > MAX_KEY_BYTES:
        return None
    return crc, length, seq, row, rows, kind, accepted_at, key_length


def record_at(buffer: bytes, pos: int, *, segment: str = "", offset: int = 0
              ) -> tuple[SpooledRecord, int] | None:
    """The intact record at `pos` of `buffer` and its size on disk, or None (damaged, or not
    all of it there). `offset` is the file offset of buffer[pos], for the record's locator."""
    # `_parts` inline: this runs once per record read, the spool's hot path.
    if len(buffer) - pos < HEADER.size:
        return None
    sync, crc, length, seq, row, rows, kind, accepted_at, key_length = HEADER.unpack_from(buffer, pos)
    if sync != SYNC or kind > KIND_MAX or length > MAX_RECORD_BYTES or key_length > MAX_KEY_BYTES:
        return None
    start = pos + HEADER.size
    key = buffer[start:start + key_length]
    data = buffer[start + key_length:start + key_length + length]  # sliced once
    if len(data) != length or len(key) != key_length or \
            zlib.crc32(data, zlib.crc32(key, zlib.crc32(buffer[pos + CHECKED_AT:start]))) != crc:
        return None
    try:
        text = key.decode() if key_length else ""
    except UnicodeDecodeError:
        return None
    size = HEADER.size + key_length + length
    return SpooledRecord(seq, row, rows, kind, text, data, accepted_at, segment,
                         offset + size - length), size


class Reader:
    """Walks the records of one segment file from a byte offset up to `end`."""

    def __init__(self, fd: int, offset: int, end: int, *, name: str = "") -> None:
        self._fd = fd
        self._name = name
        self.offset = offset  # file offset of buffer[pos]
        self._end = end
        self._buffer = b""
        self._pos = 0

    def _fill(self, need: int) -> bool:
        """Have at least `need` bytes from pos buffered (False at the end of the data)."""
        if len(self._buffer) - self._pos >= need:
            return True
        start = self.offset + len(self._buffer) - self._pos
        want = min(max(READ_CHUNK, need - (len(self._buffer) - self._pos)), self._end - start)
        if want <= 0:
            return False
        more = os.pread(self._fd, want, start)
        self._buffer = self._buffer[self._pos:] + more
        self._pos = 0
        return len(self._buffer) >= need

    def _load(self) -> bool:
        """Buffer the record that starts at pos, as much of it as its header says there is;
        False when not even a header is left."""
        if not self._fill(HEADER.size):
            return False
        parts = _parts(self._buffer, self._pos)
        if parts is not None:
            self._fill(HEADER.size + parts[7] + parts[1])
        return True

    def _big(self) -> SpooledRecord | None:
        """The record at pos when its payload is bigger than a read chunk: read on its own, so
        a multi-MB line is in memory once, not also in the buffer."""
        parts = _parts(self._buffer, self._pos)
        if parts is None or parts[1] <= READ_CHUNK:
            return None
        crc, length, seq, row, rows, kind, accepted_at, key_length = parts
        at = self.offset + HEADER.size
        if at + key_length + length > self._end:
            return None
        key = os.pread(self._fd, key_length, at)
        data = os.pread(self._fd, length, at + key_length)
        header = self._buffer[self._pos + CHECKED_AT:self._pos + HEADER.size]
        if len(data) != length or zlib.crc32(data, zlib.crc32(key, zlib.crc32(header))) != crc:
            return None
        try:
            text = key.decode()
        except UnicodeDecodeError:
            return None
        size = HEADER.size + key_length + length
        self.offset += size
        self._buffer, self._pos = b"", 0
        return SpooledRecord(seq, row, rows, kind, text, data, accepted_at, self._name,
                             at + key_length)

    def next(self) -> SpooledRecord | None:
        """The next intact record, or None at the end of the data. Damage is skipped: the
        caller learns how much it cost from the jump in the record's numbers."""
        while self.offset < self._end:
            # The usual case first: the whole record already buffered.
            found = record_at(self._buffer, self._pos, segment=self._name, offset=self.offset)
            if found is None:
                if not self._fill(HEADER.size):
                    self._skip_to_end()  # a few bytes too short for a header: a torn tail
                    return None
                big = self._big()
                if big is not None:
                    return big
                self._load()
                found = record_at(self._buffer, self._pos, segment=self._name, offset=self.offset)
                if found is None:
                    self._resync()
                    continue
            record, size = found
            self._pos += size
            self.offset += size
            return record
        return None

    def _advance(self, count: int) -> None:
        self._pos += count
        self.offset += count

    def _skip_to_end(self) -> None:
        self.offset = self._end
        self._buffer, self._pos = b"", 0

    def _resync(self) -> None:
        """Move to the next sync marker that starts an intact record (or the end)."""
        self._advance(1)
        while True:
            at = self._buffer.find(SYNC, self._pos)
            if at < 0:
                keep = len(SYNC) - 1  # a marker may straddle the chunk boundary
                drop = max(0, len(self._buffer) - self._pos - keep)
                self._advance(drop)
                if not self._fill(keep + 1) or len(self._buffer) - self._pos <= keep:
                    self._skip_to_end()
                    return
                continue
            self._advance(at - self._pos)
            if self._fill(HEADER.size) and (self._big_intact() or (
                    self._load() and record_at(self._buffer, self._pos) is not None)):
                return
            self._advance(1)

    def _big_intact(self) -> bool:
        """Whether a big record starts at pos (checked without keeping it)."""
        parts = _parts(self._buffer, self._pos)
        if parts is None or parts[1] <= READ_CHUNK:
            return False
        offset, buffer, pos = self.offset, self._buffer, self._pos
        found = self._big()
        self.offset, self._buffer, self._pos = offset, buffer, pos
        return found is not None


__all__ = ["FILE_MAGIC", "HEADER", "KIND_MAX", "KIND_RESULT", "KIND_STATUS", "MAX_KEY_BYTES",
           "MAX_RECORD_BYTES", "SYNC", "Reader", "SpooledRecord", "encode_record", "record_at",
           "record_header"]
