# -*- test-case-name: tests.test_wire, tests.test_fuzz, tests.test_reliability -*-
"""
The wire: a :class:`~twisted.protocols.basic.LineReceiver` that turns server
lines into :class:`~twisted_smtpconn._reply.Reply` objects and hands each one
to the command it answers.

Three rules every command obeys live here, once, because every command
passes through here:

- **Pairing.**  Replies pair with commands in the order the commands were
  written.  The replies of one read are all parsed before any of them is
  handed on, so a caller that writes its next command on hearing a reply can
  never have that command paired with a further reply that was already in
  the same read: a reply nobody was waiting for when it arrived fails the
  connection with ``EPROTOCOL`` (an unsolicited reply means the dialogue is
  out of step, and nothing more may be written).
- **421.**  A ``421`` reply, to any command or to none, means the server is
  closing the transmission channel (RFC 5321 section 3.8): the connection
  fails with ``ECONNECTION`` carrying that reply, every command still waiting
  fails with it, and nothing more is written.
- **Time.**  The greeting must be complete within ``greeting_timeout`` of the
  connection (of the TLS handshake, with implicit TLS); the handshake of
  implicit TLS within ``connection_timeout``; each later reply within
  ``socket_timeout`` of the moment it became due (its command written, or
  the reply before it complete), and bytes trickling in do not extend that.
  A connection with nothing to wait for closes after ``socket_timeout`` of
  silence.  While the server is still taking what we wrote (a message
  streaming to a slow reader), the reply is not due yet: the kernel's count
  of acknowledged bytes going up is activity.

This layer knows nothing else of the SMTP dialogue (see :mod:`._session`
and :mod:`._transaction`); it guarantees that every waiter learns of a
failure exactly once, and that no reply is ever paired with a command after a
timeout or failure (the connection is aborted instead).
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProducer,
    IReactorTime,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ._errors import (
    ConnectionFailedError,
    ProtocolError,
    SMTPConnectionError,
    SMTPTimeoutError,
    SocketError,
    TLSError,
)
from ._logging import WireLog
from ._reply import Reply, ReplyParser

__all__ = ["SMTPClientProtocol", "MAX_LINE_LENGTH"]

#: Longest server line accepted (RFC 5321 allows 512; real servers send a
#: little more in enhanced texts).  Longer lines fail the connection with
#: EPROTOCOL without buffering them.
MAX_LINE_LENGTH = 8192

_CLOSING = 421
_UNSAFE = (b"\r", b"\n", b"\x00")


def _describe_loss(reason: Failure) -> SMTPConnectionError:
    """
    Map the reason a transport closed to the library's error.

    TLS failures come first and keep their reason (unknown CA, name
    mismatch, expired, no common version...): see :mod:`._tls_errors`.
    """
    from ._tls_errors import describe_tls_failure

    tls_error = describe_tls_failure(reason)
    if tls_error is not None:
        return tls_error
    if isinstance(reason.value, neterror.ConnectionDone):
        return ConnectionFailedError("connection closed by the server")
    if isinstance(reason.value, neterror.ConnectionLost):
        return ConnectionFailedError(f"connection lost: {reason.getErrorMessage()}")
    return SocketError(f"socket error: {reason.getErrorMessage()}")


# -- how much the peer has taken -------------------------------------------------------

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the u64 at offset 120,
# present since Linux 4.1.  Other systems have no equivalent we can read.
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_QUEUED = struct.Struct("=i")


def _delivery_state(transport: object) -> tuple[int, int] | None:
    """
    ``(bytes the peer's TCP acknowledged, bytes written but not yet
    acknowledged)`` on this connection, or ``None`` when that cannot be
    known (not a TCP socket, not Linux).

    Twisted's buffers and the kernel's send queue both hide whether a peer
    that reads slowly is still reading; the acknowledged-bytes counter does
    not (a peer that stopped reading acknowledges only zero-window probes,
    which do not move it).  The send queue says whether anything is still on
    its way at all: when it is empty, the peer has everything we wrote.
    """
    if _TCP_INFO is None:
        return None
    # TCP transports keep their socket in ``socket``; after startTLS their
    # getHandle() returns the TLS connection instead.
    handle = getattr(transport, "socket", None)
    if handle is None:
        return None
    try:
        import fcntl
        import termios

        info = handle.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
        queued = fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, _QUEUED.pack(0))
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    outstanding: int = _QUEUED.unpack(queued)[0]
    return acked, outstanding


class _Group:
    """Several pipelined commands whose replies are wanted together."""

    __slots__ = ("replies", "missing", "deferred")

    def __init__(self, size: int) -> None:
        self.replies: list[Reply | None] = [None] * size
        self.missing = size
        self.deferred: Deferred[list[Reply]] = Deferred()


class _Pending:
    """A reply we wait for, and the (redacted) command it answers."""

    __slots__ = ("command", "deferred", "group", "index")

    def __init__(
        self, command: str | None, deferred: Deferred[Reply] | None, group: _Group | None = None, index: int = 0
    ) -> None:
        self.command = command
        self.deferred = deferred
        self.group = group
        self.index = index

    def answer(self, reply: Reply) -> None:
        group = self.group
        if group is None:
            assert self.deferred is not None
            self.deferred.callback(reply)
            return
        if group.deferred.called:
            # The group failed already (the connection ended after this
            # reply was read, in the same read).
            return
        group.replies[self.index] = reply
        group.missing -= 1
        if group.missing == 0:
            group.deferred.callback(group.replies)  # type: ignore[arg-type]

    def fail(self, error: SMTPConnectionError) -> None:
        group = self.group
        if group is None:
            assert self.deferred is not None
            self.deferred.errback(error)
        elif not group.deferred.called:
            group.deferred.errback(error)


@implementer(IHandshakeListener, IConsumer)
class SMTPClientProtocol(LineReceiver):
    """
    One SMTP (or LMTP) client connection on the wire.

    It is also the :class:`~twisted.internet.interfaces.IConsumer` the message
    body is written to, so that the body's writes count as activity.

    :ivar failure: the error that ended the connection, once it is over.
    :ivar is_open: whether the transport is connected.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    def __init__(
        self,
        *,
        clock: IReactorTime,
        wire_log: WireLog,
        greeting_timeout: float,
        socket_timeout: float,
        connection_timeout: float = 120.0,
        tls_first: bool = False,
    ) -> None:
        self._clock = clock
        self._wire_log = wire_log
        self._socket_timeout = socket_timeout
        self._greeting_timeout = greeting_timeout
        self._connection_timeout = connection_timeout
        self._tls_first = tls_first
        self._parser = ReplyParser()
        self._waiters: deque[_Pending] = deque()
        # Replies parsed from the current read, handed on once it is parsed.
        self._batch: list[tuple[_Pending, Reply]] | None = None
        self._closing_expected = False
        self._lost_waiters: list[Deferred[None]] = []
        self._handshake_waiters: list[Deferred[None]] = []
        self._starttls_pending = False
        self._handshakes = 0
        # The clock: see "time" below.
        self._timer: IDelayedCall | None = None
        self._phase = "greeting"
        self._since = 0.0
        self._acked: int | None = None
        self._queued = 0
        self._partial = False
        self.failure: SMTPConnectionError | None = None
        self._greeting: Deferred[Reply] = Deferred()
        self._made = False
        self.is_open = False
        #: Called with the error when the connection fails while no command
        #: was waiting for a reply (an idle failure), for the "error" event.
        self.on_idle_failure: Callable[[SMTPConnectionError], None] | None = None
        #: Called once when the transport is gone.
        self.on_lost: Callable[[], None] | None = None

    # -- connection lifetime ------------------------------------------------

    def connectionMade(self) -> None:
        self.is_open = True
        self._made = True
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Without it every command waits on the peer's delayed ACK (~40 ms).
            try:
                set_no_delay(True)
            except OSError:
                pass
        if self._tls_first:
            self._start_clock("handshake", self._connection_timeout)
        else:
            self._start_clock("greeting", self._greeting_timeout)
        # Wait for the greeting from the first moment, so that it can never
        # arrive before anybody listens for it.
        self._greeting = self.expect_reply()

    def connectionLost(self, reason: Failure = neterror.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.is_open = False
        self._stop_clock()
        if self.failure is None:
            if self._closing_expected:
                # Still fail the waiters: a server may close without
                # answering QUIT, and quit() must not wait for that answer.
                self._record_failure(ConnectionFailedError("connection closed"))
            else:
                self._record_failure(_describe_loss(reason))
        else:
            self._fail_waiters(self.failure)
        # The owner learns first, so that whoever waits for the loss sees
        # the connection already closed ("end" fired, secure False).
        if self.on_lost is not None:
            self.on_lost()
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    def wait_greeting(self) -> Deferred[Reply]:
        """The greeting, awaited since the connection was made."""
        return self._greeting

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires when the transport is gone (at once if it is)."""
        d: Deferred[None] = Deferred()
        if self.is_open or not self._made:
            self._lost_waiters.append(d)
        else:
            d.callback(None)
        return d

    def expect_close(self) -> None:
        """We are about to close on purpose: the loss is not an error."""
        self._closing_expected = True

    def abort(self, error: SMTPConnectionError) -> None:
        """
        Fail the connection with ``error`` and drop it at once.

        Every waiting command fails with ``error``; nothing received later is
        read, so a late reply can never pair with another command.
        """
        self._record_failure(error)
        if self.transport is not None and self.is_open:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- time ------------------------------------------------------------------------
    #
    # One timer per connection, moved lazily: ``_since`` is when the thing
    # being waited for became due, updated with a float assignment on the
    # hot path; the timer, when it fires early, re-arms itself for the real
    # deadline.  Phases: "handshake" (implicit TLS), "greeting", "open".

    def _start_clock(self, phase: str, period: float) -> None:
        self._stop_clock()
        self._phase = phase
        self._since = self._clock.seconds()
        self._timer = self._clock.callLater(period, self._tick)

    def _stop_clock(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _tick(self) -> None:
        self._timer = None
        if self.failure is not None:
            return
        now = self._clock.seconds()
        if self._phase == "open":
            due = self._since + self._socket_timeout
            if now < due:
                self._timer = self._clock.callLater(due - now, self._tick)
                return
            state = _delivery_state(self.transport)
            acked, queued = (None, 0) if state is None else state
            moving = queued > 0 or self._queued > 0
            progress = moving and acked is not None and self._acked is not None and acked > self._acked
            self._acked, self._queued = acked, queued
            if progress:
                # The peer is still taking what we wrote (bytes were on their
                # way at the last look or are now, and it acknowledged more
                # since): what we wait for is not due before it has them all.
                self._since = now
                self._timer = self._clock.callLater(self._socket_timeout, self._tick)
                return
        self.abort(self._timeout_error())

    def _timeout_error(self) -> SMTPTimeoutError:
        if self._phase == "handshake":
            return SMTPTimeoutError(f"the TLS handshake did not complete within {self._connection_timeout:g} s")
        if self._phase == "greeting":
            return SMTPTimeoutError(f"no greeting from the server within {self._greeting_timeout:g} s")
        seconds = f"{self._socket_timeout:g} s"
        if not self._waiters:
            return SMTPTimeoutError(f"no activity on the connection for {seconds}")
        command = self._waiters[0].command
        if self._partial:
            return SMTPTimeoutError(f"the server's reply was not complete within {seconds}", command=command)
        return SMTPTimeoutError(f"no reply from the server within {seconds}", command=command)

    def _due_now(self) -> None:
        """Something new is awaited (or was written) from now on."""
        self._since = self._clock.seconds()

    # -- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.failure is not None:
            return
        batch: list[tuple[_Pending, Reply]] = []
        self._batch = batch
        try:
            super().dataReceived(data)  # type: ignore[no-untyped-call]
        finally:
            self._batch = None
        self._partial = self._parser.in_progress or bool(self._buffer)
        # A failure later in the same read (a 421, a reply nobody waited for)
        # takes the replies before it along: an operation must not end as if
        # all were well on a connection already known to be out of step.
        failure = self._failure_after_read()
        for pending, reply in batch:
            if failure is None:
                pending.answer(reply)
            else:
                pending.fail(failure)

    def _failure_after_read(self) -> SMTPConnectionError | None:
        # A method, not the attribute: the lines just read may have set it.
        return self.failure

    def lineReceived(self, line: bytes) -> None:
        if self.failure is not None:
            return
        if self._wire_log.enabled:
            self._wire_log.received(line.rstrip(b"\r"))
        try:
            reply = self._parser.feed_line(line)
        except ProtocolError as error:
            self.abort(error)
            return
        if reply is not None:
            self._reply_received(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.abort(ProtocolError(f"the server sent a line longer than {self.MAX_LENGTH} bytes"))

    def _reply_received(self, reply: Reply) -> None:
        pending = self._waiters.popleft() if self._waiters else None
        command = None if pending is None else pending.command
        if reply.code == _CLOSING:
            if pending is not None:
                self._waiters.appendleft(pending)
            self.abort(
                ConnectionFailedError.from_reply("the server is closing the connection", reply, command)
            )
            return
        if pending is None:
            self.abort(ProtocolError.from_reply("the server sent a reply that answers no command", reply))
            return
        if self._starttls_pending:
            self._starttls_pending = False
            if reply.code == 220 and self._buffer:
                # Bytes that followed the 220 in cleartext were injected by
                # somebody on the path (CVE-2011-0411 style); reading them as
                # replies after the upgrade would trust the attacker.
                self._waiters.appendleft(pending)
                self.abort(
                    TLSError.from_reply(
                        "the server sent data after its 220 reply to STARTTLS and before the "
                        "TLS handshake (response injection); refusing to continue",
                        reply,
                        "STARTTLS",
                    )
                )
                return
        if self._phase == "open":
            # The next reply is due from now (RFC 5321 4.5.3.2 times each
            # reply, not the bytes in between).
            self._since = self._clock.seconds()
        if self._batch is not None:
            self._batch.append((pending, reply))
        else:
            pending.answer(reply)

    # -- sending --------------------------------------------------------------

    def expect_reply(self, command: str | None = None) -> Deferred[Reply]:
        """
        Wait for the next reply without sending anything (the greeting, the
        further per-recipient replies of LMTP, a BDAT chunk's reply).
        """
        d: Deferred[Reply] = Deferred()
        if self.failure is not None:
            d.errback(self.failure)
        else:
            self._waiters.append(_Pending(command, d))
        return d

    def expect_replies(self, commands: Sequence[str | None]) -> Deferred[list[Reply]]:
        """Wait for one reply per entry of ``commands``; fires once all are in."""
        group = _Group(len(commands))
        if self.failure is not None:
            group.deferred.errback(self.failure)
        elif not commands:
            group.deferred.callback([])
        else:
            self._waiters.extend(_Pending(command, None, group, index) for index, command in enumerate(commands))
        return group.deferred

    def send_command(self, line: bytes, *, log_as: str | None = None) -> Deferred[Reply]:
        """
        Send one command line and return a Deferred for its reply.

        :param line: the command without CRLF; it must not contain CR or LF
            (the renderers guarantee it; this is checked again here as the
            last line of defence against command injection).
        :param log_as: the text to log and to report in errors instead of
            ``line`` (credentials redacted); default: ``line`` decoded.
        """
        _check_line(line)
        text = log_as if log_as is not None else line.decode("utf-8", "replace")
        d = self.expect_reply(text)
        if self.failure is None:
            self._write_lines([line], [text])
        return d

    def send_commands(self, lines: Sequence[bytes]) -> Deferred[list[Reply]]:
        """
        Send several commands in one write (RFC 2920 PIPELINING) and return
        one Deferred for all their replies, which fires once every one is in
        (or fails with the connection).
        """
        for line in lines:
            _check_line(line)
        texts = [line.decode("utf-8", "replace") for line in lines]
        d = self.expect_replies(texts)
        if self.failure is None:
            self._write_lines(lines, texts)
        return d

    def send_pipelined(self, lines: Sequence[bytes]) -> list[Deferred[Reply]]:
        """
        Send several commands in one write (RFC 2920 PIPELINING) and return
        one Deferred per command, each fired as its reply arrives (for a
        caller that acts on the first replies before the last are in).
        """
        for line in lines:
            _check_line(line)
        texts = [line.decode("utf-8", "replace") for line in lines]
        waiters = [self.expect_reply(text) for text in texts]
        if self.failure is None:
            self._write_lines(lines, texts)
        return waiters

    def _write_lines(self, lines: Sequence[bytes], texts: Sequence[str]) -> None:
        if self._wire_log.enabled:
            for text in texts:
                self._wire_log.sent(text)
        if len(self._waiters) == len(lines):
            # Nothing was awaited before: the first of these replies is
            # due from now.  (Otherwise the earliest awaited reply keeps
            # its own deadline.)
            self._since = self._clock.seconds()
        self.transport.write(b"\r\n".join(lines) + b"\r\n" if len(lines) > 1 else lines[0] + b"\r\n")  # type: ignore[union-attr]

    def write_command_line(self, line: bytes) -> None:
        """Write a command whose reply is already awaited (``BDAT n``)."""
        _check_line(line)
        if self.failure is not None:
            return
        if self._wire_log.enabled:
            self._wire_log.sent(line.decode("ascii", "replace"))
        self._since = self._clock.seconds()
        self.transport.write(line + b"\r\n")  # type: ignore[union-attr]

    def send_starttls(self) -> Deferred[Reply]:
        """
        Send STARTTLS.  If the server answers 220 with anything after it in
        the same read, the connection fails with ``ETLS`` and those bytes are
        never read as replies.
        """
        self._starttls_pending = True
        return self.send_command(b"STARTTLS")

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> Deferred[None]:
        """
        Start the TLS handshake on this transport.

        :returns: a Deferred that fires when the handshake completed, or fails
            (``ETLS``) when it failed or the connection was lost first.
        """
        d: Deferred[None] = Deferred()
        if self.failure is not None:
            d.errback(self.failure)
            return d
        self._handshake_waiters.append(d)
        self.clearLineBuffer()  # type: ignore[no-untyped-call]
        from twisted.internet.tcp import Server

        transport: Any = self.transport
        if isinstance(transport, Server):
            # An adopted socket is a server-side transport in Twisted, and
            # its startTLS would act as the TLS server unless told otherwise.
            transport.startTLS(creator, False)  # type: ignore[no-untyped-call]
        else:
            transport.startTLS(creator)
        return d

    def handshakeCompleted(self) -> None:
        self._handshakes += 1
        if self._phase == "handshake":
            # Implicit TLS: the greeting's time starts now.
            self._start_clock("greeting", self._greeting_timeout)
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.callback(None)

    def greeting_received(self) -> None:
        """The greeting arrived: from now on ``socket_timeout`` applies."""
        if self._phase != "open" and self.failure is None:
            self._start_clock("open", self._socket_timeout)
            state = _delivery_state(self.transport)
            self._acked, self._queued = (None, 0) if state is None else state

    # -- IConsumer: the message body ---------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        """Write message bytes; a write counts as activity."""
        if self.failure is not None:
            return
        self._since = self._clock.seconds()
        self.transport.write(data)  # type: ignore[union-attr]

    # -- failure --------------------------------------------------------------

    def _record_failure(self, error: SMTPConnectionError) -> None:
        if self.failure is not None:
            return
        self.failure = error
        self._stop_clock()
        had_waiters = bool(self._waiters or self._handshake_waiters)
        self._fail_waiters(error)
        if not had_waiters and not self._closing_expected and self.on_idle_failure is not None:
            self.on_idle_failure(error)

    def _fail_waiters(self, error: SMTPConnectionError) -> None:
        waiters, self._waiters = self._waiters, deque()
        for pending in waiters:
            pending.fail(error)
        handshakes, self._handshake_waiters = self._handshake_waiters, []
        for handshake in handshakes:
            handshake.errback(error)


def _check_line(line: bytes) -> None:
    for byte in _UNSAFE:
        if byte in line:
            raise ProtocolError("refusing to send a command line containing CR, LF or NUL")
