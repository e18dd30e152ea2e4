"""
Starting and stopping a capture server from code.

Used by the embedded ``smtpsend`` run, the ``smtpsink`` twistd plugin and
the tests.  The reactor is always passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)

from ._config import CaptureLog, SinkConfig

__all__ = ["RunningSink", "build_sink_factory", "start_sink"]


@dataclass(frozen=True)
class RunningSink:
    """
    A capture server listening on a port.

    :ivar host: the address it listens on.
    :ivar port: the port number (useful when asked for port 0).
    :ivar config: its configuration.
    :ivar capture_log: the messages it has captured so far.
    """

    host: str
    port: int
    config: SinkConfig
    capture_log: CaptureLog
    listening: IListeningPort
    close_connections: Callable[[], Deferred[None]]

    async def stop(self) -> None:
        """Stop listening, then drop the connections still open."""
        await maybeDeferred(self.listening.stopListening)
        await self.close_connections()


def build_sink_factory(
    reactor: IReactorTime, config: SinkConfig, capture_log: CaptureLog
) -> Any:
    """
    The protocol factory of a capture server (a ``SinkFactory``: a
    ``ServerFactory`` with a ``close_all()`` method).

    Imports ``twisted.mail.smtp`` (and with it the global reactor) only
    now, when a reactor necessarily exists already.
    """
    from ._esmtp import SinkFactory

    return SinkFactory(config, capture_log, reactor)


def _endpoint(reactor: IReactorTCP, interface: str, port: int) -> IStreamServerEndpoint:
    # The endpoint constructors are not annotated.
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, interface=interface)  # type: ignore[no-untyped-call]
    return TCP4ServerEndpoint(reactor, port, interface=interface)  # type: ignore[no-untyped-call]


async def start_sink(
    reactor: IReactorTCP,
    config: SinkConfig,
    *,
    port: int = 0,
    interface: str = "127.0.0.1",
) -> RunningSink:
    """
    Start a capture server.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param config: how the server behaves.
    :param port: the port to listen on; 0 picks a free one.
    :param interface: the address to listen on (loopback by default: the
        sink accepts mail from anyone who can connect).
    :returns: the running server; call :meth:`RunningSink.stop` when done.
    """
    capture_log = CaptureLog()
    # The reactor provides IReactorTime too (documented above).
    factory = build_sink_factory(cast(IReactorTime, reactor), config, capture_log)
    listening = await _endpoint(reactor, interface, port).listen(factory)
    bound = listening.getHost()
    return RunningSink(
        host=interface,
        port=int(getattr(bound, "port", port)),
        config=config,
        capture_log=capture_log,
        listening=listening,
        close_connections=factory.close_all,
    )
