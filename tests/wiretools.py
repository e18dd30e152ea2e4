"""
Byte-exact wire testing for SMTPConnection: a StringTransport endpoint and a
MemoryReactorClock, so tests feed server bytes and read client bytes with no
sockets and no waiting.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from twisted_smtpconn import SMTPConnection


class ClosingTransport(StringTransport):
    """A StringTransport whose close really ends the protocol's connection."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.protocol: Any = None

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.aborted = True
        ClosingTransport.loseConnection(self)


class WireEndpoint:
    """An IStreamClientEndpoint connecting the factory's protocol to a ClosingTransport."""

    def __init__(self) -> None:
        self.transport = ClosingTransport()
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.protocol = factory.buildProtocol(None)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Wire:
    """One client connection on a fake wire."""

    def __init__(self, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = WireEndpoint()
        options.setdefault("name", "client.example")
        self.conn = SMTPConnection(endpoint=self.endpoint, reactor=self.reactor, **options)
        self.events: list[tuple[str, Any]] = []
        for event in ("connect", "error", "end"):
            self.conn.on(event, lambda *args, event=event: self.events.append((event, args)))

    @property
    def transport(self) -> ClosingTransport:
        return self.endpoint.transport

    def server(self, *reads: bytes) -> None:
        """Bytes from the server, one read each (replies to separate commands
        must come in separate reads unless the client pipelined them)."""
        for data in reads:
            self.endpoint.protocol.dataReceived(data)

    def client(self) -> bytes:
        """Bytes the client wrote since the last call."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def drop(self, reason: Failure | None = None) -> None:
        """The server closes the connection."""
        self.transport.disconnecting = True
        self.endpoint.protocol.connectionLost(reason or Failure(ConnectionLost()))

    def connect(self, ehlo: bytes = b"250-server.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n") -> Any:
        d = self.conn.connect()
        self.server(b"220 server.example ESMTP ready\r\n")
        assert self.client() == b"EHLO client.example\r\n"
        self.server(ehlo)
        return result(d)


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired successfully."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d: Deferred[Any]) -> BaseException:
    """The exception of a Deferred that has already failed."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    assert isinstance(out[0], Failure), f"expected a failure, got {out[0]!r}"
    return out[0].value


def pending(d: Deferred[Any]) -> bool:
    """Whether ``d`` has not fired yet (without consuming its result)."""
    return not d.called


class AutoServer:
    """
    A scripted SMTP server answering a ClosingTransport's writes at once.

    ``rcpt`` and ``final`` decide the replies: they get the address (or the
    received message bytes) and the number of the connection, and return a
    reply line.  Everything received is kept for the test to inspect.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.messages: list[bytes] = []
        self.commands: list[bytes] = []
        self.rcpt = lambda address, n: b"250 ok"
        self.final = lambda data, n: b"250 queued"
        self.drop_after_dot = 0
        self.ehlo = b"250 server.example"

    def attach(self, transport: "ScriptedTransport") -> None:
        self.connections += 1
        transport.number = self.connections
        transport.responder = self

    def handle(self, transport: "ScriptedTransport", data: bytes) -> None:
        transport.pending += data
        while True:
            if transport.in_data:
                end = transport.pending.find(b"\r\n.\r\n")
                if end < 0 and transport.pending.startswith(b".\r\n"):
                    body, transport.pending = b"", transport.pending[3:]
                elif end < 0:
                    return
                else:
                    body, transport.pending = transport.pending[: end + 2], transport.pending[end + 5 :]
                transport.in_data = False
                self.messages.append(body)
                if self.drop_after_dot:
                    self.drop_after_dot -= 1
                    transport.protocol.connectionLost(Failure(ConnectionLost()))
                    return
                transport.reply(self.final(body, transport.number))
                continue
            if b"\r\n" not in transport.pending:
                return
            line, transport.pending = transport.pending.split(b"\r\n", 1)
            self.commands.append(line)
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                transport.reply(self.ehlo)
            elif verb == b"MAIL":
                transport.reply(b"250 ok")
            elif verb == b"RCPT":
                transport.reply(self.rcpt(line[9:-1].decode(), transport.number))
            elif verb == b"DATA":
                transport.in_data = True
                transport.reply(b"354 go")
            elif verb == b"RSET":
                transport.reply(b"250 ok")
            elif verb == b"QUIT":
                transport.reply(b"221 bye")
                transport.loseConnection()
                return
            else:
                transport.reply(b"502 unknown")


class ScriptedTransport(ClosingTransport):
    """A transport whose writes go to an AutoServer."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = b""
        self.in_data = False
        self.number = 0
        self.responder: AutoServer | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.responder is not None and not self.disconnecting:
            self.responder.handle(self, data)

    def reply(self, line: bytes) -> None:
        if not self.disconnecting:
            self.protocol.dataReceived(line + b"\r\n")


class AutoEndpoint:
    """Each connect() makes a new ScriptedTransport answered by ``server``."""

    def __init__(self, server: AutoServer) -> None:
        self.server = server
        self.transports: list[ScriptedTransport] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        transport = ScriptedTransport()
        self.server.attach(transport)
        protocol = factory.buildProtocol(None)
        transport.protocol = protocol
        self.transports.append(transport)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"220 server.example ready\r\n")
        return succeed(protocol)


class HoldingServer(AutoServer):
    """An AutoServer that withholds the reply to each final dot until ``answer()``."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []
        self.final = lambda data, n: b"HOLD"

    def attach(self, transport: Any) -> None:
        super().attach(transport)
        send = transport.reply

        def reply(line: bytes) -> None:
            if line == b"HOLD":
                self.held.append(lambda: send(b"250 2.0.0 queued"))
            else:
                send(line)

        transport.reply = reply

    def answer(self) -> None:
        held, self.held = self.held, []
        for reply in held:
            reply()


class RefusingEndpoint:
    """Every connect() fails as a refused TCP connection would."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> Any:
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        self.attempts += 1
        return fail(ConnectionRefusedError("refused"))


_LABEL = re.compile(r"^#\d+ \S+ (?=[CS]: )")


def transcript_text(text: str) -> str:
    """
    A formatted log event with the connection's label taken off a
    transcript line (``"#7 localhost:25 C: EHLO x"`` -> ``"C: EHLO x"``).
    """
    return _LABEL.sub("", text)
