"""
The wire: a :class:`~twisted.protocols.basic.LineReceiver` that turns server
lines into :class:`~twisted_smtpconn._reply.Reply` objects and hands each one
to the Deferred of the command it answers.

This layer knows nothing of the SMTP dialogue (that is
:mod:`twisted_smtpconn._dialogue`'s linear ``async def``); it only guarantees
that replies pair with commands in order, that no reply is ever paired with
a command after a timeout or failure (the connection is closed instead), and
that every waiter learns of a failure exactly once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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


def _describe_loss(reason: Failure) -> SMTPConnectionError:
    """
    Map the reason a transport closed to the contract's error.

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


@implementer(IHandshakeListener)
class SMTPClientProtocol(LineReceiver):
    """
    One SMTP (or LMTP) client connection on the wire.

    :ivar failure: the error that ended the connection, once it is over.
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
    ) -> None:
        self._clock = clock
        self._wire_log = wire_log
        self._socket_timeout = socket_timeout
        self._greeting_timeout = greeting_timeout
        self._parser = ReplyParser()
        self._waiters: deque[Deferred[Reply]] = deque()
        self._timer: IDelayedCall | None = None
        self._timeout = greeting_timeout
        self._closing_expected = False
        self._greeting_done = False
        self._lost_waiters: list[Deferred[None]] = []
        self._handshake_waiters: list[Deferred[None]] = []
        self._starttls_pending = False
        self.failure: SMTPConnectionError | None = None
        self._greeting: Deferred[Reply] = Deferred()
        self.connected_at: float | None = None
        self.is_open = False
        #: Called with the error when the connection fails while no command
        #: was waiting for a reply (an idle failure), for the "error" event.
        self.on_idle_failure: Callable[[SMTPConnectionError], None] | None = None
        #: Called once when the transport is gone.
        self.on_lost: Callable[[], None] | None = None

    # -- connection lifetime ------------------------------------------------

    def connectionMade(self) -> None:
        self.is_open = True
        self.connected_at = self._clock.seconds()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Without it every command waits on the peer's delayed ACK (~40 ms).
            try:
                set_no_delay(True)
            except OSError:
                pass
        self._arm_timer(self._greeting_timeout)
        # Wait for the greeting from the first moment, so that it can never
        # arrive before anybody listens for it.
        self._greeting = self.expect_reply()

    def connectionLost(self, reason: Failure = neterror.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.is_open = False
        self._cancel_timer()
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
        if self.is_open or self.connected_at is None:
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

    # -- inactivity timer ------------------------------------------------------

    def _arm_timer(self, period: float) -> None:
        self._timeout = period
        self._cancel_timer()
        self._timer = self._clock.callLater(period, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _touch(self) -> None:
        """
        Activity on the socket: restart the inactivity countdown.

        Not before the greeting: ``greeting_timeout`` is a deadline from the
        connect (API.md), or a server trickling one byte at a time could
        hold the client for as long as it likes.
        """
        if self._greeting_done and self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._greeting_done:
            error = SMTPTimeoutError(f"no greeting from the server within {self._greeting_timeout:g} s")
        else:
            error = SMTPTimeoutError(f"no activity on the connection for {self._socket_timeout:g} s")
        self.abort(error)

    def greeting_received(self) -> None:
        """The greeting arrived: from now on the inactivity timeout applies."""
        self._greeting_done = True
        self._arm_timer(self._socket_timeout)

    # -- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.failure is not None:
            return
        self._touch()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        if self.failure is not None:
            return
        if self._wire_log.enabled:
            self._wire_log.received(line.rstrip(b"\r").decode("utf-8", "replace"))
        try:
            reply = self._parser.feed_line(line)
        except ProtocolError as error:
            self.abort(error)
            return
        if reply is not None:
            self._deliver(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.abort(
            ProtocolError(f"the server sent a line longer than {self.MAX_LENGTH} bytes")
        )

    def _deliver(self, reply: Reply) -> None:
        if self._starttls_pending:
            self._starttls_pending = False
            if reply.code == 220 and self._buffer:
                # Bytes that followed the 220 in cleartext were injected by
                # somebody on the path (CVE-2011-0411 style); reading them as
                # replies after the upgrade would trust the attacker.
                self.abort(
                    TLSError(
                        "the server sent data after its 220 reply to STARTTLS and before the "
                        "TLS handshake (response injection); refusing to continue",
                        response=str(reply),
                        response_code=reply.code,
                        command="STARTTLS",
                    )
                )
                return
        if self._waiters:
            self._waiters.popleft().callback(reply)
            return
        if reply.code == 421:
            error: SMTPConnectionError = ConnectionFailedError(
                "the server is closing the connection",
                response=str(reply),
                response_code=reply.code,
                enhanced_status=reply.enhanced_status,
            )
        else:
            error = ProtocolError(
                "the server sent a reply that answers no command",
                response=str(reply),
                response_code=reply.code,
                enhanced_status=reply.enhanced_status,
            )
        self.abort(error)

    # -- sending --------------------------------------------------------------

    def expect_reply(self) -> Deferred[Reply]:
        """
        Wait for the next reply without sending anything (the greeting, or
        the further per-recipient replies of LMTP).
        """
        d: Deferred[Reply] = Deferred()
        if self.failure is not None:
            d.errback(self.failure)
        else:
            self._waiters.append(d)
        return d

    def send_command(self, line: bytes, *, log_as: str | None = None) -> Deferred[Reply]:
        """
        Send one command line and return a Deferred for its reply.

        :param line: the command without CRLF; it must not contain CR or LF
            (the renderers guarantee it; this is checked again here as the
            last line of defence against command injection).
        :param log_as: the text to log instead of ``line`` (credentials
            redacted); default: ``line`` decoded.
        """
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise ProtocolError("refusing to send a command line containing CR, LF or NUL")
        d = self.expect_reply()
        if self.failure is None:
            self.write_lines([line], [log_as])
        return d

    def send_commands(self, lines: list[bytes]) -> list[Deferred[Reply]]:
        """
        Send several commands in one write (RFC 2920 PIPELINING) and return
        one Deferred per command, fired in order as the replies arrive.
        """
        for line in lines:
            if b"\r" in line or b"\n" in line or b"\x00" in line:
                raise ProtocolError("refusing to send a command line containing CR, LF or NUL")
        waiters = [self.expect_reply() for _ in lines]
        if self.failure is None:
            self.write_lines(lines, [None] * len(lines))
        return waiters

    def write_lines(self, lines: list[bytes], log_as: list[str | None]) -> None:
        """Write several command lines in one segment (PIPELINING)."""
        if self._wire_log.enabled:
            for line, text in zip(lines, log_as):
                self._wire_log.sent(text if text is not None else line.decode("utf-8", "replace"))
        self._touch()
        self.transport.write(b"\r\n".join(lines) + b"\r\n")  # type: ignore[union-attr]

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
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.callback(None)

    def consumer(self) -> IConsumer:
        """The transport as a consumer whose writes count as activity."""
        return _ActiveConsumer(self)

    @property
    def waiting(self) -> int:
        """How many replies are awaited."""
        return len(self._waiters)

    # -- failure --------------------------------------------------------------

    def _record_failure(self, error: SMTPConnectionError) -> None:
        if self.failure is not None:
            return
        self.failure = error
        self._cancel_timer()
        had_waiters = bool(self._waiters or self._handshake_waiters)
        self._fail_waiters(error)
        if not had_waiters and not self._closing_expected and self.on_idle_failure is not None:
            self.on_idle_failure(error)

    def _fail_waiters(self, error: SMTPConnectionError) -> None:
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(error)
        handshakes, self._handshake_waiters = self._handshake_waiters, []
        for handshake in handshakes:
            handshake.errback(error)


@implementer(IConsumer)
class _ActiveConsumer:
    """Forwards to the transport and restarts the inactivity timer on every write."""

    def __init__(self, protocol: SMTPClientProtocol) -> None:
        self._protocol = protocol

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._protocol.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self._protocol.transport.unregisterProducer()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if self._protocol.failure is not None:
            return
        self._protocol._touch()
        self._protocol.transport.write(data)  # type: ignore[union-attr]
