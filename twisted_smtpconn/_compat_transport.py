"""
Running this library's client over a transport that somebody else connected.

twisted.mail's ``ESMTPSenderFactory`` is a ``ClientFactory``: the application
hands it to ``reactor.connectTCP`` (or ``connectSSL``, or an endpoint), and the
reactor calls ``buildProtocol`` once TCP is up.  :class:`SMTPConnection`,
however, opens its own transport through an ``IStreamClientEndpoint``.  The two
meet here:

* :class:`Relay` is the protocol the reactor gets.  It stays registered
  with the transport for the connection's whole life and passes every event
  on to the library's protocol once that is attached (bytes that arrived
  before are kept and passed on first).  Staying in between, rather than
  swapping ``transport.protocol``, is what keeps STARTTLS working: Twisted's
  ``startTLS`` wraps whatever protocol the transport has, and the relay
  forwards ``handshakeCompleted`` (``IHandshakeListener``) too.
* :class:`ConnectedEndpoint` is the endpoint given to ``SMTPConnection``:
  its ``connect(factory)`` builds the library's protocol and attaches it to
  the relay's transport, which is already connected.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ._errors import ConnectionFailedError

__all__ = ["Relay", "ConnectedEndpoint"]


@implementer(IHandshakeListener)
class Relay(Protocol):
    """
    The protocol registered with an application-made transport; forwards
    everything to the library's protocol once :meth:`attach` was called.

    :ivar on_connected: called with the relay when the transport is up.
    """

    def __init__(self, on_connected: Any) -> None:
        self._on_connected = on_connected
        self._inner: Any = None
        self._early: list[bytes] = []
        self._lost: Failure | None = None
        self._handshake_done = False

    @property
    def attached(self) -> bool:
        return self._inner is not None

    def connectionMade(self) -> None:
        self._on_connected(self)

    def attach(self, inner: Any) -> None:
        """Connect ``inner`` to this relay's transport and replay what it missed."""
        if self._inner is not None:
            raise RuntimeError("a protocol is attached to this transport already")
        self._inner = inner
        inner.makeConnection(self.transport)
        early, self._early = self._early, []
        for data in early:
            inner.dataReceived(data)
        if self._handshake_done:
            self._forward_handshake()
        if self._lost is not None:
            inner.connectionLost(self._lost)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is None:
            self._early.append(data)
        else:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is None:
            self._lost = reason
        else:
            self._inner.connectionLost(reason)

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        if self._inner is not None:
            self._forward_handshake()

    def _forward_handshake(self) -> None:
        listener = IHandshakeListener(self._inner, None)
        if listener is not None:
            listener.handshakeCompleted()


@implementer(IStreamClientEndpoint)
class ConnectedEndpoint:
    """An endpoint whose one connection is the relay's, already made."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        relay = self._relay
        if relay.attached:
            return fail(
                ConnectionFailedError(
                    "this connection was made by the application and is used already; it cannot be reopened"
                )
            )
        if relay.transport is None:
            return fail(ConnectionFailedError("the application's connection is not open"))
        protocol = protocolFactory.buildProtocol(relay.transport.getPeer())
        if protocol is None:
            return fail(ConnectionFailedError("the protocol factory refused the connection"))
        relay.attach(protocol)
        return succeed(protocol)
