"""
The :class:`~twisted.internet.protocol.ClientFactory` that builds the wire
protocol, and the code that opens a transport for it.

Connections go through Twisted endpoints: a :class:`HostnameEndpoint` (which
tries every address of the host, binds ``local_address`` and honours
``connection_timeout``), an endpoint the caller gave, or an adopted socket.
Through endpoints ``clientConnectionFailed`` is never called: failures arrive
on the endpoint's Deferred, so the factory only builds protocols.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.error import TimeoutError as TCPTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from ._errors import ConnectionFailedError, SMTPConnectionError, SMTPTimeoutError
from ._logging import WireLog
from ._options import ConnectionOptions
from ._protocol import SMTPClientProtocol

__all__ = ["SMTPClientFactory", "open_protocol"]


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
        )
        protocol.factory = self
        return protocol


class _NotifyingProtocol(SMTPClientProtocol):
    """Tells its factory when the connection is made (for adopted sockets)."""

    def __init__(self, made: Deferred[SMTPClientProtocol], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._made = made

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self._made.called:
            self._made.callback(self)


def _endpoint_for(reactor: Any, options: ConnectionOptions) -> Any:
    if options.endpoint is not None:
        return options.endpoint
    bind = (options.local_address, 0) if options.local_address else None
    return HostnameEndpoint(
        reactor, options.host, options.port, timeout=options.connection_timeout, bindAddress=bind
    )


def _adopt(reactor: Any, sock: socket.socket, factory: SMTPClientFactory) -> Deferred[SMTPClientProtocol]:
    """Hand an already-connected socket to the reactor."""
    reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
    # The reactor duplicated the descriptor; ours is no longer needed.
    sock.close()
    return factory.made


def _as_connection_error(failure: Failure, options: ConnectionOptions) -> SMTPConnectionError:
    """Turn whatever the endpoint failed with into ECONNECTION or ETIMEDOUT."""
    error = failure.value
    if isinstance(error, SMTPConnectionError):
        return error
    where = f"{options.host}:{options.port}"
    if isinstance(error, (DeferTimeout, CancelledError, TCPTimeout)):
        return SMTPTimeoutError(f"could not connect to {where} within {options.connection_timeout:g} s")
    return ConnectionFailedError(f"could not connect to {where}: {failure.getErrorMessage()}")


def _raise_connection_error(failure: Failure, options: ConnectionOptions) -> SMTPClientProtocol:
    raise _as_connection_error(failure, options)


def open_protocol(
    reactor: Any, options: ConnectionOptions, factory: SMTPClientFactory, wrap_endpoint: Any = None
) -> Deferred[SMTPClientProtocol]:
    """
    Connect and return the protocol once TCP (or the caller's endpoint) is up.

    :param wrap_endpoint: a callable applied to the endpoint first (implicit
        TLS wraps it with ``wrapClientTLS``).
    :returns: a Deferred failing with ``ECONNECTION`` or ``ETIMEDOUT``.
    """
    if options.connection is not None:
        d = _adopt(reactor, options.connection, factory)
    else:
        endpoint = _endpoint_for(reactor, options)
        if wrap_endpoint is not None:
            endpoint = wrap_endpoint(endpoint)
        d = endpoint.connect(factory)
        d.addTimeout(options.connection_timeout, reactor)
    return d.addErrback(_raise_connection_error, options)
