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
from twisted_smtpconn._compat_transport import ConnectedEndpoint, RecipientReplies, Relay


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
    seen: list[Protocol] = []
    endpoint = ConnectedEndpoint(relay, on_protocol=seen.append)
    factory = Factory.forProtocol(Recorder)
    d = endpoint.connect(factory)
    (protocol,) = seen
    assert d.result is protocol and protocol.events == [("made", transport)]  # type: ignore[attr-defined]
    again = endpoint.connect(factory)
    failure = again.result
    assert isinstance(failure, Failure) and isinstance(failure.value, ConnectionFailedError)
    again.addErrback(lambda _: None)


def test_recipient_replies_are_recorded_from_the_protocol() -> None:
    """The recorder pairs each RCPT line with its reply, pipelined or not."""
    from twisted.internet.defer import Deferred

    from twisted_smtpconn._reply import Reply

    class Protocol_:
        def __init__(self) -> None:
            self.pending: list[Deferred[Reply]] = []

        def send_command(self, line: bytes, **kwargs: Any) -> Deferred[Reply]:
            d: Deferred[Reply] = Deferred()
            self.pending.append(d)
            return d

        def send_commands(self, lines: list[bytes]) -> list[Deferred[Reply]]:
            return [self.send_command(line) for line in lines]

    protocol = Protocol_()
    replies = RecipientReplies()
    replies.watch(protocol)
    protocol.send_commands([b"MAIL FROM:<a@x>", b"RCPT TO:<b@x> NOTIFY=NEVER", b"RCPT TO:<c@x>", b"DATA"])
    protocol.send_command(b"RCPT TO:<d@x>")
    for d, reply in zip(
        protocol.pending,
        [Reply(250, ("ok",)), Reply(250, ("2.1.5 b ok",)), Reply(550, ("5.1.1 no", "such user")),
         Reply(354, ("go",)), Reply(451, ("later",))],
    ):
        d.callback(reply)
    assert replies.replies == [("b@x", 250, "2.1.5 b ok"), ("c@x", 550, "5.1.1 no\nsuch user"), ("d@x", 451, "later")]


def test_recipient_replies_refuse_a_protocol_without_the_methods() -> None:
    with pytest.raises(RuntimeError, match="cannot observe RCPT replies"):
        RecipientReplies().watch(object())
