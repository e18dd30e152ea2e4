# -*- test-case-name: tests.test_wire, tests.test_bdat, tests.test_pipelined_sends -*-
"""
One mail transaction, DATA or BDAT: the choice between :mod:`._data` and
:mod:`._bdat`, made above both.

BDAT is used when the server offers CHUNKING, unless the connection prefers
DATA; binary content can only go as BDAT (see :func:`._bdat.use_chunking`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ._bdat import bdat_transaction, use_chunking
from ._commands import check_require_tls
from ._data import data_transaction
from ._ehlo import ServerInfo
from ._email import fit_to_server, is_email_message
from ._envelope import Envelope
from ._source import DEFAULT_CHUNK_SIZE
from ._protocol import SMTPClientProtocol
from ._sendinfo import SendInfo
from ._transaction import Commands, probe_envelope, render

__all__ = ["run_transaction", "run_probe"]


def run_transaction(
    protocol: SMTPClientProtocol,
    clock: IReactorTime,
    server: ServerInfo,
    envelope: Envelope,
    message: object,
    *,
    lmtp: bool,
    prefer_data: bool,
    tls_verified: bool = False,
    on_start: Callable[[], None] | None = None,
    on_written: Callable[[], None] | None = None,
) -> Coroutine[Any, Any, SendInfo]:
    """
    The coroutine that sends ``message`` to ``envelope``'s recipients over
    an open session.

    Everything that can be checked locally (addresses, parameters, SMTPUTF8,
    the server's SIZE limit, binary content) is checked now, before the
    coroutine exists, so a bad envelope never leaves a half-written command
    behind.  A send reports success only after the server's final 2xx.

    An email object (``email.message.Message``) is serialised here, where
    the server's extensions are known: ``BODY=8BITMIME`` and SMTPUTF8 as the
    message needs them, 8-bit text re-encoded as 7-bit for a server without
    8BITMIME, ``EMESSAGE`` when the server cannot carry it.

    :param tls_verified: the session is TLS with the server's certificate
        verified (what ``Envelope(require_tls=True)`` needs).
    :raises SMTPConnectionError: what the local checks found (``EENVELOPE``,
        ``EMESSAGE``, ``ETLS`` for REQUIRETLS), at once.
    """
    extensions = server.extensions
    check_require_tls(envelope, extensions, tls_verified=tls_verified)
    if is_email_message(message):
        envelope, prepared = fit_to_server(envelope, message, extensions)  # type: ignore[arg-type]
        message = b"".join(prepared.chunks) if prepared.size <= DEFAULT_CHUNK_SIZE else prepared.chunks
    pipelining = "PIPELINING" in extensions
    if use_chunking(extensions, envelope, prefer_data=prefer_data):
        commands = render(envelope, extensions, body="BINARYMIME" if envelope.binary else None)
        return bdat_transaction(
            protocol,
            clock,
            commands,
            message,
            pipelining=pipelining,
            lmtp=lmtp,
            binary=envelope.binary,
            on_start=on_start,
        )
    commands = render(envelope, extensions)
    return data_transaction(
        protocol,
        clock,
        commands,
        message,
        pipelining=pipelining,
        lmtp=lmtp,
        on_start=on_start,
        on_written=on_written,
    )


def run_probe(
    protocol: SMTPClientProtocol, clock: IReactorTime, server: ServerInfo, envelope: Envelope, *, rcpt: bool
) -> Coroutine[Any, Any, SendInfo]:
    """
    The coroutine of :meth:`SMTPConnection.probe_envelope`: MAIL (and, with
    ``rcpt``, the RCPTs) rendered as a send would render them, then RSET.

    :raises SMTPConnectionError: what the local checks found, at once.
    """
    extensions = server.extensions
    commands = render(envelope, extensions)
    if not rcpt:
        commands = Commands(commands.mail, ())
    return probe_envelope(protocol, clock, commands, pipelining="PIPELINING" in extensions)
