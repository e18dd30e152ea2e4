"""
Drop-in replacements for ``twisted.mail.smtp.sendmail`` and
``twisted.mail.smtp.ESMTPSenderFactory``, built on :class:`SMTPConnection`.

An application written for twisted.mail changes one import::

    from twisted_smtpconn.compat import sendmail, ESMTPSenderFactory

and keeps its calls, its result handling and its ``except`` clauses: the
signatures are twisted.mail's, ``sendmail`` and the factory's ``deferred``
fire with twisted.mail's ``(numOk, [(address, code, response), ...])``
(``address`` and ``response`` as ``bytes``, ``code`` as ``int``), and every
error is an instance of the twisted.mail class for the failure *and* of
this library's error class for it (the classes exported here).  What changes is the
client underneath: certificates verified, dot-stuffing and line ends done
right, PIPELINING used, no credentials in error text.

Where twisted.mail was insecure the drop-in is not, and says so in the
documentation ("Coming from twisted.mail"): a plain ``ClientContextFactory``
no longer means "encrypt but trust anybody"; to keep that, pass
``contextFactory={"reject_unauthorized": False}`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._auth import Auth
from ._compat_errors import (
    AUTHDeclinedError,
    AUTHRequiredError,
    AuthenticationError,
    CompatError,
    MessageReadError,
    MessageRefusedError,
    RecipientResult,
    RecipientsRefusedError,
    SenderRefusedError,
    SMTPConnectError,
    SMTPDeliveryError,
    SMTPProtocolError,
    SMTPSocketError,
    SMTPTimeoutError,
    SMTPTLSError,
    TLSRequiredError,
    translate,
)
from ._compat_transport import ConnectedEndpoint, Relay
from ._connection import SMTPConnection
from ._envelope import Envelope
from ._errors import AuthenticationError as _LibraryAuthenticationError
from ._errors import ConnectionFailedError, EnvelopeError, MessageError, SMTPConnectionError, TLSError

__all__ = [
    "sendmail",
    "ESMTPSenderFactory",
    "SMTPDeliveryError",
    "SenderRefusedError",
    "RecipientsRefusedError",
    "MessageRefusedError",
    "MessageReadError",
    "SMTPConnectError",
    "SMTPSocketError",
    "SMTPTimeoutError",
    "SMTPProtocolError",
    "SMTPTLSError",
    "TLSRequiredError",
    "AUTHRequiredError",
    "AUTHDeclinedError",
    "AuthenticationError",
    "CompatError",
]

_log = Logger(namespace="twisted_smtpconn.compat")


def _text(value: object, what: str) -> str:
    """An address or name as text: ``bytes`` (UTF-8), ``str``, or twisted.mail's ``Address``."""
    if isinstance(value, bytes):
        text = value.decode("utf-8")
    elif isinstance(value, str):
        text = value
    elif value is not None and type(value).__name__ == "Address":
        text = str(value)
    else:
        raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _recipients(toEmail: object) -> list[bytes]:
    """twisted.mail's rule: one address (str or bytes) or an iterable of them, kept as bytes."""
    if isinstance(toEmail, (str, bytes)):
        items: Iterable[object] = [toEmail]
    elif isinstance(toEmail, Iterable):
        items = toEmail
    else:
        raise TypeError(f"toEmail must be an address or an iterable of addresses, not {type(toEmail).__name__}")
    return [item.encode("utf-8") if isinstance(item, str) else _text(item, "toEmail").encode("utf-8") for item in items]


def _secret(value: object, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} must be bytes, str or None, not {type(value).__name__}")


