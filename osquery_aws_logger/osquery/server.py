"""The extension's Thrift server: one selector loop, where no connection can hold up another.

osqueryd opens a fresh connection for every call (a ping, then the log call) and closes it
after the answer, so the cost per row is the cost per connection: here one thread accepts,
reads, answers and closes, with no thread start and no lock per call, and the spool sees the
lines in order. Every socket is non-blocking and watched by one selector (epoll on Linux,
kqueue on macOS, poll anywhere else: `selectors` picks), so a peer that
connects and stalls, sends one byte at a time, or is mid-way through a 60 MB snapshot line
costs the others nothing: each connection is a small state (bytes so far, a scanner that
knows where its message ends, an answer still to write) with two deadlines, one for silence
and one for the whole message. A message is parsed once, when all of it is in.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import struct
import time
from typing import Any, Final

from thrift.protocol.TProtocol import TProtocolException
from thrift.transport.TTransport import TTransportException

from ..platform import accept_with_timeout, release_memory, wake_pipe
from .wire import MAX_MESSAGE_BYTES, Malformed, MessageScanner, NeedMore, WireCodec

log = logging.getLogger("osquery_aws_logger.server")

_READ: Final = selectors.EVENT_READ  # a peer's close and errors show as readable too
_WRITE: Final = selectors.EVENT_WRITE
_RETRY: Final = (BlockingIOError, InterruptedError)
#: What a blocking accept() with a kernel timeout raises when nobody connected meanwhile.
_WAITED: Final = (BlockingIOError, InterruptedError, TimeoutError)


class _Connection:
    """One accepted connection: what it sent so far and what it is still owed."""

    __slots__ = ("buffer", "fd", "last_progress", "outgoing", "paused", "paused_at", "scanner",
                 "started")

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd
        self.buffer: bytes | bytearray = b""
        self.scanner: MessageScanner | None = None
        self.outgoing = bytearray()
        self.started = now  # when the message being read began
        self.last_progress = now
        self.paused = False  # not read while big messages hold the memory budget
        self.paused_at = 0.0


class Server:
    """Serves the Extension service on a UNIX socket until `stop()`.

    osqueryd opens a connection per call and closes it after the answer; the server closes
    first, once every call received is answered, which saves waiting for that close (a wake-up
    and a read per connection, two connections per row). A client that sends several calls on
    one connection must send them together (they are all answered) or reconnect.
    """

    #: Longest the loop waits before it looks at deadlines and the stop flag again.
    POLL_SECONDS: Final = 0.5
    #: A connection that sends nothing (or reads nothing of its answer) this long is closed.
    IDLE_SECONDS: Final = 10.0
    #: A message still incomplete this long after its first byte is given up, whatever its
    #: pace: osqueryd's own call timeout is far shorter, so nobody waits for the answer.
    MESSAGE_SECONDS: Final = 60.0
    #: A message declaring more than this is refused as soon as the declaration is read.
    #: osquery's lines rarely pass a few MB; anything over 16 MiB is dropped as oversize anyway.
    MAX_MESSAGE_BYTES: Final = MAX_MESSAGE_BYTES
    #: Bytes of unfinished messages held at once, all connections together. Past it, big
    #: messages are read no further (their bytes wait in the kernel) until others finish: a
    #: few peers each sending a giant line must not add up to osquery's watchdog limit.
    BUFFER_BUDGET_BYTES: Final = 80 << 20
    #: Connections kept at once; past it, the one silent the longest is closed for a new one,
    #: so a crowd of stalled peers cannot lock osqueryd out.
    MAX_CONNECTIONS: Final = 256
    #: A message past this size is followed by returning freed memory to the system.
    BIG_MESSAGE_BYTES: Final = 1 << 20
    #: Bytes asked for per read: a call fits in one; a big message comes in at most this much
    #: per wake-up, so a fast peer sending one cannot keep the loop from the others.
    READ_BYTES: Final = 1 << 16
    BIG_READ_BYTES: Final = 1 << 20
    #: How long accepting pauses when the process is out of descriptors and none can be freed.
    ACCEPT_PAUSE_SECONDS: Final = 1.0

    def __init__(self, path: str, handler: Any, *,
                 selector: type[selectors.BaseSelector] = selectors.DefaultSelector) -> None:
        self.path = path
        self._codec = WireCodec(handler, handler.log_line)
        self._stopping = False  # a plain flag: the loop reads it every turn
        self._connections: dict[int, _Connection] = {}
        self._buffered = 0  # bytes of unfinished messages, all connections together
        self._paused: set[_Connection] = set()
        self._accept_paused_until = 0.0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under a private name, then renamed into place: osqueryd (which
        # pings as soon as the path exists) never finds a socket that refuses connections.
        staging = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        self._listener.bind(staging)
        self._listener.listen(1024)  # bursts of connects wait for the loop, not fail
        os.replace(staging, path)
        # Where the kernel can time out a blocking accept() (Linux), the listener blocks: while
        # no connection is open (osqueryd's calls are answered as they are accepted) the loop
        # sleeps in accept() itself, one system call per connection less than waiting in the
        # selector first. When the selector says the listener is readable, a connection is
        # there and accept() does not wait. Elsewhere the listener never blocks.
        self._blocking_accept = accept_with_timeout(self._listener, self.POLL_SECONDS)
        if not self._blocking_accept:
            self._listener.setblocking(False)
        self._wake_read, self._wake_write = wake_pipe()
        self._selector = selector()
        self._selector.register(self._listener.fileno(), _READ)
        self._selector.register(self._wake_read, _READ)

    def stop(self) -> None:
        """Ask the loop to end; safe from any thread or a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    @property
    def connections(self) -> int:
        return len(self._connections)

    def serve(self) -> None:
        listener = self._listener.fileno()
        # socket.accept() wraps each connection in a socket object (more syscalls and
        # allocations); the low-level _accept() answers the bare descriptor.
        accept = self._listener._accept  # type: ignore[attr-defined]
        select = self._selector.select
        connections = self._connections
        next_sweep = time.monotonic() + self.POLL_SECONDS
        try:
            while not self._stopping:
                if not connections and not self._accept_paused_until and self._blocking_accept:
                    # Nothing open to watch: wait in accept() (see __init__).
                    now = self._accept_one(accept)
                    if now >= next_sweep:
                        next_sweep = now + self.POLL_SECONDS
                        self._sweep(now)
                    continue
                events = select(self.POLL_SECONDS)
                now = time.monotonic()
                for key, mask in events:
                    fd = key.fd
                    if fd == listener:
                        now = self._accept_one(accept)
                    elif fd == self._wake_read:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_read, 512)
                    else:
                        connection = connections.get(fd)
                        if connection is None:
                            continue
                        if mask & _WRITE:
                            self._send(connection, now)
                        elif mask & _READ:
                            self._receive(connection, now)
                if now >= next_sweep:
                    next_sweep = now + self.POLL_SECONDS
                    self._sweep(now)
        finally:
            for fd in list(connections):
                self._close(connections[fd])
            self._selector.close()
            self._listener.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    # -- connections --------------------------------------------------------------------------

    def _accept_one(self, accept: Any) -> float:
        """Take one connection (and answer what it sent, if that is all there is); answer the
        time after it. With nobody connecting, a blocking accept() gives up at its timeout."""
        try:
            fd, _ = accept()
        except _WAITED:
            return time.monotonic()
        except OSError as exc:
            now = time.monotonic()
            self._accept_failed(exc, now)
            return now
        now = time.monotonic()
        self._accepted(fd, now)
        return now

    def _accept_failed(self, exc: OSError, now: float) -> None:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            if self._connections:
                # Out of descriptors: make room by closing the connection silent the longest.
                self._close(min(self._connections.values(), key=lambda c: c.last_progress))
                log.warning("out of file descriptors with %d connections open; closed the "
                            "most idle one", len(self._connections))
            else:
                # Nothing of ours to close: stop watching the listener for a moment rather
                # than wake for it (and fail) in a tight loop.
                self._selector.unregister(self._listener.fileno())
                self._accept_paused_until = now + self.ACCEPT_PAUSE_SECONDS
                log.warning("out of file descriptors; not accepting for %.0fs",
                            self.ACCEPT_PAUSE_SECONDS)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
            log.warning("accept failed: %s", exc)

    def _accepted(self, fd: int, now: float) -> None:
        if len(self._connections) >= self.MAX_CONNECTIONS:
            self._close(min(self._connections.values(), key=lambda c: c.last_progress))
        os.set_blocking(fd, False)
        # osqueryd writes its one call right after connecting, and it is small: read it at
        # once, answer, close. Two connections per row take this path, so it keeps no state;
        # only a connection with nothing to read yet, part of a message, or an answer the peer
        # has not taken becomes a _Connection watched by the selector.
        try:
            data = os.read(fd, self.READ_BYTES)
        except _RETRY:
            data = None
        except OSError:
            os.close(fd)
            return
        if data is not None and len(data) < self.READ_BYTES:
            if not data:
                os.close(fd)  # connected and closed at once
                return
            try:
                answered = self._answer_message(data)
            except NeedMore:
                pass  # part of a message: the connection takes it from here
            else:
                if answered is None:
                    os.close(fd)
                    return
                reply, used = answered
                if used == len(data):
                    try:
                        written = os.write(fd, reply)
                    except OSError:
                        written = -1
                    if written in (len(reply), -1):
                        os.close(fd)
                        return
                    reply = reply[written:]  # the peer takes its answer slowly
                # The rest of the answer, or the calls after the first one answered here.
                connection = self._connection(fd, now)
                connection.outgoing += reply
                self._selector.register(fd, _WRITE)
                data = data[used:]
                if data:
                    connection.buffer = data
                    self._buffered += len(data)
                    self._answer(connection, now)
                return
        connection = self._connection(fd, now)
        if data is None:
            self._selector.register(fd, _READ)
            return
        connection.buffer = data
        self._buffered += len(data)
        if self._answer(connection, now) and not connection.outgoing:
            self._selector.register(fd, _READ)

    def _connection(self, fd: int, now: float) -> _Connection:
        connection = self._connections[fd] = _Connection(fd, now)
        return connection

    def _receive(self, connection: _Connection, now: float) -> None:
        """Read once and answer what is whole: one read per wake-up, so a fast peer (a big
        message, or calls sent back to back) cannot keep the loop from the others; the selector
        says when there is more."""
        scanner = connection.scanner
        size = self.READ_BYTES
        if scanner is not None:
            if self._buffered >= self.BUFFER_BUDGET_BYTES and self._another_reads(connection):
                self._pause(connection)
                return
            size = max(size, min(self.BIG_READ_BYTES, scanner.need - len(connection.buffer)))
        try:
            data = os.read(connection.fd, size)
        except _RETRY:
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)  # the peer closed, as osqueryd does after every call
            return
        connection.last_progress = now
        if connection.buffer:
            if not isinstance(connection.buffer, bytearray):
                connection.buffer = bytearray(connection.buffer)
            connection.buffer += data
        else:
            connection.buffer = data
            connection.started = now
        self._buffered += len(data)
        self._answer(connection, now)

    def _another_reads(self, connection: _Connection) -> bool:
        """Whether a big message other than `connection`'s is still being read. Past the budget
        one always is: were every one paused, none could finish and free the budget (and a
        paused peer escapes the deadlines, which are for peers, not for our waits). The one
        left reading is held to the deadlines, so a peer that stalls there is closed."""
        return any(other is not connection and other.scanner is not None and not other.paused
                   for other in self._connections.values())

    def _pause(self, connection: _Connection) -> None:
        connection.paused = True
        connection.paused_at = time.monotonic()
        self._paused.add(connection)
        self._unwatch(connection.fd)

    def _resume_paused(self) -> None:
        """Big messages may be read again once the budget has room; and while none is being
        read, the one furthest along is, budget or not (paused ones together may hold more
        than the budget: waiting for room would then wait for ever)."""
        if not self._paused:
            return
        if self._buffered < self.BUFFER_BUDGET_BYTES:
            resumed = list(self._paused)
        elif not any(c.scanner is not None and not c.paused for c in self._connections.values()):
            resumed = [max(self._paused, key=lambda c: len(c.buffer))]
        else:
            return
        now = time.monotonic()
        for connection in resumed:
            connection.paused = False
            # Its wait was ours, not the peer's: neither deadline counts it.
            connection.last_progress = now
            connection.started += now - connection.paused_at
            self._selector.register(connection.fd, _READ)
            self._paused.discard(connection)

    def _answer(self, connection: _Connection, now: float) -> bool:
        """Answer every whole message in the buffer; False once the connection is done."""
        while connection.buffer:
            buffer = connection.buffer
            if connection.scanner is not None:
                try:
                    end = connection.scanner.feed(buffer)
                except Malformed as exc:
                    log.warning("closed a connection: %s", exc)
                    self._close(connection)
                    return False
                if end is None:
                    return True
            try:
                answered = self._answer_message(buffer)
            except NeedMore:
                if connection.scanner is not None:
                    # The scanner said the message is whole: the parser disagrees.
                    log.warning("closed a connection: a malformed Thrift message")
                    self._close(connection)
                    return False
                # Part of a message: from here the scanner says when it is whole, so it is
                # parsed once and not again after every read.
                connection.scanner = MessageScanner(self.MAX_MESSAGE_BYTES)
                continue
            if answered is None:
                self._close(connection)
                return False
            reply, used = answered
            big = used >= self.BIG_MESSAGE_BYTES
            connection.scanner = None
            connection.started = now
            connection.buffer = buffer[used:] if used < len(buffer) else b""
            self._buffered -= used
            del buffer
            if big:
                release_memory()
                self._resume_paused()
            if not self._write(connection, reply):
                return False
        if not connection.outgoing:
            self._close(connection)  # every call answered: see the class's docstring
            return False
        return True

    def _answer_message(self, data: bytes | bytearray) -> tuple[bytes, int] | None:
        """The reply to the first message in `data` and its length; None (logged) when the
        connection must close: a malformed message, or a bug answering it, which must not end
        the server. Raises NeedMore for part of a message."""
        try:
            return self._codec.answer(data)
        except NeedMore:
            raise
        except (Malformed, TProtocolException, TTransportException, EOFError,
                struct.error) as exc:
            log.warning("closed a connection: a malformed Thrift message (%s)",
                        type(exc).__name__)
        except Exception:
            log.exception("could not answer a message; connection closed")
        return None

    def _write(self, connection: _Connection, reply: bytes) -> bool:
        if connection.outgoing:
            connection.outgoing += reply  # behind what the peer has not read yet
            return True
        try:
            written = os.write(connection.fd, reply)
        except _RETRY:
            written = 0
        except OSError:
            self._close(connection)
            return False
        if written < len(reply):
            # The peer is not reading its answer yet: keep the rest, send on EPOLLOUT.
            self._watch(connection, _WRITE)
            connection.outgoing += reply[written:]
        return True

    def _send(self, connection: _Connection, now: float) -> None:
        try:
            written = os.write(connection.fd, connection.outgoing)
        except _RETRY:
            return
        except OSError:
            self._close(connection)
            return
        connection.last_progress = now
        del connection.outgoing[:written]
        if not connection.outgoing:
            if not connection.buffer:
                self._close(connection)
            else:
                self._watch(connection, _READ)
                self._answer(connection, now)

    def _watch(self, connection: _Connection, events: int) -> None:
        try:
            self._selector.modify(connection.fd, events)
        except KeyError:
            self._selector.register(connection.fd, events)

    def _unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def _sweep(self, now: float) -> None:
        """Close the connections that stalled or have taken too long over one message."""
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener.fileno(), _READ)
        for connection in list(self._connections.values()):
            if connection.paused:
                continue  # waiting for the budget, not for the peer
            if now - connection.last_progress >= self.IDLE_SECONDS:
                self._close(connection)
            elif connection.buffer and now - connection.started >= self.MESSAGE_SECONDS:
                log.warning("closed a connection: a message still incomplete after %.0fs",
                            self.MESSAGE_SECONDS)
                self._close(connection)

    def _close(self, connection: _Connection) -> None:
        fd = connection.fd
        if fd < 0:
            return
        self._buffered -= len(connection.buffer)
        connection.fd = -1
        connection.buffer = b""
        connection.outgoing = bytearray()
        connection.scanner = None
        connection.paused = False
        self._paused.discard(connection)
        self._connections.pop(fd, None)
        self._unwatch(fd)  # before the close: the number may be reused at once
        os.close(fd)
        self._resume_paused()
