"""
TLS policy of a connection: implicit TLS, STARTTLS and certificate checks.

The modes:

* ``secure=True``: TLS from the first byte, before the greeting is read
  (:meth:`TLSPolicy.start_implicit`); no STARTTLS afterwards.
* default: STARTTLS when the server offers it; a refusal or a failed
  handshake is an ``ETLS`` error (the caller asked for nothing weaker).
* ``ignore_tls``: never STARTTLS.
* ``require_tls``: STARTTLS must be offered and succeed, else ``ETLS``
  before anything else (MAIL, AUTH) is sent.
* ``opportunistic_tls``: a refused STARTTLS goes on in cleartext on the
  same connection; a failed handshake (which leaves the connection
  unusable) makes :class:`~twisted_smtpconn.SMTPConnection` reconnect in
  cleartext (:meth:`TLSPolicy.may_retry_in_cleartext`).  Both log a warning.

After a successful STARTTLS everything learned in cleartext is discarded
and the hello is repeated (RFC 3207 section 4.2): :meth:`negotiate` returns
the new :class:`ServerInfo`, which replaces the old one rather than
merging with it.  ``secure`` is reported only for a protocol whose
handshake completed (:meth:`is_secure`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger

from ._errors import ConnectionFailedError, SMTPConnectionError, SocketError, TLSError
from ._options import ConnectionOptions
from ._protocol import SMTPClientProtocol
from ._ehlo import ServerInfo
from ._reply import escape_controls
from ._tls_settings import TLSSettings

__all__ = ["TLSPolicy"]

#: The reply that means "go ahead with the handshake" (RFC 3207 section 4).
_READY = 220


class TLSPolicy:
    """
    Decides and performs the TLS steps of one connection.

    One instance serves one :class:`~twisted_smtpconn.SMTPConnection` for
    its whole life, including the cleartext reconnection of
    ``opportunistic_tls``.
    """

    def __init__(self, options: ConnectionOptions, log: Logger) -> None:
        self._options = options
        self._log = log
        self._creator: IOpenSSLClientConnectionCreator | None = None
        self._secure_protocol: SMTPClientProtocol | None = None
        self._handshake_error: SMTPConnectionError | None = None
        self._cleartext_only = False

    # -- the connection creator ---------------------------------------------------

    def creator(self) -> IOpenSSLClientConnectionCreator:
        """
        The connection creator for this connection's handshakes.

        Built on first use (a connection whose server never offers STARTTLS
        never reads the CA bundle) and then kept.

        :raises TLSError: when a file named in the ``tls`` dict cannot be loaded.
        """
        if self._creator is None:
            tls = self._options.tls
            if tls is not None and not isinstance(tls, Mapping):
                self._creator = tls
            else:
                from ._tls_creator import make_client_creator

                settings = TLSSettings.from_mapping(tls)
                self._creator = make_client_creator(settings, self._options.host)
                if not settings.reject_unauthorized:
                    self._log.warn(
                        "TLS certificate verification is OFF for {host} (tls reject_unauthorized=False): "
                        "the connection is encrypted but the server is not authenticated, so anybody "
                        "on the path can read and change it",
                        host=settings.server_name(self._options.host),
                    )
        return self._creator

    # -- implicit TLS ---------------------------------------------------------------

    async def start_implicit(self, protocol: SMTPClientProtocol) -> None:
        """
        For ``secure=True``: run the TLS handshake before the greeting is read.

        The handshake is started on the connected transport rather than by
        wrapping the endpoint, so one code path serves TCP, a caller's
        endpoint, a proxy tunnel and an adopted socket, and the protocol sees
        the handshake complete (``secure``, and the greeting's clock, which
        starts then).  Its time limit is ``connection_timeout``, kept by the
        protocol.

        :raises TLSError: when the handshake or the certificate check fails.
        """
        if self._options.secure:
            await self._handshake(protocol, self.creator())

    # -- STARTTLS --------------------------------------------------------------------

    def is_secure(self, protocol: SMTPClientProtocol) -> bool:
        """Whether ``protocol``'s transport is TLS now (a handshake completed on it)."""
        return protocol is self._secure_protocol and protocol.is_open

    def is_verified(self, protocol: SMTPClientProtocol) -> bool:
        """
        Whether ``protocol``'s transport is TLS with the server's certificate
        verified: our own creator with ``reject_unauthorized`` (the
        default), or a caller's creator, which is trusted to verify as
        Twisted's ``optionsForClientTLS`` does.
        """
        if not self.is_secure(protocol):
            return False
        tls = self._options.tls
        if tls is not None and not isinstance(tls, Mapping):
            return True
        return TLSSettings.from_mapping(tls).reject_unauthorized

    async def negotiate(
        self,
        protocol: SMTPClientProtocol,
        server: ServerInfo,
        rehello: Callable[[], Awaitable[ServerInfo]],
    ) -> ServerInfo | None:
        """
        Run STARTTLS as the policy says; return the new hello info if upgraded.

        :param server: what the cleartext hello said.
        :param rehello: says the hello again (after the handshake).
        :returns: the :class:`ServerInfo` of the hello over TLS, which must
            replace ``server``; ``None`` when the connection stays as it is.
        :raises TLSError: when TLS is required and not offered, or STARTTLS
            is refused or fails (unless ``opportunistic_tls`` allows
            cleartext).
        """
        options = self._options
        if options.secure or options.ignore_tls or self._cleartext_only:
            return None
        if "STARTTLS" not in server.extensions:
            if options.require_tls:
                raise TLSError(
                    f"TLS is required (require_tls=True) but {options.host} does not offer STARTTLS; "
                    "nothing was sent"
                )
            self._log.info("{host} does not offer STARTTLS; going on in cleartext", host=options.host)
            return None
        # Built before STARTTLS so that a bad CA bundle is a configuration
        # error, never mistaken for a failed handshake (and a fallback).
        creator = self.creator()
        reply = await protocol.send_starttls()
        if reply.code != _READY:
            if options.opportunistic_tls:
                self._log.warn(
                    "{host} refused STARTTLS ({response}); going on in cleartext (opportunistic_tls)",
                    host=options.host,
                    response=escape_controls(str(reply)),
                )
                return None
            raise TLSError.from_reply("the server refused STARTTLS", reply, "STARTTLS")
        await self._handshake(protocol, creator)
        # RFC 3207 4.2: forget everything the cleartext hello said.
        try:
            return await rehello()
        except SMTPConnectionError as error:
            raise self.after_handshake(protocol, error) from None

    async def _handshake(self, protocol: SMTPClientProtocol, creator: IOpenSSLClientConnectionCreator) -> None:
        """Start TLS on ``protocol``'s transport and wait until it is done."""
        self._handshake_error = None
        try:
            if not hasattr(protocol.transport, "startTLS"):
                raise TLSError(
                    f"cannot start TLS: the transport {type(protocol.transport).__name__} "
                    "has no startTLS (ITLSTransport)"
                )
            await protocol.start_tls(creator)
        except TLSError as error:
            self._handshake_error = error
            raise
        except (ConnectionFailedError, SocketError) as error:
            # The server hung up in the middle of the handshake: that is a
            # failed handshake, whatever the socket layer called it.
            tls_error = TLSError(
                f"TLS handshake with {self._options.host} failed: {error.message}",
                response=error.response,
                response_code=error.response_code,
            )
            self._handshake_error = tls_error
            raise tls_error from error
        except SMTPConnectionError as error:
            self._handshake_error = error
            raise
        self._secure_protocol = protocol
        self._log.info(
            "TLS handshake with {host} completed: {details}",
            host=self._options.host,
            details=_session_details(protocol.transport),
        )

    def after_handshake(self, protocol: SMTPClientProtocol, error: SMTPConnectionError) -> SMTPConnectionError:
        """
        The error to report for a failure of the first exchange over a new
        TLS session (the greeting of implicit TLS, the hello after STARTTLS).

        With TLS 1.3 the client's handshake is over before the server has
        checked the client's certificate; a server that refuses it sends an
        alert and closes, and the alert is often lost to a TCP reset.  A
        connection lost at that moment (not a 421 reply) is a failed TLS
        handshake, so it is reported as ``ETLS`` and, for
        ``opportunistic_tls``, may be retried in cleartext.
        """
        if not isinstance(error, (ConnectionFailedError, SocketError)) or error.response_code is not None:
            return error
        if protocol is not self._secure_protocol:
            return error
        tls = self._options.tls
        if isinstance(tls, Mapping) and tls.get("client_cert"):
            hint = "; it may have refused our client certificate"
        else:
            hint = "; it may require a client certificate"
        tls_error = TLSError(
            f"the server closed the connection right after the TLS handshake ({error.message}){hint}"
        )
        self._handshake_error = tls_error
        return tls_error

    # -- opportunistic fallback ------------------------------------------------------

    def may_retry_in_cleartext(self, error: BaseException) -> bool:
        """
        Whether a connection that failed with ``error`` should be opened
        again without STARTTLS: ``opportunistic_tls`` is set and ``error``
        is the failure of a STARTTLS handshake (not of the command, nor of
        anything after the handshake), on a connection that can be opened
        again (not an adopted socket).
        """
        return (
            self._options.opportunistic_tls
            and self._options.connection is None
            and error is self._handshake_error
            and not self._cleartext_only
        )

    def retry_in_cleartext(self, error: SMTPConnectionError) -> None:
        """From now on, never STARTTLS: the handshake failed with ``error``."""
        self._cleartext_only = True
        self._log.warn(
            "STARTTLS with {host} failed ({error}); reconnecting in cleartext (opportunistic_tls)",
            host=self._options.host,
            error=str(error),
        )




def _session_details(transport: object) -> str:
    """
    The TLS version, cipher and the server certificate's subject and issuer,
    in words, for the log (what ``swaks`` shows after STARTTLS); what cannot
    be read is left out.
    """
    get_handle = getattr(transport, "getHandle", None)
    try:
        connection = get_handle() if get_handle is not None else None
        version = connection.get_protocol_version_name()  # type: ignore[union-attr]
        cipher = connection.get_cipher_name()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - not a pyOpenSSL connection: nothing to say
        return "no details available"
    parts = [f"{version} {cipher}"]
    try:
        certificate = connection.get_peer_certificate()  # type: ignore[union-attr]
        if certificate is not None:
            crypto = certificate.to_cryptography()
            parts.append(f"server certificate {crypto.subject.rfc4514_string()!r}")
            parts.append(f"issued by {crypto.issuer.rfc4514_string()!r}")
    except Exception:  # noqa: BLE001 - the details are a courtesy, never a failure
        pass
    return escape_controls(", ".join(parts))
