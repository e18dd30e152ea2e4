"""
TLS peers for the TLS tests: certificates made with trustme, aiosmtpd with
STARTTLS or implicit TLS, and a scripted Twisted SMTP server that records
every line it receives (in cleartext or over TLS) and can misbehave on
purpose (refuse STARTTLS, inject bytes after its 220, drop the connection
without close_notify).

Nothing here is a mock of the library: the servers are real peers on
127.0.0.1, the certificates real X.509 chains.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from realservers.ports import free_port
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, LogEvent, LogLevel, Logger, formatEvent
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

#: Upper bound for any awaited Deferred in these tests (a hang fails, it
#: does not block the run).
GUARD = 30.0


def guard(d: Deferred[Any], seconds: float = GUARD) -> Deferred[Any]:
    """Fail ``d`` with TimeoutError instead of letting a test hang."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


# -- certificates ----------------------------------------------------------------


@dataclass
class Certs:
    """Every certificate the TLS tests need, with the files the client reads."""

    ca: trustme.CA
    unknown_ca: trustme.CA
    server: trustme.LeafCert
    wrong_name: trustme.LeafCert
    expired: trustme.LeafCert
    untrusted: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: str
    unknown_ca_file: str
    client_cert_file: str
    client_key_file: str
    client_combined_file: str


def make_certs(directory: Path) -> Certs:
    """
    A trusted CA and a second, unknown one; leaves for ``localhost``,
    127.0.0.1 and ::1 (good, untrusted, expired) and for another name.
    """
    ca = trustme.CA(organization_name="twisted_smtpconn test CA")
    unknown_ca = trustme.CA(organization_name="unknown test CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    wrong_name = ca.issue_cert("wrong-name.example.test")
    expired = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    untrusted = unknown_ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.example.test")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    unknown_ca_file = directory / "unknown-ca.pem"
    unknown_ca.cert_pem.write_to_path(str(unknown_ca_file))
    client_cert_file = directory / "client-cert.pem"
    for index, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(client_cert_file), append=index > 0)
    client_key_file = directory / "client-key.pem"
    client.private_key_pem.write_to_path(str(client_key_file))
    combined = directory / "client-combined.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(combined))
    return Certs(
        ca=ca,
        unknown_ca=unknown_ca,
        server=server,
        wrong_name=wrong_name,
        expired=expired,
        untrusted=untrusted,
        client=client,
        ca_file=str(ca_file),
        unknown_ca_file=str(unknown_ca_file),
        client_cert_file=str(client_cert_file),
        client_key_file=str(client_key_file),
        client_combined_file=str(combined),
    )


def server_ssl_context(
    leaf: trustme.LeafCert,
    *,
    maximum_version: ssl.TLSVersion | None = None,
    client_ca: trustme.CA | None = None,
    sni_seen: list[str | None] | None = None,
) -> ssl.SSLContext:
    """A stdlib server context (for aiosmtpd) presenting ``leaf``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    if sni_seen is not None:

        def record(_sock: Any, name: str | None, _context: Any) -> None:
            sni_seen.append(name)

        context.sni_callback = record
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerCreator:
    """A Twisted server-side TLS creator presenting ``leaf`` (for the scripted server)."""

    def __init__(self, leaf: trustme.LeafCert, *, maximum_version: int | None = None) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        if maximum_version is not None:
            context.set_max_proto_version(maximum_version)
        with leaf.private_key_and_cert_chain_pem.tempfile() as path:
            context.use_certificate_chain_file(path)
            context.use_privatekey_file(path)
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)


# -- aiosmtpd ------------------------------------------------------------------------


@dataclass
class Delivery:
    """One message aiosmtpd accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    secure: bool
    authenticated: bool


