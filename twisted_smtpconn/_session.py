# -*- test-case-name: tests.test_wire, tests.test_tls_wire, tests.test_adversarial -*-
"""
The opening of a session and the commands that are not a transaction:
implicit TLS, the greeting, EHLO (HELO when EHLO is refused) or LHLO,
STARTTLS with the hello said again, the ``opportunistic_tls`` retry in
cleartext, and RSET.

STARTTLS repeats the hello and starts again from nothing (RFC 3207 section
4.2): a fresh :class:`~._ehlo.ServerInfo` replaces the old one, and nothing
learned in cleartext survives.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed

from ._commands import ehlo_command
from ._ehlo import ServerInfo, server_info
from ._errors import ProtocolError, SMTPConnectionError
from ._options import ConnectionOptions
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._tls import TLSPolicy

__all__ = ["Session", "open_session", "reset_session", "default_client_name"]

#: Replies to EHLO after which HELO is worth trying (RFC 5321 4.1.4 and
#: the codes old servers use for "command not recognised").
_EHLO_UNSUPPORTED = frozenset({500, 501, 502, 504, 550})


@dataclass(frozen=True)
class Session:
    """An opened session: its wire, what the server said, whether it is TLS."""

    protocol: SMTPClientProtocol
    server: ServerInfo
    greeting: str
    secure: bool


async def read_greeting(protocol: SMTPClientProtocol) -> Reply:
    """
    Wait for the 220 greeting.

    :raises ProtocolError: for any other greeting (554 "no service" included:
        the server does not want this session).
    """
    reply = await protocol.wait_greeting()
    protocol.greeting_received()
    if reply.code != 220:
        raise ProtocolError.from_reply("the server's greeting was not 220", reply)
    return reply


async def say_hello(protocol: SMTPClientProtocol, name: str, *, lmtp: bool) -> ServerInfo:
    """
    Introduce ourselves; fall back to HELO when EHLO is not understood.

    :raises ProtocolError: when the server refuses every form of hello.
    """
    verb = "LHLO" if lmtp else "EHLO"
    line = ehlo_command(verb, name)
    reply = await protocol.send_command(line)
    if reply.is_positive:
        return server_info(reply)
    if lmtp or reply.code not in _EHLO_UNSUPPORTED:
        raise ProtocolError.from_reply(f"the server refused {verb}", reply, line.decode())
    helo = ehlo_command("HELO", name)
    reply = await protocol.send_command(helo)
    if not reply.is_positive:
        raise ProtocolError.from_reply("the server refused both EHLO and HELO", reply, helo.decode())
    return ServerInfo()


async def reset_session(protocol: SMTPClientProtocol) -> Reply:
    """
    RSET: abandon the current transaction.

    :raises ProtocolError: if the server refuses (the connection is then in
        an unknown state, and an ``EPROTOCOL`` error closes it).
    """
    reply = await protocol.send_command(b"RSET")
    if not reply.is_positive:
        raise ProtocolError.from_reply("the server refused RSET", reply, "RSET")
    return reply


async def _open_once(
    protocol: SMTPClientProtocol, options: ConnectionOptions, tls: TLSPolicy, reactor: Any
) -> Session:
    """Implicit TLS, greeting, hello, STARTTLS and the hello again, on one transport."""
    try:
        await tls.start_implicit(protocol)
    except BaseException:
        # The greeting, awaited since the connection was made, will never
        # come: its failure is this one.
        protocol.wait_greeting().addErrback(lambda _: None)
        raise
    try:
        greeting = await read_greeting(protocol)
    except SMTPConnectionError as error:
        raise tls.after_handshake(protocol, error) from None
    name = options.name or await default_client_name(reactor, protocol)
    server = await say_hello(protocol, name, lmtp=options.lmtp)
    upgraded = await tls.negotiate(protocol, server, lambda: say_hello(protocol, name, lmtp=options.lmtp))
    if upgraded is not None:
        # Replaced, never merged: nothing said in cleartext survives TLS.
        server = upgraded
    return Session(protocol, server, greeting.text, tls.is_secure(protocol))


async def open_session(
    open_transport: Callable[[], Awaitable[SMTPClientProtocol]],
    options: ConnectionOptions,
    tls: TLSPolicy,
    reactor: Any,
) -> Session:
    """
    Open a transport with ``open_transport`` and run the session's opening.

    With ``opportunistic_tls``, a failed STARTTLS handshake (which takes the
    transport with it) is followed by one more transport on which STARTTLS
    is not tried.

    :raises SMTPConnectionError: why the session could not be opened; the
        transport is failed (aborted) by then.
    """
    protocol = await open_transport()
    try:
        return await _open_once(protocol, options, tls, reactor)
    except SMTPConnectionError as error:
        if not tls.may_retry_in_cleartext(error):
            raise
        # The handshake failed and took the connection with it: let that
        # transport go without it counting as the connection's end.
        protocol.on_lost = None
        protocol.on_idle_failure = None
        protocol.expect_close()
        protocol.abort(error)
        tls.retry_in_cleartext(error)
    protocol = await open_transport()
    return await _open_once(protocol, options, tls, reactor)


def _address_literal(host: Any) -> str:
    """``[127.0.0.1]`` or ``[IPv6:::1]`` for our end of the connection."""
    address = getattr(host, "host", None)
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else None
    except ValueError:
        ip = None
    if ip is None:
        return "[127.0.0.1]"
    if ip.version == 6:
        return f"[IPv6:{ip.compressed}]"
    return f"[{ip.compressed}]"


def _usable_fqdn(candidate: str) -> bool:
    labels = candidate.rstrip(".").split(".")
    if len(labels) < 2 or candidate.lower().startswith("localhost"):
        return False
    return all(
        0 < len(label) < 64 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    )


#: This host's name once looked up (a usable FQDN, or "" when there is
#: none), so that only the first connection of a process pays for the
#: thread round trip and the DNS lookup behind it.
_fqdn: list[str] = []


def _remember(fqdn: str) -> str:
    if not _fqdn:
        _fqdn.append(fqdn if _usable_fqdn(fqdn) else "")
    return _fqdn[0]


def default_client_name(reactor: Any, protocol: SMTPClientProtocol) -> Deferred[str]:
    """
    This host's fully qualified name, else an address literal.

    ``socket.getfqdn`` may block on DNS, so it runs in the reactor's thread
    pool, once per process; reactors without threads (test clocks) get the
    address literal.
    """
    literal = _address_literal(protocol.transport.getHost() if protocol.transport else None)
    if _fqdn:
        return succeed(_fqdn[0] or literal)
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return succeed(literal)
    from twisted.internet.threads import deferToThreadPool

    d: Deferred[str] = deferToThreadPool(reactor, get_pool(), socket.getfqdn)
    d.addCallback(lambda fqdn: _remember(fqdn) or literal)
    d.addErrback(lambda _: literal)
    return d

