"""
Helpers for the reliability tests of issue 10 (``test_reliability.py``):
bounded awaits, a scripted-server session, an event recorder, and three
real servers the adversarial kit does not have:

* :class:`SlowReader` -- a blocking-socket SMTP server in a thread that
  reads the message 1 KiB at a time with a pause between reads, through a
  small receive buffer, so that the client's data moves slowly but steadily;
* :class:`DelayProxy` -- a TCP relay that holds everything the server sends
  for a while (an implicit-TLS handshake whose ServerHello is late);
* :func:`full_backlog_listener` -- a listening socket whose accept queue is
  full, so that the kernel drops further SYNs (a connect that times out).

Everything takes the reactor as an argument or imports it lazily; every
wait is bounded.  Only the public API of ``twisted_smtpconn`` is used.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from adversary import Peer, Scenario, ScriptedServer, within
from twisted_smtpconn import SMTPConnection, SMTPConnectionError

__all__ = [
    "LIMIT",
    "EventLog",
    "Session",
    "SlowReader",
    "DelayProxy",
    "FullBacklog",
    "bounded",
    "outcome",
    "reactor",
    "sleep",
    "until",
]

#: The bound on every await: far above any outcome's real time, far below "hung".
LIMIT = 15.0


def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


async def bounded(d: Deferred[Any] | Awaitable[Any], seconds: float = LIMIT) -> Any:
    """Await ``d`` (a Deferred or a coroutine); :class:`adversary.Hung` after ``seconds``."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)  # type: ignore[arg-type]
    return await within(d, seconds, reactor())


async def outcome(d: Deferred[Any], seconds: float = LIMIT) -> Any:
    """The result of ``d``, or the library error it failed with."""
    try:
        return await bounded(d, seconds)
    except SMTPConnectionError as error:
        return error


async def sleep(seconds: float) -> None:
    await deferLater(reactor(), seconds, lambda: None)


