"""
Scripted, byte-exact SMTP servers on real loopback sockets, for the
adversarial tests (``test_adversarial.py``).

A *scenario* is an ``async def`` that plays the server's side of one
connection through a :class:`Peer`: it reads the client's lines, writes
exactly the bytes it wants (in one write, byte by byte, or as an endless
stream), stalls, closes or resets the connection.  :class:`ScriptedServer`
listens on ``127.0.0.1`` (a real Twisted listening port, so the client's
whole stack -- endpoint, TCP transport, timers -- is exercised) and runs the
scenario for every connection.

Nothing here waits without a bound: every read fails with :class:`PeerGone`
when the client goes away, every scenario run is cut off after
``scenario_limit`` seconds, and :meth:`ScriptedServer.stop` aborts whatever
is still open.  A scenario that finds the client saying something other than
what it expected records a :class:`ScriptMismatch` in
:attr:`ScriptedServer.errors`, which the tests check is empty.

The reactor is never imported at module level; the server takes it as an
argument.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "Peer",
    "Hung",
    "PeerGone",
    "ScriptMismatch",
    "Scenario",
    "ScriptedServer",
    "Dialogue",
    "EHLO_PLAIN",
    "STEPS",
    "TLSServerCreator",
    "big_message",
    "within",
]

#: What a scenario is: one connection's server side.
Scenario = Callable[["Peer"], Awaitable[None]]

#: A plain ESMTP hello reply without PIPELINING, so that every command of a
#: transaction is its own round trip and a fault can be placed at each one.
EHLO_PLAIN = b"250-adversary.example\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"


class PeerGone(Exception):
    """The client closed the connection while the scenario waited for it."""


class ScriptMismatch(AssertionError):
    """The client said something the scenario did not expect."""


class Hung(AssertionError):
    """An awaited operation had no outcome within its bound: the client hung."""


def within(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[Any]:
    """
    ``d`` with a deadline: every await in the adversarial tests goes
    through this, so that a client that hangs fails the test instead of
    hanging it.

    When the deadline passes ``d`` is cancelled and fails with
    :class:`Hung` *whatever* the cancellation made of it: code that turns
    a cancellation into some other error must not pass for an outcome.
    """
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    timer = reactor.callLater(seconds, expire)

    def settle(result: object) -> object:
        if timer.active():
            timer.cancel()
        if expired:
            return Failure(Hung(f"no outcome within {seconds:g} s (the deferred was cancelled: {result!r})"))
        return result

    return d.addBoth(settle)


@implementer(IPullProducer)
class _Flood:
    """
    Writes ``chunk`` again and again, one write each time the transport
    asks for more, until ``limit`` bytes were written or the connection is
    gone.  Being a pull producer, it never piles data up in the transport's
    buffer: memory on the server side stays at one chunk.
    """

    def __init__(self, peer: Peer, chunk: bytes, limit: int) -> None:
        self._peer = peer
        self._chunk = chunk
        self._limit = limit
        self.written = 0
        self.done: Deferred[int] = Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        if self.written >= self._limit or not self._peer.is_open:
            self._finish()
            return
        self._peer.transport.write(self._chunk)  # type: ignore[union-attr]
        self.written += len(self._chunk)

    def stopProducing(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            if self._peer.is_open:
                self._peer.transport.unregisterProducer()  # type: ignore[union-attr]
            self.done.callback(self.written)


class Peer(Protocol):
    """
    The server side of one connection, driven by a scenario.

    :ivar received: every byte the client sent, in order, byte-exact.
    :ivar sent: every byte this side wrote (floods count their bytes only).
    :ivar lost_reason: why the connection ended, once it has.
    """

    def __init__(self, reactor: Any, number: int) -> None:
        self.reactor = reactor
        self.number = number
        self.received = bytearray()
        self.sent = bytearray()
        self.is_open = False
        self.lost_reason: Failure | None = None
        self._unread = bytearray()
        self._wakeup: Deferred[None] | None = None
        self._lost_waiters: list[Deferred[None]] = []

    # -- Protocol --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.is_open = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._unread += data
        self._wake()

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.is_open = False
        self.lost_reason = reason
        self._wake()
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    async def _more(self) -> None:
        if not self.is_open:
            raise PeerGone(f"the client closed the connection; unread: {bytes(self._unread)!r}")
        self._wakeup = Deferred()
        await self._wakeup

    # -- reading ---------------------------------------------------------------

    async def read_line(self) -> bytes:
        """The next line the client sent, without its CRLF."""
        while True:
            end = self._unread.find(b"\r\n")
            if end >= 0:
                line = bytes(self._unread[:end])
                del self._unread[: end + 2]
                return line
            await self._more()

    async def expect(self, line: bytes) -> bytes:
        """Read a line and check it is exactly ``line``."""
        got = await self.read_line()
        if got != line:
            raise ScriptMismatch(f"expected {line!r}, the client sent {got!r}")
        return got

    async def expect_prefix(self, prefix: bytes) -> bytes:
        """Read a line and check that it starts with ``prefix`` (case-insensitive)."""
        got = await self.read_line()
        if not got.upper().startswith(prefix.upper()):
            raise ScriptMismatch(f"expected a line starting {prefix!r}, the client sent {got!r}")
        return got

    async def read_until(self, marker: bytes) -> bytes:
        """Everything up to and including ``marker``."""
        while True:
            end = self._unread.find(marker)
            if end >= 0:
                data = bytes(self._unread[: end + len(marker)])
                del self._unread[: end + len(marker)]
                return data
            await self._more()

    async def read_at_least(self, count: int) -> bytes:
        """At least ``count`` bytes (all that is buffered)."""
        while len(self._unread) < count:
            await self._more()
        data = bytes(self._unread)
        self._unread.clear()
        return data

    async def read_message(self) -> bytes:
        """The DATA payload up to and including the terminating ``.`` line."""
        if self._unread.startswith(b".\r\n"):
            del self._unread[:3]
            return b".\r\n"
        return await self.read_until(b"\r\n.\r\n")

    async def silence(self, seconds: float) -> bytes:
        """Say nothing for ``seconds``; return what the client sent meanwhile."""
        before = len(self.received)
        await self.sleep(seconds)
        return bytes(self.received[before:])

    def gone(self) -> Deferred[None]:
        """A Deferred that fires once the connection is closed (at once if it is)."""
        d: Deferred[None] = Deferred()
        if self.is_open:
            self._lost_waiters.append(d)
        else:
            d.callback(None)
        return d

    # -- writing ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` in one write."""
        if self.is_open:
            self.sent += data
            self.transport.write(data)  # type: ignore[union-attr]

    async def send_bytewise(self, data: bytes, pause: float = 0.002) -> None:
        """Write ``data`` one byte per write, ``pause`` seconds apart."""
        for index in range(len(data)):
            if not self.is_open:
                raise PeerGone("the client closed the connection during a byte-wise write")
            self.send(data[index : index + 1])
            await self.sleep(pause)

    async def trickle(self, data: bytes, pause: float) -> None:
        """Like :meth:`send_bytewise`, for slow-server scenarios."""
        await self.send_bytewise(data, pause)

    def flood(self, chunk: bytes, limit: int) -> Deferred[int]:
        """
        Write ``chunk`` repeatedly until ``limit`` bytes went out or the
        client hung up; fires with the number of bytes written.
        """
        flood = _Flood(self, chunk, limit)
        self.transport.registerProducer(flood, False)  # type: ignore[union-attr]
        return flood.done

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds, lambda: None)

    # -- ending ----------------------------------------------------------------

    def close(self) -> None:
        """Close politely (FIN) after what was written."""
        if self.is_open:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def reset(self) -> None:
        """Reset the connection (RST): linger 0, then close at once."""
        if not self.is_open:
            return
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.transport.abortConnection()  # type: ignore[union-attr]

    def start_tls(self, context_factory: Any) -> None:
        """Start the server side of a TLS handshake (after a 220 to STARTTLS)."""
        self.transport.startTLS(context_factory)  # type: ignore[union-attr]

    def stop_reading(self) -> None:
        """
        Stop reading from the socket, so that the kernel buffers fill and the
        client's writes stall (a server that stops taking DATA).
        """
        if self.is_open:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def take_unread(self) -> bytes:
        """Bytes received and not read yet (and forget them)."""
        data = bytes(self._unread)
        self._unread.clear()
        return data


