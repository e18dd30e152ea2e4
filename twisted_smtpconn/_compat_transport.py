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
* :class:`RecipientReplies` records the reply to each ``RCPT TO`` command,
  which twisted.mail reports for every recipient, accepted ones included.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ._errors import ConnectionFailedError

__all__ = ["Relay", "ConnectedEndpoint", "RecipientReplies"]


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
    """
    An endpoint whose one connection is the relay's, already made.

    :param on_protocol: called with each protocol it attaches, before the
        protocol sees any byte (the recipient-reply recorder hooks in here).
    """

    def __init__(self, relay: Relay, on_protocol: Any = None) -> None:
        self._relay = relay
        self._on_protocol = on_protocol

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
        if self._on_protocol is not None:
            try:
                self._on_protocol(protocol)
            except Exception as error:  # noqa: BLE001 - reported on the Deferred
                return fail(error)
        relay.attach(protocol)
        return succeed(protocol)


class RecipientReplies:
    """
    Records the reply to every ``RCPT TO`` the library's protocol sends.

    :class:`~twisted_smtpconn.SendInfo` names the accepted recipients but
    not what the server said to each, which twisted.mail's result holds.
    Until it does, the replies are read off the protocol's command methods
    (``send_command``/``send_commands``), wrapped on this one instance.

    :ivar replies: ``(address, code, text)`` per RCPT, in command order.
    """

    def __init__(self) -> None:
        self.replies: list[tuple[str, int, str]] = []

    def watch(self, protocol: Any) -> None:
        """
        Wrap ``protocol``'s command methods.

        :raises RuntimeError: when the protocol has no such methods (the
            library changed underneath compat: its tests fail loudly).
        """
        send_command = getattr(protocol, "send_command", None)
        send_commands = getattr(protocol, "send_commands", None)
        if send_command is None or send_commands is None:
            raise RuntimeError("twisted_smtpconn.compat cannot observe RCPT replies of this protocol")

        inside_several = False

        def one(line: bytes, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = send_command(line, **kwargs)
            if not inside_several:
                self._observe(line, d)
            return d

        def several(lines: list[bytes]) -> list[Deferred[Any]]:
            # send_commands may be written on top of send_command: count once.
            nonlocal inside_several
            inside_several = True
            try:
                waiters: list[Deferred[Any]] = send_commands(lines)
            finally:
                inside_several = False
            for line, d in zip(lines, waiters):
                self._observe(line, d)
            return waiters

        protocol.send_command = one
        protocol.send_commands = several

    def _observe(self, line: bytes, d: Deferred[Any]) -> None:
        if not line[:8].upper() == b"RCPT TO:":
            return
        address = _rcpt_address(line)
        slot = len(self.replies)
        self.replies.append((address, -1, ""))

        def record(reply: Any) -> Any:
            self.replies[slot] = (address, reply.code, "\n".join(reply.lines))
            return reply

        d.addCallback(record)


def _rcpt_address(line: bytes) -> str:
    """The path of a ``RCPT TO:<path> params`` line the library rendered."""
    text = line[8:].decode("utf-8", "replace").strip()
    if text.startswith("<"):
        end = text.find(">")
        if end != -1:
            return text[1:end]
    return text.split(" ", 1)[0]
