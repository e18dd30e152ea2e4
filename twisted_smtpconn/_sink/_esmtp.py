"""
The capture server's protocol, built on Twisted's own ESMTP server classes.

``twisted.mail.smtp.ESMTP`` already parses commands, runs STARTTLS and the
SASL challenge/response dance through ``twisted.cred``; this module adds
what a capture sink for testing needs on top:

* AUTH (PLAIN, LOGIN) is advertised and accepted only after STARTTLS, so a
  client that would send a password in cleartext is caught (538).
* MAIL and RCPT parameters (SIZE, BODY, RET, ENVID, NOTIFY, ORCPT) are
  recorded with the message, so a test can check what its client asked for.
* One Maildir file per *transaction* (Twisted's default is one message
  object per recipient), with the full recipient list in the record.
* Configured recipients are refused with 550 or 450 to exercise a client's
  partial-failure handling; ``SIZE`` is advertised and enforced.

``twisted.mail.smtp`` imports the global reactor at import time.  This
module is therefore imported only from functions that run once a reactor
exists (:func:`twisted_smtpconn._sink._server.start_sink` and the twistd
plugin's ``makeService``), never from a package ``__init__``.
"""

from __future__ import annotations

# twisted.mail.smtp has no annotations; calling into it (and overriding its
# methods) is this module's whole purpose.
# mypy: disable-error-code="no-untyped-call"

import email.utils
import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess, ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime, IDelayedCall
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import CertificateOptions
from twisted.mail import smtp
from twisted.mail.imap4 import PLAINCredentials
from twisted.mail.interfaces import IMessageDelivery, IMessageDeliveryFactory
from zope.interface import implementer

from ._config import CaptureLog, CapturedMessage, SinkConfig
from ._maildir import MaildirDraft, MaildirStore

__all__ = ["SinkFactory", "server_tls_options"]

#: Seconds of client silence before the sink says 421 and hangs up.
_IDLE_TIMEOUT = 300


def server_tls_options(cert_path: Path, key_path: Path) -> CertificateOptions:
    """
    The STARTTLS context for a certificate file (leaf first, then any
    intermediates) and its key.

    The certificates and key are handed to pyOpenSSL as ``cryptography``
    objects: passing pyOpenSSL ``X509``/``PKey`` objects is deprecated.
    Twisted's annotations still name the pyOpenSSL types, hence the casts.
    """
    certificates = x509.load_pem_x509_certificates(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    leaf, *chain = certificates
    return CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, leaf),
        extraCertChain=cast(Any, chain),
    )


class _PlainCredentials(PLAINCredentials):
    """
    PLAIN that answers a malformed response with 535 instead of letting the
    parse error escape from ``lineReceived`` (which drops the connection).
    """

    def setResponse(self, response: bytes) -> None:
        parts = response.split(b"\0")
        if len(parts) == 3:
            self.username, self.password = parts[1], parts[2]
        else:
            self.username, self.password = b"", b""


@implementer(ICredentialsChecker)
class _PasswordChecker:
    """Checks AUTH credentials against the configured throwaway users."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: Sequence[tuple[str, str]]) -> None:
        self._users = {u.encode("utf-8"): p.encode("utf-8") for u, p in users}

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        username = credentials.username or b""
        password = credentials.password or b""
        expected = self._users.get(username)
        # compare_digest even for unknown users, so timing says nothing.
        ok = hmac.compare_digest(expected if expected is not None else b"\0", password)
        if expected is not None and ok:
            return defer.succeed(username)
        return defer.fail(UnauthorizedLogin("bad user name or password"))


class _DiscardedCopy:
    """
    The message object for the 2nd and later recipients of a transaction:
    Twisted asks for one per recipient, the sink stores one per transaction.
    """

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


class _CapturedCopy:
    """Streams a transaction's data into a Maildir draft."""

    def __init__(self, transaction: _Transaction, draft: MaildirDraft) -> None:
        self._transaction = transaction
        self._draft = draft
        self._received = 0
        self._limit = transaction.protocol.config.max_size

    def lineReceived(self, line: bytes) -> None:
        self._received += len(line) + 2
        if self._received > self._limit:
            # Twisted's DATA state reports the code once the final "." arrives.
            raise smtp.SMTPServerError(552, b"5.3.4 Message size exceeds fixed maximum")
        self._draft.write_line(line)

    def eomReceived(self) -> defer.Deferred[None]:
        try:
            path = self._draft.commit()
        except OSError as e:
            return defer.fail(e)
        self._transaction.captured(path, self._received)
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self._draft.discard()


