# -*- test-case-name: tests.test_wire, tests.test_interop, tests.test_reliability, tests.test_lifecycle_model -*-
"""
:class:`SMTPConnection`: the public façade over one SMTP/LMTP connection.

It holds the lifecycle (:mod:`._lifecycle`), runs operations through the
operation queue (:mod:`._queue`) and turns the end of the connection into the
``"error"`` and ``"end"`` events; the dialogue itself is in the layers below
(:mod:`._session` opens, :mod:`._delivery` sends, :mod:`._auth` logs in).

Two rules keep the state honest:

- An operation that ends with an error which closes the connection fails
  only once the transport is gone, so whoever sees the error sees the state
  ``CLOSED`` too (and the ``"end"`` event already fired).
- An operation that was waiting its turn behind a failure does not reuse
  that failure: it fails with an error of its own, ``ECONNECTION``,
  transient (it was never attempted, so trying it again elsewhere is safe).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._auth import Auth, authenticate, coerce_auth
from ._delivery import run_probe, run_transaction
from ._ehlo import ServerInfo
from ._email import headers_envelope
from ._envelope import Envelope, coerce_envelope
from ._errors import ConnectionFailedError, ProtocolError, SMTPConnectionError
from ._events import EventEmitter
from ._factory import SMTPClientFactory, open_protocol
from ._lifecycle import Lifecycle, State
from ._logging import WireLog, connection_label, make_logger
from ._options import ConnectionOptions, default_reactor, validate_options
from ._protocol import SMTPClientProtocol
from ._queue import OperationQueue, Ticket
from ._sendinfo import SendInfo
from ._session import open_session, reset_session
from ._source import check_message
from ._tls import TLSPolicy

__all__ = ["SMTPConnection"]

_T = TypeVar("_T")

#: How long quit() waits for the transport to go after QUIT was answered
#: before dropping it (a TLS peer that never sends close_notify).
_QUIT_GRACE = 5.0


class SMTPConnection:
    """
    A client connection to one SMTP or LMTP server.

    Create it with its options, then ``await conn.connect()``; ``login``,
    ``send`` and ``reset`` may follow in any number, and ``quit`` ends the
    session.  Every method that waits returns a
    :class:`~twisted.internet.defer.Deferred`.

    :ivar secure: whether the transport is TLS now.
    :ivar greeting: the server's 220 greeting text.
    :ivar authenticated: whether ``login()`` succeeded on this connection.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int | None = None,
        *,
        secure: bool = False,
        ignore_tls: bool = False,
        require_tls: bool = False,
        opportunistic_tls: bool = False,
        name: str | None = None,
        local_address: str | None = None,
        connection_timeout: float = 120.0,
        greeting_timeout: float = 30.0,
        socket_timeout: float = 600.0,
        logger: Logger | bool | None = None,
        debug: bool = False,
        auth_method: str | None = None,
        allow_insecure_auth: bool = False,
        tls: Mapping[str, Any] | Any | None = None,
        endpoint: Any = None,
        connection: socket.socket | None = None,
        lmtp: bool = False,
        reactor: Any = None,
        prefer_data: bool = False,
        proxy: str | None = None,
    ) -> None:
        self._options: ConnectionOptions = validate_options(
            host=host,
            port=port,
            secure=secure,
            ignore_tls=ignore_tls,
            require_tls=require_tls,
            opportunistic_tls=opportunistic_tls,
            name=name,
            local_address=local_address,
            connection_timeout=connection_timeout,
            greeting_timeout=greeting_timeout,
            socket_timeout=socket_timeout,
            debug=debug,
            auth_method=auth_method,
            allow_insecure_auth=allow_insecure_auth,
            tls=tls,
            endpoint=endpoint,
            connection=connection,
            lmtp=lmtp,
            prefer_data=prefer_data,
            proxy=proxy,
        )
        reactor = default_reactor(reactor)
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._log = make_logger(logger)
        self._label = connection_label(self._options.host, self._options.port)
        self._wire_log = WireLog(self._log, self._options.debug, self._label)
        self._events = EventEmitter(self._log)
        self._lifecycle = Lifecycle()
        self._queue = OperationQueue()
        self._protocol: SMTPClientProtocol | None = None
        self._connecting: Deferred[SMTPClientProtocol] | None = None
        self._server = ServerInfo()
        self._tls = TLSPolicy(self._options, self._log)
        self._closed_waiters: list[Deferred[None]] = []
        #: What ended the connection: a failure, or close() (``_closed_by``).
        self._error: SMTPConnectionError | None = None
        self._closed_by: SMTPConnectionError | None = None
        self.secure = False
        self.greeting = ""
        self.authenticated = False

    def __repr__(self) -> str:
        return (
            f"<SMTPConnection {self._label} "
            f"{self._lifecycle.state.value}{' secure' if self.secure else ''}>"
        )

    # -- what the server said ----------------------------------------------------

    @property
    def extensions(self) -> dict[str, str]:
        """Upper-cased EHLO keyword -> parameter string (empty after HELO)."""
        return dict(self._server.extensions)

    @property
    def auth_methods(self) -> list[str]:
        """SASL mechanisms the server offered, upper-cased, in its order."""
        return list(self._server.auth_methods)

    @property
    def state(self) -> State:
        """Where the connection is in its lifecycle."""
        return self._lifecycle.state

    # -- events ------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., object]) -> None:
        """Register ``callback`` for ``"connect"``, ``"error"`` or ``"end"``."""
        self._events.on(event, callback)

    # -- operations --------------------------------------------------------------

    def connect(self) -> Deferred[SMTPConnection]:
        """
        Connect, read the greeting, say EHLO (HELO or LHLO as needed) and
        upgrade with STARTTLS as the TLS options say.

        :returns: a Deferred firing with this connection.
        """
        try:
            self._lifecycle.require("connect", State.NEW)
        except ProtocolError as error:
            return fail(error)
        self._lifecycle.move(State.CONNECTING)
        return self._run("connect", self._connect)

    def login(self, auth: Auth | Mapping[str, Any]) -> Deferred[None]:
        """Authenticate with ``auth`` (an :class:`Auth` or a mapping of its fields)."""
        try:
            credentials = coerce_auth(auth)
        except (TypeError, ValueError) as error:
            return fail(error)
        return self._run("log in", lambda ticket: self._login(credentials))

    def send(self, envelope: Envelope | Mapping[str, Any], message: object) -> Deferred[SendInfo]:
        """
        Send ``message`` to ``envelope``'s recipients.

        :returns: a Deferred firing with a :class:`SendInfo` once the server
            accepted the message, or failing with an
            :class:`SMTPConnectionError`.
        """
        return self._send_reporting(envelope, message, None)

    def send_message(
        self,
        message: object,
        *,
        mail_from: str | None = None,
        rcpt_to: str | list[str] | None = None,
        **envelope_options: Any,
    ) -> Deferred[SendInfo]:
        """
        Send an ``email.message.Message`` (or a ``str``/``bytes`` message,
        parsed for its headers), its envelope taken from its headers.

        The sender is Sender, else From; the recipients are To, Cc and Bcc
        (the fields of the most recent Resent block when the message was
        resent).  Bcc and Resent-Bcc are never transmitted; the caller's
        object is not modified.

        :param mail_from: the sender, instead of the headers' one.
        :param rcpt_to: the recipients, instead of the headers' ones.
        :param envelope_options: :class:`Envelope`'s other keywords
            (``size``, ``use_8bit_mime``, ``dsn``, ``smtputf8``,
            ``require_tls``).
        :returns: a Deferred firing with a :class:`SendInfo`; failing with
            ``EENVELOPE`` before anything is sent when no sender or
            recipient is found, naming the missing header.
        """
        try:
            envelope, parsed = headers_envelope(
                message, mail_from=mail_from, rcpt_to=rcpt_to, envelope_options=envelope_options
            )
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self.send(envelope, parsed)

    def probe_envelope(self, envelope: Envelope | Mapping[str, Any], *, rcpt: bool = True) -> Deferred[SendInfo]:
        """
        Ask the server what it would say to ``envelope`` without sending a
        message: MAIL FROM, then (with ``rcpt``) each RCPT TO, then RSET.
        The connection stays usable.  For testing a server, as swaks's
        ``--quit-after rcpt`` does; a probe proves nothing about delivery.

        :returns: a Deferred firing with a :class:`SendInfo` whose
            ``accepted``, ``rejected``, ``rejected_errors`` and
            ``recipient_replies`` say how each recipient was answered
            (``message_size`` is 0); failing with ``EENVELOPE`` when the
            sender, or every recipient, was refused.
        """
        try:
            checked = coerce_envelope(envelope)
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self._run("probe", lambda ticket: self._probe(checked, rcpt))

    def reset(self) -> Deferred[None]:
        """RSET: abandon any transaction the server may hold for us."""
        return self._run("reset", self._reset)

    def quit(self) -> Deferred[None]:
        """
        Send QUIT, then close; fires once the transport is gone.

        Never fails because the connection failed: after a failed
        ``connect()``, or on a connection already closed, it fires once the
        connection is gone.
        """
        state = self._lifecycle.state
        if state in (State.CLOSING, State.CLOSED):
            return self.when_closed()
        if state is State.NEW:
            self._finish()
            return succeed(None)
        return self._run("quit", self._quit)

    def close(self) -> None:
        """Drop the connection now, without QUIT; an ongoing connect() fails."""
        state = self._lifecycle.state
        if state is State.CLOSED:
            return
        error = ProtocolError("the connection was closed by close()")
        if self._closed_by is None:
            self._closed_by = error
        self._lifecycle.move(State.CLOSING)
        protocol = self._protocol
        if protocol is not None and protocol.is_open:
            protocol.expect_close()
            protocol.abort(error)
        elif self._connecting is not None:
            # TCP (or the caller's endpoint) is not up yet: abandon it.
            # connect() then fails, and "end" follows.
            self._connecting.cancel()
        else:
            self._finish()

    def when_closed(self) -> Deferred[None]:
        """A new Deferred that fires when the connection is gone."""
        if self._lifecycle.state is State.CLOSED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    # -- for SMTPPool ----------------------------------------------------------------

    def _send_reporting(
        self, envelope: Envelope | Mapping[str, Any], message: object, on_start: Callable[[], None] | None
    ) -> Deferred[SendInfo]:
        """:meth:`send`, calling ``on_start`` just before MAIL is written."""
        try:
            checked = coerce_envelope(envelope)
            check_message(message)
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self._run("send", lambda ticket: self._send(ticket, checked, message, on_start))

    def _accepts_overlap(self) -> bool:
        """Whether a send given now would start alongside the running one."""
        return (
            self._lifecycle.state is State.READY
            and "PIPELINING" in self._server.extensions
            and self._queue.accepts_overlap()
        )

    # -- turns -----------------------------------------------------------------------

    def _run(self, action: str, operation: Callable[[Ticket], Awaitable[_T]]) -> Deferred[_T]:
        """
        Run ``operation`` after every operation called before it.

        The state is checked now (so that a call after close fails at once)
        and again when its turn comes (the connection may have ended
        meanwhile).
        """
        if action != "connect":
            try:
                self._lifecycle.require(action, State.READY, State.CONNECTING)
            except ProtocolError as error:
                return fail(error)
        ticket = self._queue.enter(action)
        return Deferred.fromCoroutine(self._in_turn(ticket, operation))

    async def _in_turn(self, ticket: Ticket, operation: Callable[[Ticket], Awaitable[_T]]) -> _T:
        try:
            if ticket.go is not None:
                await ticket.go
            action = ticket.action
            if action not in ("connect", "quit") and self._lifecycle.state is not State.READY:
                raise self._missed_turn(action)
            try:
                return await operation(ticket)
            except CancelledError:
                await self._fail(ProtocolError(f"{action} was cancelled; the connection is closed"))
                raise
            except SMTPConnectionError as error:
                if error.closes_connection:
                    await self._fail(error)
                raise
        finally:
            self._queue.leave(ticket)

    def _missed_turn(self, action: str) -> SMTPConnectionError:
        """The error of an operation whose turn came after the connection ended."""
        if self._error is None:
            return ProtocolError(f"cannot {action}: the connection is closed")
        error = ConnectionFailedError(
            f"cannot {action}: the connection ended before its turn ({self._error.code}: {self._error.message})"
        )
        error.__cause__ = self._error
        return error

    # -- the steps ---------------------------------------------------------------

    async def _open_transport(self) -> SMTPClientProtocol:
        factory = SMTPClientFactory(clock=self._clock, options=self._options, wire_log=self._wire_log)
        self._connecting = open_protocol(self._reactor, self._options, factory)
        try:
            protocol = await self._connecting
        except SMTPConnectionError:
            if self._closed_by is not None:
                raise self._closed_by from None
            raise
        finally:
            self._connecting = None
        self._protocol = protocol
        protocol.on_idle_failure = self._idle_failure
        protocol.on_lost = self._finish
        return protocol

    async def _connect(self, ticket: Ticket) -> SMTPConnection:
        session = await open_session(self._open_transport, self._options, self._tls, self._reactor)
        if self._lifecycle.state is not State.CONNECTING:
            # close() came as the last reply arrived: no "connect" after "end".
            raise self._closed_by or ProtocolError("the connection was closed while connecting")
        self._server = session.server
        self.greeting = session.greeting
        self.secure = session.secure
        self._lifecycle.move(State.READY)
        self._log.info(
            "connected to {connection} (secure: {secure}, extensions: {extensions})",
            connection=self._label,
            secure=self.secure,
            extensions=" ".join(sorted(self._server.extensions)),
        )
        self._events.emit("connect")
        return self

    async def _login(self, auth: Auth) -> None:
        assert self._protocol is not None
        await authenticate(
            self._protocol,
            auth,
            server=self._server,
            options=self._options,
            secure=self.secure,
            already=self.authenticated,
            log=self._log,
        )
        self.authenticated = True
        self._log.info("{connection} authenticated as {user}", connection=self._label, user=auth.display_user)

    async def _send(
        self, ticket: Ticket, envelope: Envelope, message: object, on_start: Callable[[], None] | None
    ) -> SendInfo:
        assert self._protocol is not None
        info = await run_transaction(
            self._protocol,
            self._clock,
            self._server,
            envelope,
            message,
            lmtp=self._options.lmtp,
            prefer_data=self._options.prefer_data,
            tls_verified=self._tls.is_verified(self._protocol),
            on_start=on_start,
            on_written=lambda: self._queue.dot_written(ticket),
        )
        if self._wire_log.enabled:
            # Per message only with debug: the connection's own events say
            # enough for a log kept by default, and an event per message is
            # a measurable share of the CPU a message costs.
            self._log.debug(
                "{connection} message of {size} bytes accepted for {accepted} (rejected: {rejected}): {response}",
                connection=self._label,
                size=info.message_size,
                accepted=info.accepted,
                rejected=info.rejected,
                response=info.response,
            )
        return info

    async def _probe(self, envelope: Envelope, rcpt: bool) -> SendInfo:
        assert self._protocol is not None
        return await run_probe(self._protocol, self._clock, self._server, envelope, rcpt=rcpt)

    async def _reset(self, ticket: Ticket) -> None:
        assert self._protocol is not None
        await reset_session(self._protocol)

    async def _quit(self, ticket: Ticket) -> None:
        protocol = self._protocol
        if self._lifecycle.state is not State.READY or protocol is None:
            # connect() failed, or the connection ended while QUIT waited
            # its turn: nothing to say, only the end to wait for.
            await self.when_closed()
            return
        self._lifecycle.move(State.CLOSING)
        protocol.expect_close()
        lost = protocol.when_lost()
        try:
            await protocol.send_command(b"QUIT")
        except SMTPConnectionError:
            pass  # The server went first: what we wanted anyway.
        if protocol.is_open and protocol.transport is not None:
            protocol.transport.loseConnection()
            grace = self._clock.callLater(_QUIT_GRACE, _abort_quietly, protocol)
            await lost
            if grace.active():
                grace.cancel()
        else:
            await lost

    # -- the end -------------------------------------------------------------------

    def _idle_failure(self, error: SMTPConnectionError) -> None:
        if self._error is None:
            self._error = error
        # The transport is being dropped: say so now, not when its loss is
        # reported, so that a call made in between fails at once.
        self._lifecycle.move(State.CLOSING)
        if not self._queue.busy:
            self._log.error("{connection} connection failed: {error}", connection=self._label, error=str(error))
            self._events.emit("error", error)

    async def _fail(self, error: SMTPConnectionError) -> None:
        """An operation failed in a way that ends the connection: end it, and wait for the end."""
        if self._error is None and self._closed_by is None:
            self._error = error
        protocol = self._protocol
        if protocol is not None and protocol.is_open:
            lost = protocol.when_lost()
            protocol.abort(error)
            await lost
        else:
            self._finish()

    def _finish(self) -> None:
        """The transport is gone (or never came): fire "end" once."""
        protocol = self._protocol
        if protocol is not None and protocol.failure is not None and self._error is None and self._closed_by is None:
            if self._lifecycle.state is not State.CLOSING:
                self._error = protocol.failure
        if not self._lifecycle.move(State.CLOSED):
            return
        self.secure = False
        self._log.info("{connection} closed", connection=self._label)
        self._events.emit("end")
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)


def _abort_quietly(protocol: SMTPClientProtocol) -> None:
    if protocol.is_open and protocol.transport is not None:
        protocol.transport.abortConnection()  # type: ignore[attr-defined]
