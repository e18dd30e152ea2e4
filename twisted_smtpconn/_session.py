"""
The opening of a session: greeting, then EHLO (HELO when EHLO is refused)
or LHLO for LMTP, and what the server said about itself.

Kept apart from the transaction code because STARTTLS repeats the hello and
must start again from nothing (RFC 3207 section 4.2): a fresh
:class:`ServerInfo` replaces the old one, and nothing learned in cleartext
survives.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed

from ._commands import ehlo_command
from ._ehlo import auth_mechanisms, parse_ehlo
from ._errors import ConnectionFailedError, ProtocolError, SMTPConnectionError
from ._protocol import SMTPClientProtocol
from ._reply import Reply

__all__ = ["ServerInfo", "read_greeting", "say_hello", "default_client_name", "closing_error"]

#: Replies to EHLO after which HELO is worth trying (RFC 5321 4.1.4 and
#: the codes old servers use for "command not recognised").
_EHLO_UNSUPPORTED = frozenset({500, 501, 502, 504, 550})


@dataclass(frozen=True)
class ServerInfo:
    """What the server told us in its hello reply."""

    extensions: dict[str, str] = field(default_factory=dict)
    auth_methods: list[str] = field(default_factory=list)
    esmtp: bool = False


def closing_error(reply: Reply, command: str | None) -> SMTPConnectionError:
    """The error for a 421: the server is closing the transmission channel."""
    return ConnectionFailedError(
        "the server is closing the connection",
        response=str(reply),
        response_code=reply.code,
        command=command,
        enhanced_status=reply.enhanced_status,
    )


async def read_greeting(protocol: SMTPClientProtocol) -> Reply:
    """
    Wait for the 220 greeting.

    :raises ProtocolError: for any other greeting (554 "no service" included:
        the server does not want this session).
    """
    reply = await protocol.wait_greeting()
    protocol.greeting_received()
    if reply.code == 421:
        raise closing_error(reply, None)
    if reply.code != 220:
        raise ProtocolError(
            "the server's greeting was not 220",
            response=str(reply),
            response_code=reply.code,
            enhanced_status=reply.enhanced_status,
        )
    return reply


async def say_hello(protocol: SMTPClientProtocol, name: str, *, lmtp: bool) -> ServerInfo:
    """
    Introduce ourselves; fall back to HELO when EHLO is not understood.

    :raises ProtocolError: when the server refuses every form of hello.
    """
    verb = "LHLO" if lmtp else "EHLO"
    line = ehlo_command(verb, name)
    reply = await protocol.send_command(line)
    if reply.code == 421:
        raise closing_error(reply, line.decode())
    if reply.is_positive:
        extensions = parse_ehlo(reply)
        return ServerInfo(extensions=extensions, auth_methods=auth_mechanisms(extensions), esmtp=True)
    if lmtp or reply.code not in _EHLO_UNSUPPORTED:
        raise ProtocolError(
            f"the server refused {verb}",
            response=str(reply),
            response_code=reply.code,
            command=line.decode(),
            enhanced_status=reply.enhanced_status,
        )
    helo = ehlo_command("HELO", name)
    reply = await protocol.send_command(helo)
    if reply.code == 421:
        raise closing_error(reply, helo.decode())
    if not reply.is_positive:
        raise ProtocolError(
            "the server refused both EHLO and HELO",
            response=str(reply),
            response_code=reply.code,
            command=helo.decode(),
            enhanced_status=reply.enhanced_status,
        )
    return ServerInfo()


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


def default_client_name(reactor: Any, protocol: SMTPClientProtocol) -> Deferred[str]:
    """
    This host's fully qualified name, else an address literal.

    ``socket.getfqdn`` may block on DNS, so it runs in the reactor's thread
    pool; reactors without threads (test clocks) get the address literal.
    """
    literal = _address_literal(protocol.transport.getHost() if protocol.transport else None)
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is None:
        return succeed(literal)
    from twisted.internet.threads import deferToThreadPool

    d: Deferred[str] = deferToThreadPool(reactor, get_pool(), socket.getfqdn)
    d.addCallback(lambda fqdn: fqdn if _usable_fqdn(fqdn) else literal)
    d.addErrback(lambda _: literal)
    return d