class ESMTPSenderFactory(ClientFactory):
    """
    ``twisted.mail.smtp.ESMTPSenderFactory``, running this library's client.

    Give it to ``reactor.connectTCP`` (or ``connectSSL``, or an endpoint's
    ``connect``) as before.  Once connected, it says EHLO, upgrades with
    STARTTLS (verified), logs in, sends ``file`` from ``fromEmail`` to
    ``toEmail`` and quits; ``deferred`` fires with ``(numOk, addresses)`` or
    fails with one of this module's errors.

    How the parameters map:

    * ``retries``: connection failures, timeouts and 4xx refusals are retried
      that many times, through the connector as twisted.mail did (only when
      connected with ``connectTCP``/``connectSSL``: an endpoint has no
      connector to retry with).  A message whose final dot was sent but not
      answered is never retried: it may have been delivered.
    * ``timeout``: the greeting and inactivity timeouts; ``None`` keeps the
      library's (30 s for the greeting, 600 s of inactivity) instead of
      waiting forever.
    * ``contextFactory``: ``None``; a dict of this library's TLS settings
      (``ca_certs``, ``reject_unauthorized``, ...); an
      ``IOpenSSLClientConnectionCreator`` such as ``optionsForClientTLS(...)``,
      used as it is; or a legacy context factory, which twisted.mail used as
      it was: a ``ClientContextFactory`` checked nothing and is replaced by
      the library's verified default; a ``CertificateOptions(verify=True)``
      checked the chain but never the host name, and keeps its trust root
      with the name checked too (both with a warning in the log).
    * ``hostname``: the name the certificate must carry (and the host for
      the library's loopback checks).  Without it, the name given to
      ``connectTCP`` is used when a ``contextFactory`` asks for TLS; with
      neither, STARTTLS is not attempted (as in twisted.mail: there is no
      name to verify).
    * ``heloFallback``: no exact equivalent: the library always falls back to
      HELO when EHLO is refused (RFC 5321 section 4.1.1.1).
    * ``requireTransportSecurity``: STARTTLS must succeed, else
      :class:`TLSRequiredError` before any credentials or mail are sent.
    * ``requireAuthentication``: credentials must be given and the server
      must offer AUTH, else :class:`AUTHRequiredError`.  A password is never
      sent in cleartext to a host that is not loopback
      (:class:`AuthenticationError`), where twisted.mail did so.
    * ``domain`` (attribute, as twisted.mail's): the EHLO name; ``None``
      lets the library choose (this host's name or address literal).
    """

    noisy = False
    #: The EHLO name (twisted.mail's attribute; ``sendmail``'s ``senderDomainName``).
    domain: str | bytes | None = None

    def __init__(
        self,
        username: bytes | str | None,
        password: bytes | str | None,
        fromEmail: Any,
        toEmail: Any,
        file: Any,
        deferred: Deferred[Any],
        retries: int = 5,
        timeout: float | None = None,
        contextFactory: Any = None,
        heloFallback: bool = False,
        requireAuthentication: bool = True,
        requireTransportSecurity: bool = True,
        hostname: str | bytes | None = None,
    ) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        if not isinstance(deferred, Deferred):
            raise TypeError(f"deferred must be a Deferred, not {type(deferred).__name__}")
        self.username = _secret(username, "username")
        self.password = _secret(password, "password")
        self.fromEmail = _text(fromEmail, "fromEmail")
        self.toEmail = _recipients(toEmail)
        self.nEmails = len(self.toEmail)
        self.file = file
        self.result = deferred
        self.retries = retries
        self.timeout = timeout
        self.heloFallback = heloFallback
        self.requireAuthentication = requireAuthentication
        self.requireTransportSecurity = requireTransportSecurity
        self.hostname = _text(hostname, "hostname") if hostname is not None else None
        self._tls_option = _check_context_factory(contextFactory)
        #: A context factory of the kind twisted.mail used without any check.
        self._legacy_context: Any = contextFactory if contextFactory is not None and self._tls_option is None else None
        self._wants_tls = contextFactory is not None
        #: True once ``deferred`` fired (or the send was cancelled).
        self.sendFinished = False
        #: The protocol of the current connection attempt, or ``None``.
        self.currentProtocol: Relay | None = None
        self._reactor: Any = None
        self._connector: Any = None
        self._connection: SMTPConnection | None = None
        self._retry_pending = False

    # -- the connector's calls ----------------------------------------------------

    def startedConnecting(self, connector: Any) -> None:
        self._connector = connector

    def buildProtocol(self, addr: Any) -> Relay:
        relay = Relay(self._connected)
        relay.factory = self
        self.currentProtocol = relay
        return relay

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.currentProtocol = None
        if self.sendFinished:
            return
        if self.retries > 0:
            self._retry(connector)
            return
        error = ConnectionFailedError(f"Unable to connect to SMTP server: {reason.getErrorMessage()}")
        error.__cause__ = reason.value
        self._finish(Failure(translate(error)))  # type: ignore[no-untyped-call]

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.currentProtocol = None
        if self._retry_pending and not self.sendFinished:
            self._retry_pending = False
            self._retry(connector)

    # -- one attempt ----------------------------------------------------------------

    def _connected(self, relay: Relay) -> None:
        if self.sendFinished:
            relay.transport.abortConnection()  # type: ignore[union-attr]
            return
        attempt = Deferred.fromCoroutine(self._deliver(relay))
        attempt.addCallbacks(self._finish, self._attempt_failed)

    async def _deliver(self, relay: Relay) -> tuple[int, list[RecipientResult]]:
        transport: Any = relay.transport
        peer = transport.getPeer()
        already_tls = ISSLTransport.providedBy(transport)
        host = self.hostname or self._destination_host() or peer.host
        starttls = not already_tls and (self.hostname is not None or self._wants_tls)
        if already_tls and not _verifies_peer(transport):
            _log.warn(
                "twisted_smtpconn.compat: the connection to {host} was made TLS by the application (connectSSL) "
                "with a context that does not check the server's certificate; the drop-in cannot check it "
                "afterwards: pass a verifying context such as optionsForClientTLS({host!r}), or use STARTTLS",
                host=host,
            )
        timeouts: dict[str, Any] = {}
        if self.timeout is not None:
            timeouts = {"greeting_timeout": float(self.timeout), "socket_timeout": float(self.timeout)}
        try:
            tls = self._tls_option
            if self._legacy_context is not None and starttls:
                tls = _replace_legacy_context(self._legacy_context, host)
            conn = self._connection_for(relay, host, starttls, already_tls, tls, timeouts)
        except BaseException:
            transport.abortConnection()  # nobody else will close it
            raise
        self._connection = conn
        try:
            await conn.connect()
            if self.requireTransportSecurity and not (already_tls or conn.secure):
                if starttls:
                    why = "does not offer STARTTLS"
                else:
                    why = "has no name to verify: pass hostname= or contextFactory="
                raise TLSRequiredError(
                    TLSError(f"transport security is required (requireTransportSecurity) but {host} {why}; "
                             "nothing was sent")
                )
            if self.password and conn.auth_methods:
                await conn.login(Auth(user=self.username, password=self.password))
            elif self.requireAuthentication:
                why = "no password was given" if not self.password else f"{host} does not offer AUTH"
                raise AUTHRequiredError(
                    _LibraryAuthenticationError(f"authentication is required (requireAuthentication) but {why}")
                )
            try:
                info = await conn.send(Envelope(self.fromEmail, [a.decode("utf-8") for a in self.toEmail]), self.file)
            except (EnvelopeError, MessageError) as error:
                # twisted.mail's SMTPDeliveryError carries the RCPT results
                # when the recipients or the message were refused.
                if error.rejected_errors or isinstance(error, MessageError):
                    raise translate(error, addresses=self._results(error.recipient_replies)) from None
                raise
            return len(info.accepted), self._results(info.recipient_replies)
        except SMTPConnectionError as error:
            raise translate(error) from None
        finally:
            await _close(conn)
            self._connection = None

    def _connection_for(
        self, relay: Relay, host: str, starttls: bool, already_tls: bool, tls: Any, timeouts: dict[str, Any],
    ) -> SMTPConnection:
        """The library's connection over the relay's transport, with the factory's settings."""
        peer = relay.transport.getPeer()  # type: ignore[union-attr]
        name = self.domain.decode("ascii") if isinstance(self.domain, bytes) else self.domain
        return SMTPConnection(
            host,
            getattr(peer, "port", None) or 25,
            endpoint=ConnectedEndpoint(relay),
            name=name,
            ignore_tls=not starttls,
            tls=tls,
            # The application's connectSSL made the transport TLS already.
            allow_insecure_auth=already_tls,
            reactor=self._reactor,
            **timeouts,
        )

    def _destination_host(self) -> str | None:
        if self._connector is None or not hasattr(self._connector, "getDestination"):
            return None
        host = getattr(self._connector.getDestination(), "host", None)
        return host if isinstance(host, str) else None

    def _results(self, recorded: list[tuple[str, int, str]]) -> list[RecipientResult]:
        """twisted.mail's ``addresses``: ``(address, code, response)`` per recipient, in order."""
        if len(recorded) != len(self.toEmail):
            # Not one RCPT per address (the library merged duplicates): by address.
            by_address = {address: (address, code, text) for address, code, text in recorded}
            recorded = [by_address.get(address.decode("utf-8"), ("", -1, "")) for address in self.toEmail]
        return [(address, code, text.encode("utf-8")) for address, (_, code, text) in zip(self.toEmail, recorded)]

    # -- the outcome ----------------------------------------------------------------

    def _attempt_failed(self, failure: Failure) -> None:
        error = failure.value
        if self._may_retry(error):
            # Reconnect once the connector knows the transport is gone.
            self._retry_pending = True
            return
        self._finish(failure)

    def _may_retry(self, error: object) -> bool:
        """
        twisted.mail's rule: retry what failed before the transaction
        (connection, timeout, a 4xx greeting or AUTH reply), never a refusal
        of the sender, the recipients or the message, and never a message
        that may have been delivered.
        """
        if self.sendFinished or self._connector is None or self.retries <= 0:
            return False
        if not isinstance(error, CompatError) or isinstance(error, SMTPDeliveryError) or error.delivery_unknown:
            return False
        return error.retry or 400 <= error.code < 500

    def _retry(self, connector: Any) -> None:
        self.retries -= 1
        _log.info("twisted_smtpconn.compat: retrying the connection ({left} retries left)", left=self.retries)
        seek = getattr(self.file, "seek", None)
        if seek is not None:
            seek(0, 0)
        connector.connect()

    def _finish(self, result: object) -> None:
        if self.sendFinished:
            return  # cancelled: the caller's Deferred has failed already
        self.sendFinished = True
        if self.result.called:
            return
        if isinstance(result, Failure):
            self.result.errback(result)
        else:
            self.result.callback(result)

    def _cancel(self) -> None:
        """Stop now: no more retries, the connection dropped."""
        self.sendFinished = True
        if self._connection is not None:
            self._connection.close()
        elif self.currentProtocol is not None and self.currentProtocol.transport is not None:
            self.currentProtocol.transport.abortConnection()  # type: ignore[attr-defined]
        elif self._connector is not None:
            self._connector.disconnect()


