"""
The relay between an application-made transport and the library's protocol
(``twisted_smtpconn._compat_transport``), byte-exact with StringTransport:
what arrives before the library's protocol is attached is replayed in order,
a connection lost early is reported, the TLS handshake notification is
passed on, and the endpoint refuses a second connect.  The real-server
behaviour (STARTTLS over the relay, connectSSL) is in test_compat.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_smtpconn import ConnectionFailedError
from twisted_smtpconn._compat_transport import ConnectedEndpoint, Relay


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def connectionMade(self) -> None:
        self.events.append(("made", self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.events.append(("lost", reason.type))

    def handshakeCompleted(self) -> None:
        self.events.append(("handshake",))


def _connected_relay() -> tuple[Relay, StringTransport, list[Relay]]:
    connected: list[Relay] = []
    relay = Relay(connected.append)
    transport = StringTransport()
    relay.makeConnection(transport)
    return relay, transport, connected


def test_bytes_before_attach_are_replayed_in_order() -> None:
    relay, transport, connected = _connected_relay()
    assert connected == [relay]
    relay.dataReceived(b"220 mx ESMTP\r\n")
    relay.dataReceived(b"250 more\r\n")
    inner = Recorder()
    relay.attach(inner)
    relay.dataReceived(b"later\r\n")
    assert inner.events == [
        ("made", transport),
        ("data", b"220 mx ESMTP\r\n"),
        ("data", b"250 more\r\n"),
        ("data", b"later\r\n"),
    ]
    assert inner.transport is transport  # writes go straight to the application's transport


def test_loss_and_handshake_before_attach_are_reported() -> None:
    relay, _, _ = _connected_relay()
    relay.handshakeCompleted()
    relay.connectionLost(Failure(ConnectionDone()))
    inner = Recorder()
    relay.attach(inner)
    assert [event[0] for event in inner.events] == ["made", "handshake", "lost"]


def test_handshake_after_attach_is_passed_on() -> None:
    relay, _, _ = _connected_relay()
    inner = Recorder()
    relay.attach(inner)
    relay.handshakeCompleted()
    assert inner.events[-1] == ("handshake",)
    with pytest.raises(RuntimeError):
        relay.attach(Recorder())


def test_endpoint_connects_once() -> None:
    relay, transport, _ = _connected_relay()
    endpoint = ConnectedEndpoint(relay)
    factory = Factory.forProtocol(Recorder)
    d = endpoint.connect(factory)
    protocol = d.result
    assert isinstance(protocol, Recorder) and protocol.events == [("made", transport)]
    again = endpoint.connect(factory)
    failure = again.result
    assert isinstance(failure, Failure) and isinstance(failure.value, ConnectionFailedError)
    again.addErrback(lambda _: None)
