"""
A small TCP proxy that breaks connections on purpose, for the soak test.

:class:`FaultProxy` listens on ``127.0.0.1`` and relays every accepted
connection to a target (the aiosmtpd recorder), byte for byte and with
back-pressure both ways.  For each connection it draws a *plan* from a
seeded :class:`random.Random`: with probability ``drop_rate`` the
connection is cut after a random number of bytes in one direction
(client to server, "up", or server to client, "down"), either by a reset
(RST, the bytes in flight are lost) or by a close (FIN after the bytes
before the cut).  Because the cut point is a byte offset, it falls
anywhere: in the greeting, in a command, in the middle of a message, in
the final dot, in the reply to it -- the places a real network fails.

The proxy runs on the test's reactor (never imported here).  Plans are
drawn in the order connections are accepted, so a seed reproduces the
same sequence of plans; which transaction each plan hits also depends on
scheduling.  :attr:`FaultProxy.stats` counts what it did.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

__all__ = ["FaultPlan", "FaultProxy"]


@dataclass(frozen=True)
class FaultPlan:
    """
    What the proxy does to one connection.

    :ivar direction: ``"up"`` (client to server), ``"down"`` (server to
        client), or ``None`` for a connection left alone.
    :ivar offset: how many bytes of that direction get through.
    :ivar how: ``"reset"`` or ``"close"``.
    """

    direction: str | None = None
    offset: int = 0
    how: str = "reset"


def _hard_close(transport: Any) -> None:
    """Abort ``transport`` with an RST (linger 0), dropping what is buffered."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if handle is not None:
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abortConnection()


class _Half(Protocol):
    """One side of a relayed connection; ``peer`` is the other side."""

    def __init__(self, link: _Link, direction: str) -> None:
        # ``direction`` names the flow of the bytes this side *receives*.
        self.link = link
        self.direction = direction
        self.peer: _Half | None = None
        self.open = False
        self.closed = False

    def connectionMade(self) -> None:
        self.open = True

    def dataReceived(self, data: bytes) -> None:
        self.link.relay(self, data)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.open = False
        self.closed = True
        self.link.half_lost(self)


class _ClientHalf(_Half):
    """The accepted side: reads nothing until the backend is connected."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.link.connect_backend()


class _BackendHalf(_Half):
    """The side connected to the target: wires the two halves together."""

    def connectionMade(self) -> None:
        super().connectionMade()
        client = self.link.client
        if not client.open:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.peer, client.peer = client, self
        # Back-pressure both ways: a full buffer on one side stops reading
        # on the other (as twisted.protocols.portforward does).
        self.transport.registerProducer(client.transport, True)  # type: ignore[union-attr]
        client.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        client.transport.resumeProducing()  # type: ignore[union-attr]


class _Link:
    """One client connection, its backend connection and its fault plan."""

    def __init__(self, proxy: FaultProxy, plan: FaultPlan) -> None:
        self.proxy = proxy
        self.plan = plan
        self.counts = {"up": 0, "down": 0}
        self.client: _Half = _ClientHalf(self, "up")
        self.server: _Half | None = None
        self.backend_pending = False
        self.cut = False
        self.done: Deferred[None] = Deferred()

    def connect_backend(self) -> None:
        self.backend_pending = True
        proxy = self.proxy
        proxy.reactor.connectTCP(proxy.target_host, proxy.target_port, _BackendFactory(self), timeout=10)

    def relay(self, source: _Half, data: bytes) -> None:
        target = source.peer
        if self.cut or target is None or not target.open:
            return
        direction = source.direction
        if self.plan.direction == direction:
            room = self.plan.offset - self.counts[direction]
            if len(data) >= room:
                if room > 0:
                    self.counts[direction] += room
                    target.transport.write(data[:room])  # type: ignore[union-attr]
                self.break_link()
                return
        self.counts[direction] += len(data)
        target.transport.write(data)  # type: ignore[union-attr]

    def break_link(self) -> None:
        self.cut = True
        self.proxy.stats[f"cut {self.plan.direction} by {self.plan.how}"] += 1
        for half in (self.client, self.server):
            if half is None or not half.open:
                continue
            if self.plan.how == "reset":
                _hard_close(half.transport)
            else:
                half.transport.loseConnection()  # type: ignore[union-attr]

    def half_lost(self, half: _Half) -> None:
        # When one side goes, the other goes too (after what it was sent).
        other = half.peer
        if other is not None and other.open:
            other.transport.loseConnection()  # type: ignore[union-attr]
        self.check_done()

    def check_done(self) -> None:
        server_done = self.server is None or self.server.closed
        if self.client.closed and server_done and not self.backend_pending and not self.done.called:
            self.done.callback(None)


class _BackendFactory(ClientFactory):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Half:
        half = _BackendHalf(self.link, "down")
        self.link.server = half
        self.link.backend_pending = False
        return half

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.proxy.stats["backend connect failed"] += 1
        self.link.backend_pending = False
        if self.link.client.open:
            self.link.client.transport.loseConnection()  # type: ignore[union-attr]
        self.link.check_done()


class _ProxyFactory(Factory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Half:
        link = _Link(self.proxy, self.proxy.next_plan())
        self.proxy.links.append(link)
        return link.client


class FaultProxy:
    """
    Relay ``127.0.0.1:<port>`` to ``target_host:target_port``, cutting
    connections as the seeded plans say.

    :param drop_rate: probability that a connection gets a cut.
    :param max_offset: for each direction, the largest cut offset drawn
        (uniform from 0); choose about one connection's traffic so that cuts
        land anywhere in its life.
    :ivar stats: counts of connections, cuts by kind, backend failures.
    """

    def __init__(
        self,
        reactor: Any,
        target_host: str,
        target_port: int,
        *,
        seed: int,
        drop_rate: float,
        max_offset: dict[str, int],
    ) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.drop_rate = drop_rate
        self.max_offset = dict(max_offset)
        self.random = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.links: list[_Link] = []
        self._port: Any = None

    def next_plan(self) -> FaultPlan:
        self.stats["connections"] += 1
        if self.random.random() >= self.drop_rate:
            return FaultPlan()
        direction = self.random.choice(["up", "down"])
        offset = self.random.randint(0, self.max_offset[direction])
        how = self.random.choice(["reset", "close"])
        return FaultPlan(direction, offset, how)

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1 and return it."""
        self._port = self.reactor.listenTCP(0, _ProxyFactory(self), interface="127.0.0.1")
        return int(self._port.getHost().port)

    async def stop(self) -> None:
        """Stop listening and wait until every relayed connection is closed."""
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
        for link in self.links:
            for half in (link.client, link.server):
                if half is not None and half.open:
                    half.transport.abortConnection()  # type: ignore[union-attr]
        await DeferredList([link.done for link in self.links], consumeErrors=True)