def _verifies_peer(transport: Any) -> bool:
    """Whether the TLS context of an application-made TLS transport checks the server's certificate."""
    try:
        from OpenSSL import SSL

        mode: int = transport.getHandle().get_context().get_verify_mode()
    except Exception:  # noqa: BLE001 - not an OpenSSL transport: nothing to say
        return True
    return bool(mode & SSL.VERIFY_PEER)


async def _close(conn: SMTPConnection) -> None:
    """QUIT if the connection is still usable, else drop it; return once it is gone."""
    try:
        await conn.quit()
    except SMTPConnectionError:
        conn.close()
    await conn.when_closed()


def _check_context_factory(contextFactory: object) -> Any:
    """
    The ``tls`` option for a ``contextFactory``: a settings dict or a
    connection creator (``optionsForClientTLS``) as it is; ``None`` for
    ``None`` and for a legacy context factory (see
    :func:`_replace_legacy_context`).
    """
    if contextFactory is None:
        return None
    if isinstance(contextFactory, Mapping):
        return dict(contextFactory)
    if hasattr(contextFactory, "getContext"):
        # A context factory (ClientContextFactory, CertificateOptions), even
        # one that also creates connections: it never checks the host name.
        return None
    if IOpenSSLClientConnectionCreator.providedBy(contextFactory):
        return contextFactory
    raise TypeError(
        "contextFactory must be None, a dict of TLS settings, an IOpenSSLClientConnectionCreator "
        f"or a context factory, not {type(contextFactory).__name__}"
    )


