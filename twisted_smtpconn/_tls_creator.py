"""
The :class:`~twisted.internet.interfaces.IOpenSSLClientConnectionCreator`
built from the ``tls`` dict.

Why not simply :func:`twisted.internet.ssl.optionsForClientTLS`: it checks
the same things, but when the chain is refused it lets OpenSSL report the
bare "certificate verify failed", and a user needs the reason (unknown CA,
name mismatch, expired) in the error.  So the context is built here with
pyOpenSSL's public API, and a per-connection verify callback sees OpenSSL's
verdict for every certificate of the chain, checks the server's name with
service_identity on the leaf, and on the first problem fails the handshake
through :meth:`TLSMemoryBIOProtocol.failVerification` with a
:class:`~twisted_smtpconn._errors.TLSError` that says why -- the reason the
application protocol's ``connectionLost`` then receives.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from ._errors import TLSError
from ._tls_errors import certificate_error, name_mismatch_error
from ._tls_settings import TLSSettings, is_ip_literal

__all__ = ["ClientCreator", "make_client_creator"]

_MIN_VERSIONS = {None: SSL.TLS1_2_VERSION, "TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


def _ascii_name(name: str) -> str:
    """The IDNA (ASCII) form of a host name, as SNI and service_identity want it."""
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise TLSError(f"could not read {what} {path!r}: {error.strerror or error}") from error


def _load_client_identity(context: SSL.Context, cert_path: str, key_path: str | None) -> None:
    """
    Load our certificate, its chain and its key (from ``cert_path`` when
    ``key_path`` is None).

    The key is first parsed with cryptography: OpenSSL would prompt on the
    terminal for the passphrase of an encrypted key, which would hang a
    server process, so such a key is refused here instead.  The loading
    itself goes through OpenSSL's file functions, which every supported
    pyOpenSSL has without deprecation warnings.
    """
    source = key_path or cert_path
    try:
        load_pem_private_key(_read(source, "the client key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise TLSError(
            f"could not load the client key from {source!r} (it must be an unencrypted PEM key): {error}"
        ) from error
    try:
        context.use_certificate_chain_file(cert_path)
    except SSL.Error as error:
        raise TLSError(f"could not load tls['client_cert'] {cert_path!r}: {error}") from error
    try:
        context.use_privatekey_file(source)
        context.check_privatekey()
    except SSL.Error as error:
        raise TLSError(f"tls['client_cert'] and its key do not fit together: {error}") from error


def make_context(settings: TLSSettings) -> SSL.Context:
    """
    An OpenSSL client context for ``settings``.

    :raises TLSError: when a file of the settings cannot be loaded.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(_MIN_VERSIONS[settings.min_version])
    context.set_options(SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.reject_unauthorized:
        # The per-connection callback (see _PeerCheck) replaces this mode;
        # setting it here too means a connection made from this context
        # without the callback would still verify rather than trust all.
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        if settings.ca_certs is not None:
            try:
                context.load_verify_locations(settings.ca_certs)
            except SSL.Error as error:
                raise TLSError(f"could not load tls['ca_certs'] {settings.ca_certs!r}: {error}") from error
        else:
            context.set_default_verify_paths()
    else:
        context.set_verify(SSL.VERIFY_NONE)
    if settings.client_cert is not None:
        _load_client_identity(context, settings.client_cert, settings.client_key)
    return context


class _PeerCheck:
    """
    The verify callback of one connection.

    OpenSSL calls it once per certificate of the chain with its own verdict
    (``ok``); the first refusal, or a leaf that does not name the server,
    ends the handshake through ``failVerification`` with the reason.
    Exceptions must never escape into OpenSSL (pyOpenSSL would lose them for
    a per-connection callback), so anything unexpected is a refusal too.
    """

    def __init__(self, tls_protocol: Any, server_name: str) -> None:
        self._tls_protocol = tls_protocol
        self._server_name = server_name
        self._failed = False

    def __call__(self, connection: SSL.Connection, certificate: X509, error_number: int, depth: int, ok: int) -> bool:
        if self._failed:
            return False
        try:
            if not ok:
                cert = certificate.to_cryptography()
                self._fail(
                    certificate_error(
                        self._server_name,
                        error_number,
                        depth,
                        cert.subject.rfc4514_string(),
                        cert.issuer.rfc4514_string(),
                        _validity(cert),
                    )
                )
                return False
            if depth == 0:
                problem = _identity_problem(certificate.to_cryptography(), self._server_name)
                if problem is not None:
                    self._fail(name_mismatch_error(self._server_name, problem))
                    return False
            return True
        except Exception as error:  # noqa: BLE001 - see the class docstring
            self._fail(TLSError(f"TLS certificate check of {self._server_name} failed: {error!r}"))
            return False

    def _fail(self, error: TLSError) -> None:
        self._failed = True
        tls_protocol, self._tls_protocol = self._tls_protocol, None
        if tls_protocol is not None:
            tls_protocol.failVerification(Failure(error))  # type: ignore[no-untyped-call]


def _validity(certificate: x509.Certificate) -> str:
    """``valid from ... to ...`` (the ``*_utc`` properties need cryptography 42)."""
    start = getattr(certificate, "not_valid_before_utc", None) or certificate.not_valid_before
    end = getattr(certificate, "not_valid_after_utc", None) or certificate.not_valid_after
    return f"valid from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


def _certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is for (its subjectAltName)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in names.get_values_for_type(x509.DNSName)] + [
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    ]


def _identity_problem(certificate: x509.Certificate, server_name: str) -> str | None:
    """Why ``certificate`` does not name ``server_name``, or None if it does."""
    try:
        if is_ip_literal(server_name):
            verify_certificate_ip_address(certificate, server_name)
        else:
            verify_certificate_hostname(certificate, _ascii_name(server_name))
    except (VerificationError, CertificateError):
        names = _certificate_names(certificate)
        if not names:
            return "the certificate has no subjectAltName"
        return f"the certificate is for {', '.join(names)}"
    return None


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    """
    Makes the OpenSSL connection of each client handshake: SNI, and (unless
    verification is off) the chain and name checks of :class:`_PeerCheck`.

    :ivar server_name: the name verified and sent as SNI.
    :ivar verify: whether the server's certificate is checked.
    """

    def __init__(self, context: SSL.Context, server_name: str, *, verify: bool) -> None:
        self._context = context
        self.server_name = server_name
        self.verify = verify

    def __repr__(self) -> str:
        return f"<ClientCreator {self.server_name!r} verify={self.verify}>"

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not is_ip_literal(self.server_name):
            # RFC 6066 section 3: SNI carries host names only, never addresses.
            connection.set_tlsext_host_name(_ascii_name(self.server_name).encode("ascii", "replace"))
        if self.verify:
            connection.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _PeerCheck(tlsProtocol, self.server_name)
            )
        return connection


def make_client_creator(settings: TLSSettings, host: str) -> ClientCreator:
    """
    The creator for ``settings`` connecting to ``host``.

    :raises TLSError: when a file of the settings cannot be loaded.
    """
    return ClientCreator(make_context(settings), settings.server_name(host), verify=settings.reject_unauthorized)