class _ScenarioFactory(Factory):
    def __init__(self, server: ScriptedServer) -> None:
        self._server = server

    def buildProtocol(self, addr: Any) -> Peer:
        return _RunningPeer(self._server, self._server.reactor, len(self._server.peers) + 1)


class _RunningPeer(Peer):
    def __init__(self, server: ScriptedServer, reactor: Any, number: int) -> None:
        super().__init__(reactor, number)
        self._server = server

    def connectionMade(self) -> None:
        super().connectionMade()
        self._server._started(self)


class ScriptedServer:
    """
    A listening port on 127.0.0.1 whose every connection is played by
    ``scenario``.

    :ivar peers: one :class:`Peer` per accepted connection, in order.
    :ivar errors: what went wrong inside scenarios (a :class:`ScriptMismatch`,
        or a scenario that outlived ``scenario_limit``); tests assert it is
        empty.  A client that hangs up while the scenario waits
        (:class:`PeerGone`) is not an error.
    """

    def __init__(self, reactor: Any, scenario: Scenario, *, scenario_limit: float = 20.0) -> None:
        self.reactor = reactor
        self.scenario = scenario
        self.scenario_limit = scenario_limit
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._runs: list[Deferred[None]] = []
        self._port: Any = None
        self._stopping = False

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    def start(self, interface: str = "127.0.0.1") -> int:
        """Listen on a free port of ``interface`` (127.0.0.1 or ::1) and return it."""
        self._port = self.reactor.listenTCP(0, _ScenarioFactory(self), interface=interface)
        return self.port

    def _started(self, peer: Peer) -> None:
        self.peers.append(peer)
        run = Deferred.fromCoroutine(self._play(peer))
        run.addTimeout(self.scenario_limit, self.reactor)
        run.addErrback(self._scenario_failed, peer)
        self._runs.append(run)

    async def _play(self, peer: Peer) -> None:
        try:
            await self.scenario(peer)
        except PeerGone:
            pass

    def _scenario_failed(self, failure: Failure, peer: Peer) -> None:
        if self._stopping and failure.check(CancelledError):
            return  # cut short by stop(): the test is over
        self.errors.append(failure.value)
        peer.reset()

    def finished(self) -> Deferred[Any]:
        """Fires once every scenario run so far has ended."""
        return DeferredList(list(self._runs), consumeErrors=True)

    async def stop(self) -> None:
        """Stop listening, cut every open connection, wait for the scenarios."""
        self._stopping = True
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
        for peer in self.peers:
            if peer.is_open:
                peer.transport.abortConnection()  # type: ignore[union-attr]
        for run in self._runs:
            if not run.called:
                run.cancel()
        await DeferredList(list(self._runs), consumeErrors=True)
        for peer in self.peers:
            await within(peer.gone(), 5.0, self.reactor)