def _replace_legacy_context(contextFactory: Any, host: str) -> Any:
    """
    What a legacy context factory becomes: twisted.mail used it as it was,
    so a ``ClientContextFactory`` checked nothing and a ``CertificateOptions``
    at most the chain, never the host name.  Its trust root is kept when it
    has one (the caller's private CA), with the name checked as well;
    otherwise the library's default applies (the platform's trust store).
    Either way a warning says so.
    """
    trust_root = getattr(contextFactory, "trustRoot", None) if getattr(contextFactory, "verify", False) else None
    if trust_root is not None:
        from twisted.internet.ssl import optionsForClientTLS

        _log.warn(
            "twisted_smtpconn.compat: the contextFactory given for {host} checks the certificate chain but not "
            "the host name; its trust root is kept and the name {host!r} is checked as well",
            host=host,
        )
        return optionsForClientTLS(host, trustRoot=trust_root)
    _log.warn(
        "twisted_smtpconn.compat: the contextFactory given for {host} does not check the server's certificate; "
        "verified TLS is used instead (pass contextFactory={{'reject_unauthorized': False}} to keep the old "
        "behaviour)",
        host=host,
    )
    return None


def sendmail(
    smtphost: str | bytes,
    from_addr: Any,
    to_addrs: Any,
    msg: Any,
    senderDomainName: str | bytes | None = None,
    port: int = 25,
    reactor: Any = None,
    username: bytes | str | None = None,
    password: bytes | str | None = None,
    requireAuthentication: bool = False,
    requireTransportSecurity: bool = False,
) -> Deferred[tuple[int, list[RecipientResult]]]:
    """
    ``twisted.mail.smtp.sendmail``: send ``msg`` and fire with
    ``(numOk, [(address, code, response), ...])``.

    ``msg`` is a file object with ``read`` or anything ``bytes()`` accepts
    (an ``email.message.Message`` included), as in twisted.mail, and also a
    ``str`` (encoded as UTF-8), which twisted.mail refused.  Line ends need
    not be CRLF.  STARTTLS is used when offered, with the certificate
    verified against ``smtphost``; ``requireTransportSecurity`` makes it
    mandatory.  The Deferred is cancellable: cancelling stops the retries
    and drops the connection, as in twisted.mail.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if not hasattr(msg, "read"):
        msg = BytesIO(msg.encode("utf-8") if isinstance(msg, str) else bytes(msg))
    host = _text(smtphost, "smtphost")

    def cancel(d: Deferred[Any]) -> None:
        factory._cancel()

    d: Deferred[tuple[int, list[RecipientResult]]] = Deferred(cancel)
    factory = ESMTPSenderFactory(
        username,
        password,
        from_addr,
        to_addrs,
        msg,
        d,
        heloFallback=True,
        requireAuthentication=requireAuthentication,
        requireTransportSecurity=requireTransportSecurity,
        hostname=host,
    )
    factory._reactor = reactor
    if senderDomainName is not None:
        factory.domain = senderDomainName
    reactor.connectTCP(host, port, factory)
    return d
