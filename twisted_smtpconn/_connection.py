"""
:class:`SMTPConnection`: the public façade over one SMTP/LMTP connection.

It owns the lifecycle (:mod:`._lifecycle`), serialises operations in call
order (a ``send`` issued while another runs waits its turn), turns failures
of the connection into the ``"error"``/``"end"`` events, and delegates the
dialogue itself to linear ``async def`` functions (:mod:`._session`,
:mod:`._transaction`, :mod:`._tls`, :mod:`._auth`).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._auth import Auth, authenticate, coerce_auth
from ._envelope import Envelope, coerce_envelope
from ._errors import (
    ProtocolError,
    SMTPConnectionError,
)
from ._events import EventEmitter
from ._factory import SMTPClientFactory, open_protocol
from ._lifecycle import Lifecycle, State
from ._logging import WireLog, make_logger
from ._options import ConnectionOptions, validate_options
from ._protocol import SMTPClientProtocol
from ._sendinfo import SendInfo
from ._session import ServerInfo, default_client_name, read_greeting, say_hello
from ._source import check_message
from ._tls import TLSPolicy
from ._transaction import reset_session, run_transaction

__all__ = ["SMTPConnection"]

_T = TypeVar("_T")

class _Turn:
    """
    One operation's hold on the queue.  Released exactly once: when the
    operation ends, or earlier when a send hands the wire over to the next
    queued send (see :meth:`SMTPConnection._hand_over`).
    """

    __slots__ = ("_queue", "released", "dot_written")

    def __init__(self, queue: DeferredLock) -> None:
        self._queue = queue
        self.released = False
        #: The send holding this turn has written its final dot and waits
        #: only for the server's final reply.
        self.dot_written = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._queue.release()


class _Waiter:
    """An operation waiting for its turn (compared by identity)."""

    __slots__ = ("action",)

    def __init__(self, action: str) -> None:
        self.action = action


#: How long quit() waits for the transport to go after QUIT was answered
#: before dropping it (a TLS peer that never sends close_notify).
_QUIT_GRACE = 5.0


class SMTPConnection:
    """
    A client connection to one SMTP or LMTP server.

    Create it with the options of API.md, then ``await conn.connect()``;
    ``login``, ``send`` and ``reset`` may follow in any number, and ``quit``
    ends the session.  Every method that waits returns a
    :class:`~twisted.internet.defer.Deferred`.

    :ivar secure: whether the transport is TLS now.
    :ivar extensions: upper-cased EHLO keyword -> its parameter string.
    :ivar auth_methods: the SASL mechanisms the server offered.
    :ivar greeting: the server's 220 greeting text.
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
        )
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._log = make_logger(logger)
        self._wire_log = WireLog(self._log, self._options.debug)
        self._events = EventEmitter(self._log)
        self._lifecycle = Lifecycle()
        self._queue = DeferredLock()
        # The operations waiting for the queue, in the order the lock will
        # serve them, and the turn of the one running.
        self._waiting: deque[_Waiter] = deque()
        self._turn = _Turn(self._queue)
        self._busy = 0
        self._protocol: SMTPClientProtocol | None = None
        self._server = ServerInfo()
        self._tls = TLSPolicy(self._options, self._log)
        self._closed_waiters: list[Deferred[None]] = []
        self._error: SMTPConnectionError | None = None
        self.secure = False
        self.greeting = ""
        self.authenticated = False

    def __repr__(self) -> str:
        return (
            f"<SMTPConnection {self._options.host}:{self._options.port} "
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
        return self._queued(self._connect, "connect", State.CONNECTING)

    def login(self, auth: Auth | Mapping[str, Any]) -> Deferred[None]:
        """Authenticate with ``auth`` (an :class:`Auth` or the seed's mapping)."""
        try:
            credentials = coerce_auth(auth)
        except (TypeError, ValueError) as error:
            return fail(error)
        return self._queued(lambda: self._login(credentials), "log in", State.READY)

    def send(self, envelope: Envelope | Mapping[str, Any], message: object) -> Deferred[SendInfo]:
        """
        Send ``message`` to ``envelope``'s recipients.

        :returns: a Deferred firing with a :class:`SendInfo` once the server
            accepted the message, or failing with an
            :class:`SMTPConnectionError`.
        """
        try:
            checked = coerce_envelope(envelope)
            check_message(message)
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self._queued(lambda: self._send(checked, message), "send", State.READY)

    def reset(self) -> Deferred[None]:
        """RSET: abandon any transaction the server may hold for us."""
        return self._queued(self._reset, "reset", State.READY)

    def quit(self) -> Deferred[None]:
        """Send QUIT, then close; fires once the transport is gone."""
        if self._lifecycle.state in (State.CLOSING, State.CLOSED):
            return self.when_closed()
        if self._lifecycle.state is State.NEW:
            self._finish()
            return succeed(None)
        return self._queued(self._quit, "quit", State.READY)

    def close(self) -> None:
        """Drop the connection now, without QUIT."""
        if self._lifecycle.state is State.CLOSED:
            return
        if self._protocol is not None and self._protocol.is_open:
            self._lifecycle.move(State.CLOSING)
            self._protocol.expect_close()
            self._protocol.abort(ProtocolError("the connection was closed by close()"))
        else:
            self._finish()

    def when_closed(self) -> Deferred[None]:
        """A new Deferred that fires when the connection is gone."""
        if self._lifecycle.state is State.CLOSED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    # -- the queue -----------------------------------------------------------------

    def _queued(
        self, operation: Callable[[], Awaitable[_T]], action: str, *allowed: State
    ) -> Deferred[_T]:
        """
        Run ``operation`` after every operation called before it.

        The state is checked both now (so a call after close fails at once)
        and when its turn comes (the connection may have failed meanwhile: then
        the connection's own error is reported).
        """
        try:
            self._lifecycle.require(action, *allowed, State.CONNECTING)
        except ProtocolError as error:
            return fail(error)
        return Deferred.fromCoroutine(self._run_in_turn(operation, action, allowed))

    async def _run_in_turn(
        self, operation: Callable[[], Awaitable[_T]], action: str, allowed: tuple[State, ...]
    ) -> _T:
        self._busy += 1
        waiter = _Waiter(action)
        self._waiting.append(waiter)
        try:
            try:
                acquired = self._queue.acquire()
                running = self._turn
                if action == "send" and running.dot_written and self._waiting[0] is waiter:
                    # The running send only awaits its final reply: go now
                    # (see _hand_over), even though we came after its dot.
                    running.release()
                await acquired
            finally:
                self._waiting.remove(waiter)
            turn = self._turn = _Turn(self._queue)
            try:
                if self._lifecycle.state not in allowed and self._error is not None:
                    raise self._error
                self._lifecycle.require(action, *allowed)
                try:
                    return await operation()
                except CancelledError:
                    self._fail(ProtocolError(f"{action} was cancelled; the connection is closed"))
                    raise
                except SMTPConnectionError as error:
                    if error.closes_connection:
                        self._fail(error)
                    raise
            finally:
                turn.release()
        finally:
            self._busy -= 1

    # -- the steps ---------------------------------------------------------------

    def _require_protocol(self) -> SMTPClientProtocol:
        if self._protocol is None:
            raise ProtocolError("not connected")
        return self._protocol

    async def _connect(self) -> SMTPConnection:
        try:
            protocol = await self._open_session()
        except SMTPConnectionError as error:
            if not self._tls.may_retry_in_cleartext(error):
                raise
            # opportunistic_tls: the handshake failed and took the
            # connection with it; open a new one and stay in cleartext.
            self._abandon_protocol(error)
            self._tls.retry_in_cleartext(error)
            protocol = await self._open_session()
        self.secure = self._tls.is_secure(protocol)
        self._lifecycle.move(State.READY)
        self._log.info(
            "connected to {host}:{port} (secure: {secure}, extensions: {extensions})",
            host=self._options.host,
            port=self._options.port,
            secure=self.secure,
            extensions=sorted(self._server.extensions),
        )
        self._events.emit("connect")
        return self

    async def _open_session(self) -> SMTPClientProtocol:
        """
        Open a transport and run the session's opening: implicit TLS,
        greeting, hello, STARTTLS and the hello again.

        ``secure`` and the server's hello info are reset first, so that a
        second session (the cleartext retry) never inherits the first's.
        """
        self.secure = False
        self._server = ServerInfo()
        factory = SMTPClientFactory(clock=self._clock, options=self._options, wire_log=self._wire_log)
        try:
            protocol = await open_protocol(
                self._reactor, self._options, factory, wrap_endpoint=self._tls.implicit_wrapper()
            )
        except SMTPConnectionError as error:
            self._error = error
            self._finish()
            raise
        self._attach(protocol)
        await self._start_implicit_tls(protocol)
        self.secure = self._tls.is_secure(protocol)
        try:
            greeting = await read_greeting(protocol)
        except SMTPConnectionError as error:
            raise self._tls.after_handshake(protocol, error) from None
        self.greeting = greeting.text
        name = self._options.name or await default_client_name(self._reactor, protocol)
        self._server = await say_hello(protocol, name, lmtp=self._options.lmtp)
        upgraded = await self._tls.negotiate(
            protocol, self._server, lambda: say_hello(protocol, name, lmtp=self._options.lmtp)
        )
        if upgraded is not None:
            # Replaced, never merged: nothing said in cleartext survives TLS.
            self._server = upgraded
        self.secure = self._tls.is_secure(protocol)
        return protocol

    async def _start_implicit_tls(self, protocol: SMTPClientProtocol) -> None:
        """
        ``secure=True``: the handshake, within ``connection_timeout`` (API.md:
        the connection timeout covers TCP and implicit TLS).
        """
        if not self._options.secure:
            return
        from twisted.internet.defer import TimeoutError as DeferredTimeout

        from ._errors import SMTPTimeoutError

        handshake = Deferred.fromCoroutine(self._tls.start_implicit(protocol))
        handshake.addTimeout(self._options.connection_timeout, self._clock)
        try:
            await handshake
        except DeferredTimeout:
            error = SMTPTimeoutError(
                f"the TLS handshake with {self._options.host}:{self._options.port} did not complete "
                f"within {self._options.connection_timeout:g} s"
            )
            protocol.abort(error)
            raise error from None
        finally:
            if protocol.failure is not None:
                # The greeting will never come; it is awaited since
                # connectionMade, so consume its failure here.
                protocol.wait_greeting().addErrback(lambda _: None)

    def _abandon_protocol(self, error: SMTPConnectionError) -> None:
        """Let go of a failed transport without ending the connection's life."""
        old = self._protocol
        if old is None:
            return
        old.on_lost = None
        old.on_idle_failure = None
        if old.is_open:
            old.expect_close()
            old.abort(error)

    async def _login(self, auth: Auth) -> None:
        protocol = self._require_protocol()
        await authenticate(
            protocol,
            auth,
            server=self._server,
            options=self._options,
            secure=self.secure,
            already=self.authenticated,
            log=self._log,
        )
        self.authenticated = True
        self._log.info("authenticated as {user}", user=auth.display_user)

    async def _send(self, envelope: Envelope, message: object) -> SendInfo:
        protocol = self._require_protocol()
        turn = self._turn
        info = await run_transaction(
            protocol,
            self._clock,
            self._server.extensions,
            envelope,
            message,
            lmtp=self._options.lmtp,
            prefer_data=self._options.prefer_data,
            on_message_sent=lambda: self._hand_over(turn),
        )
        self._log.info(
            "message of {size} bytes accepted for {accepted} (rejected: {rejected}): {response}",
            size=info.message_size,
            accepted=info.accepted,
            rejected=info.rejected,
            response=info.response,
        )
        return info

    def _hand_over(self, turn: _Turn) -> None:
        """
        A send's final dot is written and only the server's final reply is
        awaited (with PIPELINING): if the next queued operation is a send,
        let it start now, so its MAIL, RCPT and DATA follow the dot without
        a round trip (RFC 2920).  Only a send: run_transaction explains why
        that is safe, and nothing else (QUIT, RSET, AUTH) gains from it.
        """
        turn.dot_written = True
        if self._waiting and self._waiting[0].action == "send":
            turn.release()

    async def _reset(self) -> None:
        await reset_session(self._require_protocol())

    async def _quit(self) -> None:
        protocol = self._require_protocol()
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

    def _attach(self, protocol: SMTPClientProtocol) -> None:
        self._protocol = protocol
        protocol.on_idle_failure = self._idle_failure
        protocol.on_lost = self._finish

    def _idle_failure(self, error: SMTPConnectionError) -> None:
        self._error = error
        if self._busy == 0:
            self._log.error("connection failed: {error}", error=str(error))
            self._events.emit("error", error)

    def _fail(self, error: SMTPConnectionError) -> None:
        """An operation failed in a way that ends the connection."""
        if self._error is None:
            self._error = error
        if self._protocol is not None and self._protocol.is_open:
            self._protocol.abort(error)
        else:
            self._finish()

    def _finish(self) -> None:
        """The transport is gone (or never came): fire "end" once."""
        if self._protocol is not None and self._error is None and self._protocol.failure is not None:
            if self._lifecycle.state is not State.CLOSING:
                self._error = self._protocol.failure
        if not self._lifecycle.move(State.CLOSED):
            return
        self.secure = False
        self._log.info("connection to {host}:{port} closed", host=self._options.host, port=self._options.port)
        self._events.emit("end")
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

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
        # Imported here so that the email support stays out of the core's
        # import graph until it is used.
        from ._email import message_envelope

        try:
            envelope, chunks = message_envelope(
                message,
                mail_from=mail_from,
                rcpt_to=rcpt_to,
                envelope_options=envelope_options,
                extensions=self.extensions if self.state is State.READY else None,
            )
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self.send(envelope, chunks)


def _abort_quietly(protocol: SMTPClientProtocol) -> None:
    if protocol.is_open and protocol.transport is not None:
        protocol.transport.abortConnection()  # type: ignore[attr-defined]
