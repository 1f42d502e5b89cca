"""Replies never echo a peer's name whole (issue 18, item 10): error answers quote a short
escaped prefix of any registry, plugin, request key or method name, and a name too long to be
one is answered from its bytes without being decoded or copied. In process (the codec, the
handler, the plugin, the table) and against the real extension process."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from osquery.extensions import Extension
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport import TTransport

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.delivery.services import KINESIS
from osquery_aws_logger.extension import plugin_names
from osquery_aws_logger.ops.status import TABLE_NAME, StatusTable
from osquery_aws_logger.osquery.plugins import Handler, LoggerPlugin
from osquery_aws_logger.osquery.wire import MAX_NAME_BYTES, QUOTE_CHARS, WireCodec, quote
from osquery_aws_logger.settings import MAX_SUFFIX_CHARS, Settings, parse_settings
from osquery_aws_logger.spool.spool import Spool
from tests.harness import RunningExtension, result_lines
from tests.test_every_row import assert_alive, exchange, peak_rss_mb, raw_call
from tests.test_hardening import connect

Factory = type[RunningExtension]
MB = 1 << 20
#: Longest quote: QUOTE_CHARS of escapes, the quotes and the cut marker with a 9-digit length.
LONGEST_QUOTE = QUOTE_CHARS + 2 + len("... (cut, 123456789 characters in all)")


def decode(reply: bytes, method: str = "call") -> Any:
    """A reply as the generated client reads it: the result, or the exception it raises."""
    client = Extension.Client(TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(reply)))
    try:
        return getattr(client, f"recv_{method}")()
    except TApplicationException as exc:
        return exc


def unknown_method(name: bytes, *, strict: bool = True, seqid: int = 9) -> bytes:
    """A call of a method the Extension service does not have, named `name`."""
    body = raw_call(b"logger", b"aws_kinesis", {b"string": b"{}"})
    args = body[8 + 4 + 4:]  # the call's arguments, after version, "call" and sequence id
    if strict:
        head = struct.pack(">Ii", 0x80010001, len(name)) + name + struct.pack(">i", seqid)
    else:
        head = struct.pack(">i", len(name)) + name + bytes([TMessageType.CALL]) + \
            struct.pack(">i", seqid)
    return head + args


def codec() -> WireCodec:
    handler = Handler({}, on_init=lambda: None, on_shutdown=lambda: None,
                      tables={TABLE_NAME: StatusTable(lambda: [])})
    return WireCodec(handler, handler.log_line)


def answer_measured(message: bytes) -> tuple[bytes, int]:
    """The codec's reply to `message` (held as the server holds a big one: a bytearray) and
    the most memory Python allocated while answering it."""
    data = bytearray(message)
    tracemalloc.start()
    try:
        reply, used = codec().answer(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert used == len(data)
    return reply, peak


# -- quote ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "shown"), [
    ("aws_kinesis", "'aws_kinesis'"),
    ("it's", "'it\\'s'"),
    ("a\nb\x00\u202e", "'a\\nb\\x00\\u202e'"),
    (b"caf\xc3\xa9", "'café'"),
    (b"\xff\xfe", "'\\udcff\\udcfe'"),
])
def test_quote_shows_a_short_name_whole_and_escaped(value: str | bytes, shown: str) -> None:
    assert quote(value) == shown


@pytest.mark.parametrize("value", [
    "x" * 65, "\U0010ffff" * 10_000, b"\xff\xfe" * (5 * MB), "é".encode() * (5 * MB),
    memoryview(bytearray(60 * MB)),
])
def test_quote_cuts_a_long_one_to_a_short_escaped_prefix_and_says_so(value: Any) -> None:
    text = quote(value)
    assert len(text) <= LONGEST_QUOTE
    unit = "characters" if isinstance(value, str) else "bytes"
    assert text.endswith(f"... (cut, {len(value)} {unit} in all)")
    assert text.isprintable()


def test_quote_copies_only_the_prefix_of_a_60_mb_value() -> None:
    value = memoryview(bytearray(60 * MB))
    tracemalloc.start()
    try:
        quote(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, f"{peak} bytes allocated to quote a 60 MB value"


# -- the codec: huge names answered small, from the bytes ------------------------------------------

NAMES = {
    "invalid_utf8": b"\xff\xfe" * (5 * MB),
    "utf8": "é".encode() * (5 * MB),
    "ascii": b"a" * (10 * MB),
}


@pytest.mark.parametrize("kind", sorted(NAMES))
@pytest.mark.parametrize("where", ["registry", "item", "key"])
def test_a_10_mb_name_anywhere_in_a_call_gets_a_small_reply_without_being_decoded(
        kind: str, where: str) -> None:
    name = NAMES[kind]
    message = raw_call(name if where == "registry" else b"logger",
                       name if where == "item" else b"aws_kinesis",
                       {name if where == "key" else b"string": b'{"a":1}'})
    reply, peak = answer_measured(message)
    assert len(reply) < 1024, f"a {len(reply)}-byte reply"
    assert peak < MB, f"{peak} bytes allocated answering a 10 MB name: decoded or copied"
    answer = decode(reply)
    assert answer.status.code == 1
    assert "(cut, 10485760 bytes in all)" in answer.status.message


def test_a_name_just_short_enough_is_still_looked_up() -> None:
    # 1,024 bytes: not one of ours, but read as a name, so the handler names it (quoted, cut).
    reply, _ = answer_measured(raw_call(b"logger", b"p" * 1024, {b"init": b"x"}))
    message = decode(reply).status.message
    assert message.startswith("no 'logger' plugin named 'ppp") and "1024 characters" in message


@pytest.mark.parametrize("strict", [True, False])
def test_an_unknown_method_with_a_60_mb_name_gets_a_small_unknown_function_answer(
        strict: bool) -> None:
    reply, peak = answer_measured(unknown_method(b"\xff" * (60 * MB), strict=strict))
    assert len(reply) < 1024, f"a {len(reply)}-byte reply"
    assert peak < MB, f"{peak} bytes allocated answering a 60 MB method name"
    answer = decode(reply)
    assert isinstance(answer, TApplicationException)
    assert answer.type == TApplicationException.UNKNOWN_METHOD
    assert answer.message.startswith("Unknown function '\\udcff")
    assert answer.message.endswith("(cut, 62914560 bytes in all)")


def test_an_unknown_short_method_is_named_whole_and_known_ones_still_work() -> None:
    answer = decode(answer_measured(unknown_method(b"pong", seqid=5))[0])
    assert isinstance(answer, TApplicationException)
    assert answer.message == "Unknown function 'pong'"
    buffer = TTransport.TMemoryBuffer()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(buffer)).send_shutdown()
    shutdowns: list[bool] = []
    handler = Handler({}, on_init=lambda: None, on_shutdown=lambda: shutdowns.append(True))
    reply, _ = WireCodec(handler, handler.log_line).answer(bytes(buffer.getvalue()))
    assert decode(reply, "shutdown") is None and shutdowns == [True]


# -- the handler, the plugin, the table ----------------------------------------------------------

def test_the_handler_plugin_and_table_quote_what_they_were_sent(tmp_path: Path) -> None:
    counters = PluginCounters()
    spool = Spool(tmp_path / "kinesis", max_records=10, max_bytes=MB, on_drop=counters.drop)
    plugin = LoggerPlugin("aws_kinesis", lambda: KINESIS.settings(Settings()), spool, counters,
                          lambda: None, lambda: "5", "host", 500)
    handler = Handler({"aws_kinesis": plugin}, on_init=lambda: None, on_shutdown=lambda: None,
                      tables={TABLE_NAME: StatusTable(lambda: [])})
    huge = "\udcff" * (10 * MB)
    for answer in (handler.call(huge, "aws_kinesis", {}), handler.call("logger", huge, {}),
                   handler.call("logger", "aws_kinesis", {huge: "v", "k" * 100: "v", "a": "b",
                                                          "c": "d", "e": "f", "g": "h"}),
                   handler.call("table", "aws_logger_status", {"action": huge})):
        assert answer.status.code == 1
        assert len(answer.status.message) < 512, answer.status.message[:200]
    unknown = handler.call("logger", "aws_kinesis", {"k" * 100: "v", "x": "y"})
    assert unknown.status.message == (
        f"aws_kinesis: unknown logger request with keys {quote('k' * 100)}, 'x'")
    spool.close()


# -- the real process ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10 * MB, 60 * MB])
@pytest.mark.parametrize("where", ["item", "method"])
def test_the_extension_answers_a_huge_invalid_utf8_name_small_and_stays_small(
        tmp_path: Path, extension_factory: Factory, size: int, where: str) -> None:
    with extension_factory(tmp_path) as ext:
        assert ext.proc is not None
        path = ext.standin.extension_socket(ext.uuid)
        assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
        resting = peak_rss_mb(ext.proc.pid)
        name = b"\xff\xfe" * (size // 2)
        message = raw_call(b"logger", name, {b"string": b'{"a":1}'}) if where == "item" \
            else unknown_method(name)
        del name
        received = exchange(path, message)
        del message
        assert 0 < received < 1024, f"a {received}-byte reply to a {size}-byte name"
        # The message itself is held once while it is read (the server reads it in place);
        # nothing the size of the name is made from it.
        peak = peak_rss_mb(ext.proc.pid)
        print(f"{where} of {size} bytes: a {received}-byte reply; peak RSS {resting:.0f} -> {peak:.0f} MB")
        assert peak - resting <= size / MB + 30, f"peak RSS {resting:.0f} -> {peak:.0f} MB"
        assert ext.log("kinesis", result_lines(ext.standin, 1)[0]).status.code == 0
        assert_alive(ext)


def test_the_reply_to_a_huge_name_reaches_a_peer_that_reads_it_with_the_generated_client(
        tmp_path: Path, extension_factory: Factory) -> None:
    with extension_factory(tmp_path) as ext:
        path = ext.standin.extension_socket(ext.uuid)
        with contextlib.closing(connect(path, timeout=30)) as sock:
            sock.sendall(raw_call(b"logger", b"\xff" * (10 * MB), {b"init": b"osqueryd"}))
            data = b""
            while chunk := sock.recv(1 << 16):
                data += chunk
        answer = decode(data)
        assert answer.status.code == 1
        assert answer.status.message.startswith("no 'logger' plugin named '\\udcff")


def test_no_plugin_name_the_settings_allow_is_too_long_to_be_looked_up() -> None:
    assert parse_settings({"custom_aws_logger_plugin_suffix": "\U0001f600"}, {})[1], "not a letter"
    widest = "\U00020000" * MAX_SUFFIX_CHARS  # a CJK letter, 4 bytes in UTF-8
    settings_, problems = parse_settings({"custom_aws_logger_plugin_suffix": widest}, {})
    assert not problems and settings_.aws_logger_plugin_suffix == widest
    assert all(len(name.encode()) <= MAX_NAME_BYTES for name in plugin_names(widest).values())
    _, problems = parse_settings({"custom_aws_logger_plugin_suffix": "x" * (MAX_SUFFIX_CHARS + 1)}, {})
    assert problems and f"at most {MAX_SUFFIX_CHARS}" in problems[0]
