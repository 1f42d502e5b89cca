"""The fast Thrift path answers exactly what osquery-python's generated Processor would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport import TTransport

from osquery_aws_logger.osquery.wire import OK_RESPONSE, Malformed, MessageScanner, NeedMore, WireCodec


class Recorder:
    """A handler that notes what reached it and answers like the extension does."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def ping(self) -> Any:
        return ExtensionStatus(code=0, message="OK")

    def shutdown(self) -> Any:
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict[str, str]) -> Any:
        self.calls.append((registry, item, request))
        if "string" in request or "snapshot" in request:
            return OK_RESPONSE
        return ExtensionResponse(status=ExtensionStatus(code=len(request), message="x"),
                                 response=[{"k": "v"}])

    def log_line(self, item: str, line: bytes) -> bool:
        if item != "aws_kinesis":
            return False
        self.lines.append((item, line))
        return True


def request_bytes(method: str, *args: Any, seqid: int = 7) -> bytes:
    """What osqueryd's client sends (strict binary protocol), via the generated client."""
    buffer = TTransport.TMemoryBuffer()
    client = Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer))
    client._seqid = seqid
    getattr(client, f"send_{method}")(*args)
    return bytes(buffer.getvalue())


def generated_reply(data: bytes, handler: Any) -> bytes:
    source, sink = TTransport.TMemoryBuffer(data), TTransport.TMemoryBuffer()
    Extension.Processor(handler).process(TBinaryProtocol.TBinaryProtocol(source),
                                         TBinaryProtocol.TBinaryProtocol(sink))
    return bytes(sink.getvalue())


def test_ping_is_answered_like_the_generated_code() -> None:
    data = request_bytes("ping", seqid=12345)
    reply, used = WireCodec(Recorder(), Recorder().log_line).answer(data)
    assert used == len(data)
    assert reply == generated_reply(data, Recorder())


def test_a_log_line_reaches_the_sink_as_bytes_and_gets_the_ok_reply() -> None:
    handler = Recorder()
    data = request_bytes("call", "logger", "aws_kinesis", {"string": '{"a":1}', "category": "event"})
    reply, used = WireCodec(handler, handler.log_line).answer(data)
    assert handler.lines == [("aws_kinesis", b'{"a":1}')] and handler.calls == []
    assert used == len(data)
    assert reply == generated_reply(data, Recorder())


def test_invalid_utf8_bytes_reach_the_spool_unchanged() -> None:
    handler = Recorder()
    raw = b'{"a":"\xff\xfe"}'
    data = request_bytes("call", "logger", "aws_kinesis", {"string": "PLACEHOLDER"})
    data = data.replace(b"\x00\x00\x00\x0bPLACEHOLDER", len(raw).to_bytes(4, "big") + raw)
    WireCodec(handler, handler.log_line).answer(data)
    assert handler.lines == [("aws_kinesis", raw)]


def test_other_requests_go_to_the_handler_and_their_answers_match() -> None:
    for request in ({"action": "features"}, {"init": "osqueryd"}, {"status": "true", "log": "[]"}):
        handler = Recorder()
        data = request_bytes("call", "logger", "aws_kinesis", request)
        reply, _ = WireCodec(handler, handler.log_line).answer(data)
        assert handler.calls == [("logger", "aws_kinesis", request)]
        assert reply == generated_reply(data, Recorder())


def test_unknown_plugins_and_methods_fall_back_to_the_generated_processor() -> None:
    handler = Recorder()
    data = request_bytes("call", "logger", "other_plugin", {"string": "x"})
    reply, _ = WireCodec(handler, handler.log_line).answer(data)
    assert reply == generated_reply(data, Recorder())
    data = request_bytes("shutdown")
    reply, used = WireCodec(handler, handler.log_line).answer(data)
    assert used == len(data) and reply == generated_reply(data, Recorder())


def test_every_truncation_asks_for_more_bytes() -> None:
    handler = Recorder()
    data = request_bytes("call", "logger", "aws_kinesis", {"string": "x" * 50})
    codec = WireCodec(handler, handler.log_line)
    for cut in range(len(data)):
        with pytest.raises(NeedMore):
            codec.answer(data[:cut])
    assert handler.lines == []


def test_two_messages_in_one_buffer_are_answered_one_at_a_time() -> None:
    handler = Recorder()
    first = request_bytes("ping", seqid=1)
    second = request_bytes("call", "logger", "aws_kinesis", {"snapshot": "{}"}, seqid=2)
    codec = WireCodec(handler, handler.log_line)
    _, used = codec.answer(first + second)
    assert used == len(first)
    _, used = codec.answer(second)
    assert used == len(second) and handler.lines == [("aws_kinesis", b"{}")]