async def until(condition: Callable[[], bool], seconds: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms; AssertionError if it is not met within ``seconds``."""
    deadline = reactor().seconds() + seconds
    while not condition():
        if reactor().seconds() > deadline:
            raise AssertionError(f"{what}: not met within {seconds:g} s")
        await sleep(0.01)


class EventLog:
    """Records a connection's ``connect``/``error``/``end`` events in order."""

    def __init__(self, conn: SMTPConnection) -> None:
        self.names: list[str] = []
        self.errors: list[object] = []
        conn.on("connect", lambda *a: self.names.append("connect"))
        conn.on("error", lambda *a: (self.names.append("error"), self.errors.append(a[0] if a else None)))
        conn.on("end", lambda *a: self.names.append("end"))

    def check_end_is_last(self) -> None:
        """``end`` at most once, and nothing after it."""
        assert self.names.count("end") <= 1, self.names
        if "end" in self.names:
            assert self.names[-1] == "end", f"events after 'end': {self.names}"


def connection(port: int, **options: Any) -> SMTPConnection:
    options.setdefault("name", "client.example")
    options.setdefault("greeting_timeout", 5.0)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("connection_timeout", 5.0)
    return SMTPConnection("127.0.0.1", port, **options)


class Session:
    """One scripted server (``adversary.ScriptedServer``) and the connections made to it."""

    def __init__(self, scenario: Scenario, scenario_limit: float = 20.0) -> None:
        self.server = ScriptedServer(reactor(), scenario, scenario_limit=scenario_limit)
        self.port = self.server.start()
        self.connections: list[SMTPConnection] = []

    def connect_to(self, **options: Any) -> SMTPConnection:
        conn = connection(self.port, **options)
        self.connections.append(conn)
        return conn

    @property
    def peer(self) -> Peer:
        assert self.server.peers, "the client never connected"
        return self.server.peers[0]

    async def close(self) -> None:
        for conn in self.connections:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 -- fault 7 is tested elsewhere; clean up anyway
                pass
        await bounded(self.server.stop())
        assert self.server.errors == [], self.server.errors


async def run(scenario: Scenario, body: Callable[[Session], Awaitable[None]], scenario_limit: float = 20.0) -> Session:
    session = Session(scenario, scenario_limit)
    try:
        await body(session)
    finally:
        await session.close()
    return session


# -- a slow, steady reader ----------------------------------------------------------------


class SlowReader:
    """
    A real SMTP server (blocking sockets, its own thread) that takes the
    message slowly: after 354 it reads ``chunk`` bytes, sleeps ``pause``
    seconds, and so on, through a receive buffer of ``rcvbuf`` bytes.  The
    client's data never stops moving, but it moves at about
    ``chunk / pause`` bytes per second.  No PIPELINING, no CHUNKING.

    :ivar received: every byte received, in order.
    :ivar replies: every reply line written.
    """

    def __init__(self, chunk: int = 1024, pause: float = 0.25, rcvbuf: int = 4096, limit: float = 30.0) -> None:
        self.chunk = chunk
        self.pause = pause
        self.limit = limit
        self.received = bytearray()
        self.replies: list[bytes] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="slow-reader", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            deadline = time.monotonic() + self.limit
            conn = None
            while conn is None and not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = self._listener.accept()
                except socket.timeout:
                    continue
            if conn is None:
                return
            with conn:
                self._converse(conn, deadline)
        except BaseException as error:  # noqa: BLE001 -- reported to the test
            if not self._stop.is_set():
                self.error = error

    def _converse(self, conn: socket.socket, deadline: float) -> None:
        conn.settimeout(0.1)
        pending = bytearray()

        def reply(line: bytes) -> None:
            self.replies.append(line)
            conn.sendall(line + b"\r\n")

        def read(size: int) -> bytes:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    data = conn.recv(size)
                except socket.timeout:
                    continue
                if not data:
                    raise EOFError("the client closed the connection")
                self.received += data
                return data
            raise TimeoutError("slow reader stopped")

        def line() -> bytes:
            while b"\r\n" not in pending:
                pending.extend(read(4096))
            end = pending.index(b"\r\n")
            text = bytes(pending[:end])
            del pending[: end + 2]
            return text

        reply(b"220 slow.example ESMTP")
        while True:
            try:
                command = line()
            except EOFError:
                return
            verb = command.split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb == b"EHLO":
                reply(b"250-slow.example")
                reply(b"250 8BITMIME")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                reply(b"250 ok")
            elif verb == b"DATA":
                reply(b"354 go ahead")
                body = bytearray(pending)
                pending.clear()
                while b"\r\n.\r\n" not in body and not body.startswith(b".\r\n"):
                    time.sleep(self.pause)
                    body += read(self.chunk)
                end = body.find(b"\r\n.\r\n")
                pending.extend(body[end + 5 :])
                reply(b"250 2.0.0 queued slowly")
            elif verb == b"QUIT":
                reply(b"221 bye")
                return
            else:
                reply(b"502 not implemented")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._listener.close()


# -- a relay that holds the server's bytes ----------------------------------------------------


class _Down(Protocol):
    """The proxy's connection to the server: bytes from the server go to the client later."""

    def __init__(self, up: _Up) -> None:
        self.up = up

    def connectionMade(self) -> None:
        self.up.down_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.up.from_server(data)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.up.server_gone()


class _Up(Protocol):
    """The proxy's accepted connection from the client."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.down: _Down | None = None
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.release_at = 0.0
        self.timer: Any = None
        self.server_closed = False
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        self.proxy.ups.append(self)
        r = self.proxy.reactor
        self.release_at = r.seconds() + self.proxy.hold
        factory = ClientFactory.forProtocol(lambda: _Down(self))
        self.proxy.reactor.connectTCP("127.0.0.1", self.proxy.target_port, factory)
        self.timer = r.callLater(self.proxy.hold, self._release)

    def down_ready(self, down: _Down) -> None:
        self.down = down
        if not self.open:
            down.transport.abortConnection()  # type: ignore[union-attr]
            return
        if self.to_server:
            down.transport.write(bytes(self.to_server))  # type: ignore[union-attr]
            self.to_server.clear()

    def dataReceived(self, data: bytes) -> None:
        if self.down is None:
            self.to_server += data
        else:
            self.down.transport.write(data)  # type: ignore[union-attr]

    def from_server(self, data: bytes) -> None:
        if self.proxy.reactor.seconds() < self.release_at or self.to_client:
            self.to_client += data
        elif self.open:
            self.transport.write(data)  # type: ignore[union-attr]

    def _release(self) -> None:
        self.timer = None
        if self.open and self.to_client:
            self.transport.write(bytes(self.to_client))  # type: ignore[union-attr]
        self.to_client.clear()
        if self.server_closed and self.open:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def server_gone(self) -> None:
        self.server_closed = True
        if self.timer is None and self.open:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.open = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.down is not None and self.down.transport is not None:
            self.down.transport.loseConnection()


class DelayProxy:
    """
    Relays 127.0.0.1:``port`` to 127.0.0.1:``target_port``; whatever the
    server sends in the first ``hold`` seconds of a connection reaches the
    client only when they are over.  With an implicit-TLS server behind it,
    the TLS handshake takes ``hold`` seconds.
    """

    def __init__(self, reactor: Any, target_port: int, hold: float) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.hold = hold
        self.ups: list[_Up] = []
        self._port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Up(self)), interface="127.0.0.1")
        self.port = int(self._port.getHost().port)

    async def stop(self) -> None:
        await self._port.stopListening()
        for up in self.ups:
            if up.open:
                up.transport.abortConnection()  # type: ignore[union-attr]
            if up.timer is not None and up.timer.active():
                up.timer.cancel()
            if up.down is not None and up.down.transport is not None and up.down.transport.connected:
                up.down.transport.abortConnection()
        await sleep(0.05)


# -- a listener whose backlog is full -------------------------------------------------------


class FullBacklog:
    """
    A socket listening on 127.0.0.1 with ``listen(0)`` that never accepts,
    filled with connections until the kernel drops the next SYN: a connect
    to :attr:`port` then gets no answer at all (neither SYN-ACK nor RST) and
    can only time out.

    Linux keeps ``backlog + 1`` connections in the accept queue, and drops
    a SYN when the queue is full; how many fillers that takes depends on
    the kernel, so fillers are added until one of them fails to connect
    within ``probe`` seconds.
    """

    def __init__(self, probe: float = 0.3, max_fillers: int = 64) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        self.full = False
        for _ in range(max_fillers):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.fillers.append(filler)
            filler.settimeout(probe)
            try:
                filler.connect(("127.0.0.1", self.port))
            except (socket.timeout, TimeoutError):
                self.full = True
                break
        if not self.full:
            self.close()
            raise RuntimeError(f"could not fill the backlog of a listen(0) socket with {max_fillers} connections")

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()
