# -*- test-case-name: tests.test_wire, tests.test_interop, tests.test_reliability -*-
"""
The :class:`~twisted.internet.protocol.ClientFactory` that builds the wire
protocol, and the code that opens a transport for it.

Connections go through Twisted endpoints: a TCP endpoint (for a host name,
:class:`HostnameEndpoint`, which tries every address of the host; for an IP
literal, a plain TCP endpoint, with no trip to the resolver's thread), a
proxy's tunnel (:mod:`._proxy`), an endpoint the caller gave, or an adopted
socket.  Through endpoints
``clientConnectionFailed`` is never called: failures arrive on the
endpoint's Deferred, so the factory only builds protocols.

``connection_timeout`` is kept here, for the TCP connect (the protocol keeps
every later time limit): the endpoint's own timeout is set past ours, so
that the error for a connect that did not complete in time always says so,
whatever stage (resolving, connecting) the endpoint was in.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from ._errors import ConnectionFailedError, SMTPConnectionError, SMTPTimeoutError
from ._logging import WireLog
from ._options import ConnectionOptions
from ._protocol import SMTPClientProtocol
from ._proxy import proxy_endpoint

__all__ = ["SMTPClientFactory", "open_protocol"]

#: How much longer than ``connection_timeout`` the endpoint may try, so that
#: our own timer always fires first.
_ENDPOINT_GRACE = 1.0


class SMTPClientFactory(ClientFactory):
    """Builds one :class:`SMTPClientProtocol` with the connection's settings."""

    #: The connection logs its own events; "Starting factory" lines for
    #: every connection would only bury them.
    noisy = False

    def __init__(self, *, clock: IReactorTime, options: ConnectionOptions, wire_log: WireLog) -> None:
        self._clock = clock
        self._options = options
        self._wire_log = wire_log
        #: Fires with the protocol once its connection is made (adopted sockets).
        self.made: Deferred[SMTPClientProtocol] = Deferred()

    def buildProtocol(self, addr: IAddress | None) -> SMTPClientProtocol:
        protocol = _NotifyingProtocol(
            self.made,
            clock=self._clock,
            wire_log=self._wire_log,
            greeting_timeout=self._options.greeting_timeout,
            socket_timeout=self._options.socket_timeout,
            connection_timeout=self._options.connection_timeout,
            tls_first=self._options.secure,
        )
        protocol.factory = self
        return protocol


class _NotifyingProtocol(SMTPClientProtocol):
    """Tells its factory when the connection is made (for adopted sockets)."""

    def __init__(self, made: Deferred[SMTPClientProtocol], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._made_d = made

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self._made_d.called:
            self._made_d.callback(self)


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _endpoint_for(reactor: Any, options: ConnectionOptions) -> Any:
    if options.endpoint is not None:
        return options.endpoint
    bind = (options.local_address, 0) if options.local_address else None
    timeout = options.connection_timeout + _ENDPOINT_GRACE
    if options.proxy is not None:
        return proxy_endpoint(reactor, options.proxy, options.host, options.port, timeout=timeout, bind_address=bind)
    version = _ip_version(options.host)
    if version == 4:
        return TCP4ClientEndpoint(reactor, options.host, options.port, timeout=timeout, bindAddress=bind)
    if version == 6:
        return TCP6ClientEndpoint(reactor, options.host, options.port, timeout=timeout, bindAddress=bind)  # type: ignore[no-untyped-call]
    return HostnameEndpoint(reactor, options.host, options.port, timeout=timeout, bindAddress=bind)


def _adopt(reactor: Any, sock: socket.socket, factory: SMTPClientFactory) -> Deferred[SMTPClientProtocol]:
    """Hand an already-connected socket to the reactor."""
    reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
    # The reactor duplicated the descriptor; ours is no longer needed.
    sock.close()
    return factory.made


def open_protocol(reactor: Any, options: ConnectionOptions, factory: SMTPClientFactory) -> Deferred[SMTPClientProtocol]:
    """
    Connect and return the protocol once TCP (or the caller's endpoint) is up.

    Cancelling the returned Deferred abandons the attempt (the endpoint drops
    whatever it had started) and fails it with ``ECONNECTION``.

    :returns: a Deferred failing with ``ECONNECTION``, or ``ETIMEDOUT`` when
        the connect did not complete within ``connection_timeout``.
    """
    if options.connection is not None:
        return _adopt(reactor, options.connection, factory)
    where = f"{options.host}:{options.port}"
    timed_out: list[bool] = []
    attempt: Deferred[SMTPClientProtocol] = _endpoint_for(reactor, options).connect(factory)

    def expire() -> None:
        timed_out.append(True)
        attempt.cancel()

    timer = reactor.callLater(options.connection_timeout, expire)

    def settle(result: object) -> object:
        if timer.active():
            timer.cancel()
        if not isinstance(result, Failure):
            return result
        error = result.value
        if timed_out:
            raise SMTPTimeoutError(
                f"could not connect to {where}: the connect timed out after {options.connection_timeout:g} s"
            )
        if isinstance(error, SMTPConnectionError):
            raise error
        if isinstance(error, (CancelledError, ConnectingCancelledError)):
            raise ConnectionFailedError(f"connecting to {where} was abandoned")
        raise ConnectionFailedError(f"could not connect to {where}: {result.getErrorMessage()}")

    return attempt.addBoth(settle)