@implementer(IMessageDelivery)
class _Transaction:
    """
    One MAIL transaction: validates the envelope, collects its parameters,
    and hands out the per-recipient message objects Twisted asks for.
    """

    def __init__(self, protocol: SinkESMTP, user: str | None) -> None:
        self.protocol = protocol
        self.user = user
        self.mail_from = ""
        self.mail_parameters: tuple[str, ...] = ()
        self.recipients: list[tuple[str, tuple[str, ...]]] = []
        self._copies = 0

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        # The capture copy writes its own header, naming every recipient.
        return None

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        self.mail_from = str(origin)
        self.mail_parameters = self.protocol.take_parameters()
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], object]:
        address = str(user.dest)
        parameters = self.protocol.take_parameters()
        config = self.protocol.config
        if address.lower() in config.reject:
            raise smtp.SMTPServerError(550, f"5.1.1 <{address}>: recipient rejected")
        if address.lower() in config.defer:
            raise smtp.SMTPServerError(450, f"4.2.1 <{address}>: try again later")
        self.recipients.append((address, parameters))
        return self._new_copy

    def _new_copy(self) -> object:
        self._copies += 1
        if self._copies > 1:
            return _DiscardedCopy()
        draft = self.protocol.store.open_message()
        for line in self._received_header():
            draft.write_line(line)
        return _CapturedCopy(self, draft)

    def _received_header(self) -> list[bytes]:
        protocol = self.protocol
        kind = "ESMTP" + ("S" if protocol.startedTLS else "") + ("A" if self.user else "")
        helo = protocol.helo_name() or "unknown"
        peer = protocol.peer_host()
        rcpt = ", ".join(f"<{r}>" for r, _ in self.recipients)
        return [
            f"Received: from {helo} ([{peer}])".encode(),
            f"\tby {protocol.config.hostname} with {kind} (twisted_smtpconn smtpsink)".encode(),
            f"\tfor {rcpt}; {email.utils.formatdate(localtime=True)}".encode(),
        ]

    def captured(self, path: Path, size: int) -> None:
        protocol = self.protocol
        protocol.capture_log.add(
            CapturedMessage(
                path=path,
                mail_from=self.mail_from,
                rcpt_to=tuple(r for r, _ in self.recipients),
                mail_parameters=self.mail_parameters,
                rcpt_parameters=tuple(p for _, p in self.recipients),
                size=size,
                tls=bool(protocol.startedTLS),
                user=self.user,
                helo=protocol.helo_name(),
                peer=protocol.peer_host(),
            )
        )


@implementer(IMessageDeliveryFactory)
class _TransactionFactory:
    """The avatar of a login: a new :class:`_Transaction` per MAIL."""

    def __init__(self, protocol: SinkESMTP, user: str | None) -> None:
        self._protocol = protocol
        self._user = user

    def getMessageDelivery(self) -> _Transaction:
        return _Transaction(self._protocol, self._user)


@implementer(IRealm)
class _Realm:
    """
    Turns a successful (or anonymous) login into a transaction factory.

    One realm per connection, so the avatar knows its protocol: whether
    it runs over TLS, its peer, and where to record captures.
    """

    def __init__(self, protocol: SinkESMTP) -> None:
        self._protocol = protocol

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, object, Callable[[], None]]:
        if IMessageDeliveryFactory not in interfaces:
            raise NotImplementedError("the sink only delivers messages")
        user = None if avatarId is ANONYMOUS else bytes(avatarId).decode("utf-8", "replace")
        return IMessageDeliveryFactory, _TransactionFactory(self._protocol, user), lambda: None