@given(item=st.sampled_from(["aws_kinesis", "aws_firehose", "x"]),
       registry=st.sampled_from(["logger", "table", "config"]),
       request=st.dictionaries(st.sampled_from(["string", "snapshot", "category", "status", "log",
                                                "action", "init", "z"]), st.text(max_size=40),
                               max_size=4),
       seqid=st.integers(-(2**31), 2**31 - 1))
def test_any_call_gets_the_same_reply_as_from_the_generated_code(
        item: str, registry: str, request: dict[str, str], seqid: int) -> None:
    data = request_bytes("call", registry, item, request, seqid=seqid)
    fast = Recorder()
    reply, used = WireCodec(fast, fast.log_line).answer(data)
    assert used == len(data)
    slow = Recorder()
    expected = generated_reply(data, slow)
    assert reply == expected
    # The fast path only ever skips the handler for a log line it handed to the sink.
    assert len(fast.calls) + len(fast.lines) == 1


# -- the scanner: where a message ends, while its bytes arrive ----------------------------------

def _call_message(request: dict[str, str]) -> bytes:
    buffer = TTransport.TMemoryBuffer()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer)).send_call("logger", "aws_kinesis",
                                                                        request)
    return bytes(buffer.getvalue())


@settings(max_examples=200, deadline=None)
@given(request=st.dictionaries(st.text(max_size=20), st.text(max_size=300), max_size=20),
       cuts=st.lists(st.integers(1, 4000), max_size=30), tail=st.binary(max_size=20))
def test_the_scanner_finds_the_end_however_the_bytes_arrive(
        request: dict[str, str], cuts: list[int], tail: bytes) -> None:
    message = _call_message(request)
    stream = message + tail
    scanner = MessageScanner(1 << 20)
    buffer = b""
    end = None
    for cut in [*sorted(set(cuts)), len(stream)]:
        buffer = stream[:cut]
        end = scanner.feed(buffer)
        if end is not None:
            break
    assert end == len(message)
    assert len(buffer) >= end


def test_the_scanner_refuses_a_message_over_the_limit_from_its_declaration() -> None:
    message = _call_message({"string": "x" * 5000})
    scanner = MessageScanner(4096)
    with pytest.raises(Malformed, match="more than 4096"):
        # Only the head: the declared length of the line is enough to refuse it.
        scanner.feed(message[:message.index(b"string") + 10])


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x80\x02\x00\x01", b"\xff" * 32])
def test_the_scanner_refuses_bytes_that_are_no_thrift_message(data: bytes) -> None:
    with pytest.raises(Malformed):
        MessageScanner(1 << 20).feed(data)


def test_a_handler_bug_raising_index_error_is_not_taken_for_a_short_read() -> None:
    def broken_sink(item: str, line: bytes) -> bool:
        raise IndexError("a bug in the spool")

    codec = WireCodec(object(), broken_sink)
    with pytest.raises(IndexError):
        codec.answer(_call_message({"string": "{}"}))


def test_the_scanner_refuses_a_message_of_too_many_elements() -> None:
    # A few hundred KB of empty structs in a list: cheap to send, seconds to walk and parse.
    buffer = TTransport.TMemoryBuffer()
    protocol = TBinaryProtocol.TBinaryProtocol(buffer)
    protocol.writeMessageBegin("call", TMessageType.CALL, 1)
    protocol.writeStructBegin("call_args")
    protocol.writeFieldBegin("junk", TType.LIST, 9)
    protocol.writeListBegin(TType.STRUCT, 200_000)
    for _ in range(200_000):
        protocol.writeFieldStop()
    protocol.writeListEnd()
    protocol.writeFieldEnd()
    protocol.writeFieldStop()
    protocol.writeMessageEnd()
    with pytest.raises(Malformed, match="more fields and elements"):
        MessageScanner().feed(bytes(buffer.getvalue()))


def test_a_generated_path_handler_runs_once_even_when_it_raises_a_transport_error() -> None:
    calls = []

    class Handler:
        def shutdown(self) -> None:
            calls.append("shutdown")
            # The generated code re-raises transport errors: once taken for a short read.
            raise TTransport.TTransportException(TTransport.TTransportException.END_OF_FILE)

    buffer = TTransport.TMemoryBuffer()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer)).send_shutdown()
    codec = WireCodec(Handler(), lambda item, line: False)
    message = bytes(buffer.getvalue())
    with pytest.raises(TTransport.TTransportException):
        codec.answer(message)
    assert calls == ["shutdown"]
    with pytest.raises(NeedMore):  # a short read still says so, and runs nothing
        codec.answer(message[:-1])
    assert calls == ["shutdown"]