# -- a well-behaved server with one fault ---------------------------------------------------

#: The steps of one connection's life at which :class:`Dialogue` can misbehave.
STEPS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "body", "dot", "RSET", "QUIT")


@dataclass
class Dialogue:
    """
    A correct, non-pipelining SMTP server that misbehaves at one step.

    It greets, answers EHLO with ``ehlo``, then serves transactions (MAIL,
    RCPT, DATA, the message), RSET and QUIT, until ``fault_at`` comes: then
    it does ``fault`` instead of the normal reply.  ``"body"`` is the moment
    ``body_bytes`` bytes of the message arrived; ``"dot"`` the moment the
    whole message (final dot included) arrived, before its reply.

    Faults: ``"421"`` (a 421 reply, then close), ``"reset"`` (RST),
    ``"close"`` (FIN without a word), ``"silence"`` (say nothing, keep the
    connection open), or any ``bytes`` (written as they are, connection kept).

    :ivar messages: the messages received complete (dot-stuffed wire form).
    """

    fault_at: str | None = None
    fault: str | bytes = "421"
    ehlo: bytes = EHLO_PLAIN
    body_bytes: int = 4096
    greeting: bytes = b"220 adversary.example ESMTP\r\n"
    final_reply: bytes = b"250 2.0.0 queued\r\n"

    def __post_init__(self) -> None:
        if self.fault_at is not None and self.fault_at not in STEPS:
            raise ValueError(f"unknown step {self.fault_at!r}")
        self.messages: list[bytes] = []
        self.faulted = False

    async def _at(self, peer: Peer, step: str) -> bool:
        """Perform the fault if ``step`` is the one; True when it was."""
        if step != self.fault_at:
            return False
        self.faulted = True
        if self.fault == "421":
            peer.send(b"421 4.3.2 adversary.example closing the channel\r\n")
            peer.close()
        elif self.fault == "reset":
            peer.reset()
        elif self.fault == "close":
            peer.close()
        elif self.fault == "silence":
            await peer.gone()
        elif isinstance(self.fault, bytes):
            peer.send(self.fault)
            await peer.gone()
        else:
            raise ValueError(f"unknown fault {self.fault!r}")
        return True

    async def __call__(self, peer: Peer) -> None:
        if await self._at(peer, "greeting"):
            return
        peer.send(self.greeting)
        await peer.expect_prefix(b"EHLO ")
        if await self._at(peer, "EHLO"):
            return
        peer.send(self.ehlo)
        while True:
            line = await peer.read_line()
            verb = line.split(b":", 1)[0].split(b" ", 1)[0].upper()
            if verb == b"MAIL":
                if await self._at(peer, "MAIL"):
                    return
                peer.send(b"250 2.1.0 sender ok\r\n")
            elif verb == b"RCPT":
                if await self._at(peer, "RCPT"):
                    return
                peer.send(b"250 2.1.5 recipient ok\r\n")
            elif verb == b"DATA":
                if await self._at(peer, "DATA"):
                    return
                peer.send(b"354 end with <CRLF>.<CRLF>\r\n")
                if self.fault_at == "body":
                    await peer.read_at_least(self.body_bytes)
                    peer.stop_reading()
                    await self._at(peer, "body")
                    return
                message = await peer.read_message()
                self.messages.append(message)
                if await self._at(peer, "dot"):
                    return
                peer.send(self.final_reply)
            elif verb == b"RSET":
                if await self._at(peer, "RSET"):
                    return
                peer.send(b"250 2.0.0 reset\r\n")
            elif verb == b"QUIT":
                if await self._at(peer, "QUIT"):
                    return
                peer.send(b"221 2.0.0 bye\r\n")
                peer.close()
                return
            else:
                peer.send(b"502 5.5.2 not implemented\r\n")


def big_message(total: int, line: bytes = b"x" * 998) -> Iterable[bytes]:
    """
    A message of about ``total`` bytes as a generator of lines, so that the
    test does not hold it in memory: larger than every socket buffer on the
    path, so that a server that stops reading mid-DATA really stops the
    client mid-DATA.
    """
    chunk = line + b"\r\n"
    for _ in range(total // len(chunk) + 1):
        yield chunk


@implementer(IOpenSSLServerConnectionCreator)
class TLSServerCreator:
    """
    The server side of a scripted STARTTLS: a certificate chain and key from
    one PEM file (as ``trustme``'s ``private_key_and_cert_chain_pem``
    writes it), loaded straight into an OpenSSL context.
    """

    def __init__(self, pem_path: str) -> None:
        self._pem_path = pem_path

    def serverConnectionForTLS(self, tls_protocol: Any) -> Any:
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate_chain_file(self._pem_path)
        context.use_privatekey_file(self._pem_path)
        return SSL.Connection(context, None)


def cancel_quietly(d: Deferred[Any]) -> None:
    """Cancel ``d`` and swallow the resulting CancelledError."""
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