def _over_tls(server: Any) -> bool:
    """Whether an aiosmtpd session runs over TLS (implicit or after STARTTLS)."""
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that records what reached the envelope stage."""

    mails: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    ehlos: list[tuple[str, bool]] = field(default_factory=list)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.ehlos.append((hostname, _over_tls(server)))
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.mails.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.deliveries.append(
            Delivery(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=bytes(envelope.original_content or b""),
                secure=_over_tls(server),
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 queued"


def accept_any_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """aiosmtpd authenticator: every login succeeds (the tests check where AUTH happens)."""
    from aiosmtpd.smtp import AuthResult

    return AuthResult(success=True, auth_data=auth_data)


@dataclass
class RunningAiosmtpd:
    """A started aiosmtpd controller and what it recorded."""

    controller: Controller
    handler: RecordingHandler
    port: int

    def stop(self) -> None:
        self.controller.stop()


def start_aiosmtpd(
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_context: ssl.SSLContext | None = None,
    authenticator: Callable[..., Any] | None = None,
    hostname: str = "127.0.0.1",
) -> RunningAiosmtpd:
    """
    aiosmtpd on ``hostname``: STARTTLS with ``tls_context``, or implicit
    TLS with ``implicit_context``.  With ``authenticator``, AUTH is offered
    only over TLS (aiosmtpd's ``auth_require_tls``).
    """
    handler = RecordingHandler()
    port = free_port(hostname)
    kwargs: dict[str, Any] = {}
    if tls_context is not None:
        kwargs["tls_context"] = tls_context
    if implicit_context is not None:
        kwargs["ssl_context"] = implicit_context
    if authenticator is not None:
        kwargs["authenticator"] = authenticator
        kwargs["auth_require_tls"] = True
    controller = Controller(handler, hostname=hostname, port=port, server_hostname="mx.test", **kwargs)
    controller.start()
    return RunningAiosmtpd(controller=controller, handler=handler, port=port)


# -- the scripted server -----------------------------------------------------------------


@dataclass
class Script:
    """How the scripted server behaves."""

    ehlo_cleartext: list[str] = field(default_factory=lambda: ["STARTTLS", "SIZE 1000000"])
    ehlo_tls: list[str] = field(default_factory=lambda: ["SIZE 2000000", "AUTH PLAIN"])
    #: The bytes answering STARTTLS, written in one call (may inject).
    starttls_reply: bytes = b"220 2.0.0 go ahead\r\n"
    #: Whether to start TLS after the STARTTLS reply.
    start_tls: bool = True
    #: What to do on QUIT over TLS: "close" (221, then close_notify and
    #: close); "drop-after-221" (221, then a moment later drop TCP without
    #: close_notify); "drop" (drop TCP at once: the 221 never leaves);
    #: "hang" (221, then stop reading: close_notify is never answered).
    on_quit: str = "close"


@dataclass
class Session:
    """What one connection to the scripted server carried."""

    lines: list[tuple[bool, bytes]] = field(default_factory=list)
    tls_done: bool = False

    def commands(self, *, secure: bool | None = None) -> list[bytes]:
        """The lines received, optionally only those in cleartext or over TLS."""
        return [line for tls, line in self.lines if secure is None or tls is secure]


class _ScriptedSMTP(LineReceiver):
    delimiter = b"\r\n"

    def __init__(self, script: Script, creator: ServerCreator, session: Session) -> None:
        self._script = script
        self._creator = creator
        self._session = session
        self._tls = False
        self._in_data = False
        self._drop_later: Any = None

    def connectionLost(self, reason: Any = None) -> None:
        if self._drop_later is not None and self._drop_later.active():
            self._drop_later.cancel()

    def connectionMade(self) -> None:
        self.sendLine(b"220 scripted.test ESMTP ready")

    def handshakeCompleted(self) -> None:
        self._session.tls_done = True

    def lineReceived(self, line: bytes) -> None:
        self._session.lines.append((self._tls, line))
        if self._in_data:
            if line == b".":
                self._in_data = False
                self.sendLine(b"250 2.0.0 queued")
            return
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"EHLO", b"LHLO"):
            words = self._script.ehlo_tls if self._tls else self._script.ehlo_cleartext
            lines = [b"scripted.test"] + [word.encode() for word in words]
            for index, text in enumerate(lines):
                sep = b" " if index == len(lines) - 1 else b"-"
                self.transport.write(b"250" + sep + text + b"\r\n")  # type: ignore[union-attr]
        elif verb == b"STARTTLS":
            self.transport.write(self._script.starttls_reply)  # type: ignore[union-attr]
            if self._script.start_tls and self._script.starttls_reply.startswith(b"220 "):
                self._tls = True
                self.transport.startTLS(self._creator)  # type: ignore[union-attr]
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 accepted")
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.sendLine(b"250 2.1.0 ok")
        elif verb == b"DATA":
            self._in_data = True
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self._quit()
        else:
            self.sendLine(b"502 5.5.1 not implemented")

    def _quit(self) -> None:
        from twisted.internet import reactor

        transport: Any = self.transport
        how = self._script.on_quit if self._tls else "close"
        if how == "drop":
            # abortConnection discards what is buffered (the 221 included)
            # and resets TCP: no close_notify.
            transport.abortConnection()
            return
        self.sendLine(b"221 2.0.0 bye")
        if how == "drop-after-221":
            self._drop_later = reactor.callLater(0.1, transport.abortConnection)
        elif how == "hang":
            transport.pauseProducing()
        else:
            transport.loseConnection()


class ScriptedServer:
    """A listening scripted SMTP server on 127.0.0.1 and its sessions."""

    def __init__(self, script: Script, creator: ServerCreator) -> None:
        self.script = script
        self.sessions: list[Session] = []
        self._creator = creator
        self._port: Any = None
        self._protocols: list[_ScriptedSMTP] = []

    def start(self) -> int:
        from twisted.internet import reactor

        def build() -> _ScriptedSMTP:
            session = Session()
            self.sessions.append(session)
            protocol = _ScriptedSMTP(self.script, self._creator, session)
            self._protocols.append(protocol)
            return protocol

        factory: Any = Factory.forProtocol(build)
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return int(self._port.getHost().port)

    def stop(self) -> Deferred[None]:
        """Stop listening and drop any connection still open (a "hang" one)."""
        for protocol in self._protocols:
            transport: Any = protocol.transport
            if transport is not None and transport.connected:
                transport.abortConnection()
        d: Deferred[None] = self._port.stopListening()
        return d


# -- logs --------------------------------------------------------------------------


@implementer(ILogObserver)
class LogCollector:
    """Collects the events of a Logger given to SMTPConnection(logger=...)."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def logger(self) -> Logger:
        return Logger(namespace="tls-test", observer=self)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") is LogLevel.warn]