class SinkESMTP(smtp.ESMTP):
    """The capture server's ESMTP protocol for one connection."""

    def __init__(
        self,
        config: SinkConfig,
        store: MaildirStore,
        capture_log: CaptureLog,
        tls: CertificateOptions | None,
    ) -> None:
        challengers = {b"PLAIN": _PlainCredentials, b"LOGIN": smtp.LOGINCredentials}
        super().__init__(challengers, tls)
        self.config = config
        self.store = store
        self.capture_log = capture_log
        self.host = config.hostname.encode("idna")
        self.timeout = _IDLE_TIMEOUT
        # The sink logs one line per captured message itself.
        self.noisy = False
        self._parameters: tuple[str, ...] = ()
        #: Fires once the connection is gone (see SinkFactory.close_all).
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        factory = getattr(self, "factory", None)
        if isinstance(factory, SinkFactory):
            factory.live.discard(self)
        self.closed.callback(None)

    # -- what the transaction objects ask the protocol --------------------

    def take_parameters(self) -> tuple[str, ...]:
        """The ESMTP parameters of the MAIL/RCPT being validated, once."""
        parameters, self._parameters = self._parameters, ()
        return parameters

    def helo_name(self) -> str:
        name = self._helo[0] if self._helo else None
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else ""

    def peer_host(self) -> str:
        assert self.transport is not None
        peer: IAddress = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    # -- extensions and their gates --------------------------------------

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        ext: dict[bytes, list[bytes] | None] = super().extensions()
        if not self.startedTLS:
            # Never invite a password over cleartext.
            ext.pop(b"AUTH", None)
        ext[b"SIZE"] = [str(self.config.max_size).encode()]
        ext[b"8BITMIME"] = None
        ext[b"DSN"] = None
        return ext

    def ext_STARTTLS(self, rest: bytes) -> None:
        was_tls = self.startedTLS
        super().ext_STARTTLS(rest)
        if self.startedTLS and not was_tls:
            # RFC 3207 section 4.2: forget everything learnt in cleartext.
            self._helo = (None, self._helo[1] if self._helo else None)
            self._from = None
            self._to = []

    def greeting(self) -> bytes:
        # Twisted's default greeting ("NO UCE NO UBE NO RELAY PROBES") is
        # meant for a public server; say what this one is instead.
        return self.config.hostname.encode("idna") + b" ESMTP twisted_smtpconn smtpsink"

    def do_NOOP(self, rest: bytes) -> None:
        # Twisted's server has no NOOP; clients use it as a keep-alive.
        self.sendCode(250, b"2.0.0 OK")

    def ext_AUTH(self, rest: bytes) -> None:
        if not self.startedTLS:
            self.sendCode(538, b"5.7.11 Encryption required: use STARTTLS before AUTH")
            return
        super().ext_AUTH(rest)

    def do_MAIL(self, rest: bytes) -> None:
        match = self.mail_re.match(rest)
        parameters = _split_parameters(match.group("opts") if match else None)
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.upper() == "SIZE" and value.isdigit() and int(value) > self.config.max_size:
                self.sendCode(552, b"5.3.4 Message size exceeds fixed maximum")
                return
        self._parameters = parameters
        super().do_MAIL(rest)

    def do_RCPT(self, rest: bytes) -> None:
        match = self.rcpt_re.match(rest)
        self._parameters = _split_parameters(match.group("opts") if match else None)
        super().do_RCPT(rest)

    def validateFrom(self, helo: Any, origin: smtp.Address) -> Any:
        if self.config.require_auth and not self.authenticated:
            raise smtp.SMTPServerError(530, "5.7.0 Authentication required")
        return super().validateFrom(helo, origin)


def _split_parameters(raw: bytes | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(raw.decode("utf-8", "replace").split())


class SinkFactory(ServerFactory):
    """
    Builds a :class:`SinkESMTP` per connection, all sharing one Maildir and
    one capture log.
    """

    noisy = False

    def __init__(
        self,
        config: SinkConfig,
        capture_log: CaptureLog,
        reactor: IReactorTime,
    ) -> None:
        self.config = config
        self.capture_log = capture_log
        self.store = MaildirStore(config.maildir)
        self._reactor = reactor
        self._tls = (
            server_tls_options(config.cert_path, config.key_path)
            if config.cert_path is not None and config.key_path is not None
            else None
        )
        #: The connections currently open.
        self.live: set[SinkESMTP] = set()
        checkers: list[ICredentialsChecker] = [_PasswordChecker(config.users)]
        if not config.require_auth:
            checkers.append(AllowAnonymousAccess())
        self._checkers = checkers

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = SinkESMTP(self.config, self.store, self.capture_log, self._tls)
        protocol.factory = self
        self.live.add(protocol)
        # ESMTP declares ``portal = None`` at class level, hence the ignore.
        protocol.portal = Portal(_Realm(protocol), self._checkers)  # type: ignore[assignment]
        # The idle timeout runs on the reactor we were given, not the global one.
        reactor = self._reactor

        def call_later(seconds: float, f: Callable[[], object]) -> IDelayedCall:
            return reactor.callLater(seconds, f)

        protocol.callLater = call_later  # type: ignore[method-assign]
        return protocol

    def close_all(self) -> defer.Deferred[None]:
        """
        Drop every open connection; fires once all are gone.

        Used when the sink stops, so that no connection (and no idle-timeout
        call) outlives it.
        """
        waiting = []
        for protocol in list(self.live):
            waiting.append(protocol.closed)
            transport = protocol.transport
            if transport is not None:
                abort = getattr(transport, "abortConnection", None)
                if abort is not None:
                    abort()
                else:
                    transport.loseConnection()
        done = defer.gatherResults(waiting)
        result: defer.Deferred[None] = done.addCallback(lambda _: None)
        return result
