"""The Extension service's two hot messages, decoded and answered straight from bytes.

osqueryd makes two Thrift calls per result row (a ping, then the log call, each on a fresh
connection), and osquery-python's generated code decodes them with the pure-Python binary
protocol: most of a bare extension's cost per row. Here the strict binary encoding of `ping`
and of `call(registry, item, map<string,string>)` is parsed with `struct` on the received
bytes, and the usual answers are templates made once by the generated code itself (so they
cannot drift from it) with the sequence id patched in. Every other message, or anything this
parser does not expect, goes to the generated Processor unchanged.

A name a peer sends (registry, plugin, request key, method) is never echoed whole: an error
answer quotes a short escaped prefix of it (`quote`), and a name longer than any real one is
answered from its bytes, without being decoded or copied, so a 60 MB name costs a small reply.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from typing import Any, Final

from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TTransport

_VERSION_1: Final = 0x80010000
_CALL_HEADER: Final = struct.pack(">I", _VERSION_1 | TMessageType.CALL)
_I32: Final = struct.Struct(">i")
_FIELD: Final = struct.Struct(">bh")
_MAP_HEADER: Final = struct.Struct(">bbi")
#: Both fast-path method names ("ping", "call") are 4 bytes long.
_NAME_LENGTH: Final = struct.pack(">i", 4)
#: A reply's sequence id sits after the version word and the 4-byte name ("ping"/"call").
_SEQID_AT: Final = 4 + 4 + 4


#: Most characters of a name or value a peer sent that an error message quotes.
QUOTE_CHARS: Final = 64
#: Longest registry, plugin, request-key or method name taken as a name: osquery's are a few
#: dozen bytes. A longer one is answered as unknown straight from the bytes, never decoded.
MAX_NAME_BYTES: Final = 1024


def quote(value: str | bytes | bytearray | memoryview, limit: int = QUOTE_CHARS) -> str:
    """A name or value a peer sent, fit for an error message or a log line.

    At most `limit` characters of escaped text (repr's escapes, so control characters,
    surrogates and bytes that are not UTF-8 show as escapes), in quotes, then a marker with
    the full length when anything was cut. Only the first `limit` characters (bytes) are
    copied or decoded, whatever the size of `value`: a 60 MB name costs what a short one does.
    """
    if isinstance(value, str):
        total, unit, head = len(value), "characters", value[:limit]
    else:
        total, unit = len(value), "bytes"
        head = bytes(value[:limit]).decode("utf-8", "surrogateescape")
    cut = total > limit
    out: list[str] = []
    used = 0
    for char in head:
        escaped = "\\'" if char == "'" else repr(char)[1:-1]
        if used + len(escaped) > limit:
            cut = True
            break
        out.append(escaped)
        used += len(escaped)
    text = "'" + "".join(out) + "'"
    return f"{text}... (cut, {total} {unit} in all)" if cut else text


class NeedMore(Exception):
    """The buffer ends inside a message: read more bytes and try again."""


class _Unexpected(Exception):
    """Not a shape the fast path knows: let the generated Processor answer it."""


class Malformed(Exception):
    """Bytes that are no Thrift binary message, or one over the size limit: close the peer."""


#: A parsed fast-path message: its sequence id, where it ends, and (registry, item, request,
#: the first request key too long to be one) for a call or None for a ping.
#: Values are bytes, or views into the receive buffer for a message that spanned reads.
Bytes = bytes | memoryview
_Parsed = tuple[Bytes, int, "tuple[Bytes, Bytes, dict[bytes, Bytes], Bytes | None] | None"]


class _LenientBinaryProtocol(TBinaryProtocol.TBinaryProtocol):  # type: ignore[misc]
    """Decodes strings without raising on bytes that are not UTF-8.

    The stock protocol raises UnicodeDecodeError inside the generated reader, which answers
    osqueryd with an exception, and an exception on a log call stops osqueryd's worker. Here a
    bad byte survives as a surrogate escape and the line is counted and dropped later instead.
    """

    def readString(self) -> str:
        return str(self.readBinary().decode("utf-8", "surrogateescape"))


def lenient_protocol(transport: Any) -> Any:
    return _LenientBinaryProtocol(transport)


def _reply(method: str, result: Any) -> bytes:
    """The bytes the generated code writes for a REPLY of `method` with sequence id 0."""
    buffer = TTransport.TMemoryBuffer()
    protocol = TBinaryProtocol.TBinaryProtocol(buffer)
    protocol.writeMessageBegin(method, TMessageType.REPLY, 0)
    result.write(protocol)
    protocol.writeMessageEnd()
    return bytes(buffer.getvalue())


def _with_seqid(template: bytes, seqid: bytes | memoryview) -> bytes:
    return template[:_SEQID_AT] + bytes(seqid) + template[_SEQID_AT + 4:]


def response(code: int, message: str = "OK", rows: list[Any] | None = None) -> Any:
    """An ExtensionResponse: a status code and message, and rows (tables) or none."""
    return ExtensionResponse(status=ExtensionStatus(code=code, message=message),
                             response=rows if rows is not None else [])


def no_such_plugin(registry: str | Bytes, item: str | Bytes) -> Any:
    """The answer to a call for a registry or plugin this extension does not have; the names
    are quoted, cut short (`quote`)."""
    return response(1, f"no {quote(registry)} plugin named {quote(item)} in this extension")


def _unknown_method(name: Bytes, seqid: int) -> bytes:
    """What the generated Processor answers to a method it does not know ("Unknown function
    X", as a TApplicationException), with the name quoted and cut short instead of echoed
    whole, twice."""
    buffer = TTransport.TMemoryBuffer()
    protocol = TBinaryProtocol.TBinaryProtocol(buffer)
    shown = quote(name)
    protocol.writeMessageBegin(shown, TMessageType.EXCEPTION, seqid)
    TApplicationException(TApplicationException.UNKNOWN_METHOD,
                          f"Unknown function {shown}").write(protocol)
    protocol.writeMessageEnd()
    return bytes(buffer.getvalue())


OK_STATUS: Final = ExtensionStatus(code=0, message="OK")
OK_RESPONSE: Final = ExtensionResponse(status=OK_STATUS, response=[])
_PING_OK: Final = _reply("ping", Extension.ping_result(success=OK_STATUS))
_CALL_OK: Final = _reply("call", Extension.call_result(success=OK_RESPONSE))

#: Answers a logger call whose request carried a result line (string/snapshot) as raw bytes.
LineSink = Callable[[str, "bytes | memoryview"], bool]
#: Answers any other call: (registry, item, request) -> ExtensionResponse.
CallHandler = Callable[[str, str, dict[str, str]], Any]


class WireCodec:
    """Turns request bytes into reply bytes; one per server, used by its one thread."""

    def __init__(self, handler: Any, log_line: LineSink) -> None:
        self._processor = Extension.Processor(handler)
        self._handler = handler
        self._log_line = log_line

    def answer(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """The reply to the first message in `data`, and how many bytes that message took.

        Raises NeedMore when `data` holds only part of a message. Only parsing can raise it:
        the handler and the spool run after the message is known to be whole, so a bug in
        them can never pass for a short read and leave osqueryd waiting for an answer.
        """
        try:
            parsed = self._parse(data)
        except _Unexpected:
            return self._generated(data)
        except (struct.error, IndexError):
            raise NeedMore from None
        return self._act(parsed)

    def _parse(self, data: bytes | bytearray | memoryview) -> _Parsed:
        if isinstance(data, bytearray):
            # A message over several reads (a big line): its values are read in place, not
            # copied (a 60 MB line would be twice more); only the map's keys become bytes.
            data = memoryview(data).toreadonly()
        if len(data) < 16:
            if _CALL_HEADER.startswith(bytes(data[:4])) and (len(data) < 8 or
                                                            data[4:8] == _NAME_LENGTH):
                raise NeedMore
            raise _Unexpected
        if data[:4] != _CALL_HEADER or data[4:8] != _NAME_LENGTH:
            raise _Unexpected
        name = data[8:12]
        seqid = data[12:16]
        pos = 16
        if name == b"ping":
            if len(data) <= pos:
                raise NeedMore
            if data[pos] != TType.STOP:
                raise _Unexpected
            return seqid, pos + 1, None
        if name != b"call":
            raise _Unexpected
        registry = item = None
        request: dict[bytes, Bytes] | None = None
        long_key: Bytes | None = None
        while True:
            if len(data) <= pos:
                raise NeedMore
            if data[pos] == TType.STOP:
                pos += 1
                break
            field_type, field_id = _FIELD.unpack_from(data, pos)
            pos += 3
            if field_type == TType.STRING and field_id in (1, 2):
                value, pos = _string(data, pos)
                if field_id == 1:
                    registry = value
                else:
                    item = value
            elif field_type == TType.MAP and field_id == 3:
                key_type, value_type, size = _MAP_HEADER.unpack_from(data, pos)
                pos += 6
                if key_type != TType.STRING or value_type != TType.STRING or size < 0:
                    raise _Unexpected
                request = {}
                for _ in range(size):
                    key, pos = _string(data, pos)
                    value, pos = _string(data, pos)
                    if len(key) <= MAX_NAME_BYTES:
                        request[bytes(key)] = value
                    elif long_key is None:
                        long_key = key  # answered unknown by _act: a view, never copied

            else:
                raise _Unexpected
        if registry is None or item is None or request is None:
            raise _Unexpected
        return seqid, pos, (registry, item, request, long_key)

    def _act(self, parsed: _Parsed) -> tuple[bytes, int]:
        seqid, end, call = parsed
        if call is None:
            return _with_seqid(_PING_OK, seqid), end
        registry, item, request, long_key = call
        if len(registry) > MAX_NAME_BYTES or len(item) > MAX_NAME_BYTES:
            # No registry or plugin has such a name: answered from the bytes, never decoded.
            return self._reply(no_such_plugin(registry, item), seqid), end
        if long_key is not None:
            return self._reply(response(1, f"no request key is that long: {quote(long_key)}"),
                               seqid), end
        if registry == b"logger" and len(request) <= 2:
            line = request.get(b"string")
            if line is None and len(request) == 1:
                line = request.get(b"snapshot")
            if line is not None and self._log_line(str(item, "utf-8", "surrogateescape"), line):
                return _with_seqid(_CALL_OK, seqid), end
        decoded = {str(k, "utf-8", "surrogateescape"): str(v, "utf-8", "surrogateescape")
                   for k, v in request.items()}
        answer = self._handler.call(str(registry, "utf-8", "surrogateescape"),
                                    str(item, "utf-8", "surrogateescape"), decoded)
        return self._reply(answer, seqid), end

    @staticmethod
    def _reply(answer: Any, seqid: Bytes) -> bytes:
        if answer is OK_RESPONSE:
            return _with_seqid(_CALL_OK, seqid)
        return _with_seqid(_reply("call", Extension.call_result(success=answer)), seqid)

    def _generated(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """Anything else, through osquery-python's generated Processor, once the scanner says
        the message is whole: whatever the handler raises then is never taken for a short
        read (and the handler never runs twice for one message)."""
        end = MessageScanner(MAX_MESSAGE_BYTES).feed(data) if data else None
        if end is None:
            raise NeedMore
        unknown = _unknown_method_of(data)
        if unknown is not None:
            # Answered here: the generated code would decode the name and echo it twice.
            return _unknown_method(*unknown), end
        source = TTransport.TMemoryBuffer(bytes(data[:end]))
        sink = TTransport.TMemoryBuffer()
        self._processor.process(lenient_protocol(source), TBinaryProtocol.TBinaryProtocol(sink))
        return bytes(sink.getvalue()), end


#: The methods of the Extension service (the generated Processor answers these).
_METHODS: Final = frozenset({b"ping", b"call", b"shutdown"})


def _unknown_method_of(data: bytes | bytearray) -> tuple[Bytes, int] | None:
    """The name and sequence id of a whole message whose method the service does not have,
    or None for one of its methods. The name is a view: never copied or decoded here."""
    view = memoryview(data)
    (word,) = _I32.unpack_from(view, 0)
    if word < 0:  # strict: version, name length, name, sequence id
        (length,) = _I32.unpack_from(view, 4)
        name, after = view[8:8 + length], 8 + length
    else:  # non-strict: name length, name, message type byte, sequence id
        name, after = view[4:4 + word], 4 + word + 1
    if len(name) <= MAX_NAME_BYTES and bytes(name) in _METHODS:
        return None
    (seqid,) = _I32.unpack_from(view, after)
    return name, seqid


def _string(data: Bytes, pos: int) -> tuple[Bytes, int]:
    (length,) = _I32.unpack_from(data, pos)
    start = pos + 4
    end = start + length
    if length < 0:
        raise _Unexpected
    if end > len(data):
        raise NeedMore
    return data[start:end], end


#: Bytes each fixed-size Thrift type takes in the binary protocol.
_FIXED_SIZE: Final = {TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8,
                      TType.DOUBLE: 8}
#: Deepest nesting of structs and containers a message may have (osquery's have two levels).
_MAX_DEPTH: Final = 32
#: Largest message taken, and most fields and container elements in one: osquery's calls have
#: a handful, while a few MB of empty structs would cost seconds to walk and to parse, during
#: which nothing else is served.
MAX_MESSAGE_BYTES: Final = 64 << 20
MAX_ELEMENTS: Final = 1 << 16
_SIZES: Final = struct.Struct(">bbi")
_LIST_HEADER: Final = struct.Struct(">bi")

#: What a scan step yields: how many bytes of the message it needs to have been received.
_Scan = Generator[int, None, int]


class MessageScanner:
    """Finds where a Thrift binary message ends while its bytes are still arriving.

    Each call of `feed` resumes where the last stopped, so a message that arrives in a
    thousand reads is walked once: time linear in its size, where parsing the whole buffer
    again after every read was quadratic. Declared sizes are checked as soon as they are
    read, so a message over `limit` bytes is refused before its bytes are read.
    """

    def __init__(self, limit: int = MAX_MESSAGE_BYTES, elements: int = MAX_ELEMENTS) -> None:
        self.limit = limit
        self._elements_left = elements
        self._data: bytes | bytearray = b""
        self._steps = self._message()
        self.need = next(self._steps)

    def feed(self, data: bytes | bytearray) -> int | None:
        """The message's length once `data` (all bytes so far) holds all of it, else None.

        Raises Malformed for bytes that cannot be a message, or one over the limit.
        """
        self._data = data
        try:
            while self.need <= len(data):
                self.need = self._steps.send(None)
        except StopIteration as done:
            end: int = done.value
            return end
        finally:
            self._data = b""
        return None

    def _want(self, end: int) -> int:
        if end > self.limit:
            raise Malformed(f"a message of more than {self.limit} bytes")
        return end

    def _count(self, elements: int) -> None:
        self._elements_left -= elements
        if self._elements_left < 0:
            raise Malformed("a message of more fields and elements than any osquery call has")

    def _i32(self, pos: int) -> int:
        value: int = _I32.unpack_from(self._data, pos)[0]
        return value

    def _message(self) -> _Scan:
        yield 4
        word = self._i32(0)
        if word < 0:  # strict: version, then the name, then the sequence id
            if word & 0xFFFF0000 != _VERSION_1:
                raise Malformed("not a Thrift binary message")
            yield 8
            length = self._i32(4)
            if length < 0:
                raise Malformed("a negative name length")
            pos = 8 + length + 4
        else:  # old non-strict form: the name, its type byte, the sequence id
            pos = 4 + word + 1 + 4
        yield self._want(pos)
        end = yield from self._skip(TType.STRUCT, pos, 0)
        return end

    def _skip(self, kind: int, pos: int, depth: int) -> _Scan:
        if depth > _MAX_DEPTH:
            raise Malformed("nested too deeply")
        fixed = _FIXED_SIZE.get(kind)
        if fixed is not None:
            end = self._want(pos + fixed)
            yield end
            return end
        if kind == TType.STRING:
            yield self._want(pos + 4)
            length = self._i32(pos)
            if length < 0:
                raise Malformed("a negative string length")
            end = self._want(pos + 4 + length)
            yield end
            return end
        if kind == TType.STRUCT:
            while True:
                yield self._want(pos + 1)
                field = self._data[pos]
                if field == TType.STOP:
                    return pos + 1
                self._count(1)
                yield self._want(pos + 3)
                pos = yield from self._skip(field, pos + 3, depth + 1)
        if kind == TType.MAP:
            yield self._want(pos + 6)
            key, value, size = _SIZES.unpack_from(self._data, pos)
            return (yield from self._items(pos + 6, size, (key, value), depth))
        if kind in (TType.LIST, TType.SET):
            yield self._want(pos + 5)
            element, size = _LIST_HEADER.unpack_from(self._data, pos)
            return (yield from self._items(pos + 5, size, (element,), depth))
        raise Malformed(f"unknown Thrift type {kind}")

    def _items(self, pos: int, size: int, kinds: tuple[int, ...], depth: int) -> _Scan:
        if size < 0:
            raise Malformed("a negative container size")
        self._count(size)
        if all(kind in _FIXED_SIZE for kind in kinds):
            end = self._want(pos + size * sum(_FIXED_SIZE[kind] for kind in kinds))
            yield end
            return end
        for _ in range(size):
            for kind in kinds:
                pos = yield from self._skip(kind, pos, depth + 1)
        return pos
